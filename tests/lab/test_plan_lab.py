"""End-to-end tests of the plan against a lab of its own: numbers equal what Nix itself says on each host."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import write_lab_inventory
from labtools import ssh_run

from topdeck.lab import factory
from topdeck.lab.lab import Lab
from topdeck.lab.nixenv import lab_env

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three hosts on their own lab: host-1 and host-2 follow `web`, host-3 `db`; host-2 runs an older web."""
    lab = Lab(tmp_path_factory.mktemp("planlab"), base_address="127.0.6.11", emulator_port=0)
    lab.up(count=3, log=lambda *_: None)
    try:
        inventory = write_lab_inventory(lab, tmp_path_factory.mktemp("plan") / "hosts", "plan")
        web = push(inventory, "host-1")
        push(inventory, "host-3")
        older = older_web(lab, inventory, tmp_path_factory.mktemp("older"))
        switch(lab, "host-2", older)
        yield lab, inventory, web
    finally:
        lab.down(log=lambda *_: None)


def topdeck(inventory, *args):
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=300, env=lab_env())


def push(inventory, host: str) -> str:
    result = topdeck(inventory, "push", host, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])["toplevel"]


def older_web(lab: Lab, inventory, workdir) -> str:
    """The web system with nginx-like changes undone: one package older, one missing, one extra."""
    spec = factory.spec_from_json((inventory / "web.json").read_text())
    spec = factory.downgrade(spec, "openssl", "3.0.12")
    spec = factory.remove_package(spec, "web-app")
    spec = factory.add_package(spec, factory.Package("legacy-tool", "0.9", size=150_000))
    return factory.build(spec, workdir)


def switch(lab: Lab, name: str, toplevel: str) -> None:
    """Install `toplevel` on a lab host as a new generation and activate it, as a past deploy would have."""
    host = lab.host(name)
    host.import_closure(toplevel, lab_env())
    profile = "/nix/var/nix/profiles/system"
    host.sh(f"nix-env -p {profile} --set {toplevel} && {toplevel}/bin/switch-to-configuration switch")


def nix_dry_run(lab: Lab, name: str, target: str, url: str) -> tuple[int, float, float]:
    """What Nix itself says it would fetch on the host: (paths, MiB download, MiB unpacked)."""
    key = lab.cache_public_key.read_text().strip()
    code, out, err = ssh_run(lab, name, (
        f"nix-store -r {target} --dry-run --option substituters '{url}' --option trusted-public-keys '{key}' "
        "--option narinfo-cache-negative-ttl 0"
    ))
    assert code == 0, err
    match = re.search(r"th(?:ese (\d+) paths|is path) will be fetched \(([\d.]+) MiB download, ([\d.]+) MiB unpacked\)",
                      err)
    if match is None:
        return 0, 0.0, 0.0
    return int(match.group(1) or 1), float(match.group(2)), float(match.group(3))


def store_snapshot(lab: Lab) -> dict[str, str]:
    return {name: host.sh("ls /nix/store | sort | sha256sum; ls -l /nix/var/nix/profiles; readlink /run/current-system")
            for name, host in lab.hosts.items()}


def test_plan_numbers_equal_what_nix_prints_on_each_host(fleet):
    lab, inventory, _ = fleet
    url = f"{lab.emulator.url}/file/topdeck-lab/plan"
    result = topdeck(inventory, "plan", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["ok"] and [h["host"] for h in plan["hosts"]] == ["host-1", "host-2", "host-3"]
    generations = {h["host"]: h["generation"] for h in plan["hosts"]}
    assert generations == {"host-1": 1, "host-2": 2, "host-3": 1}
    for host in plan["hosts"]:
        paths, download, unpacked = nix_dry_run(lab, host["host"], host["target"], url)
        assert host["fetch_paths"] == paths > 0
        assert round(host["download_bytes"] / 2**20, 2) == download
        assert round(host["unpacked_bytes"] / 2**20, 2) == unpacked
    assert plan["b2_class_b"] == 2 * sum(h["fetch_paths"] for h in plan["hosts"])


def test_version_changes_equal_nix_store_diff_closures(fleet):
    lab, inventory, web = fleet
    plan = json.loads(topdeck(inventory, "plan", "--json").stdout)
    for host in plan["hosts"]:
        nix = subprocess.run(["nix", "store", "diff-closures", host["current"], host["target"]],
                             capture_output=True, text=True, check=True, env=lab_env())
        assert host["diff_closures"] == ANSI.sub("", nix.stdout).splitlines()
    host2 = next(h for h in plan["hosts"] if h["host"] == "host-2")
    kinds = {c["name"]: c["kind"] for c in host2["changes"]}
    assert kinds["openssl"] == "upgraded" and kinds["web-app"] == "added" and kinds["legacy-tool"] == "removed"
    host1 = next(h for h in plan["hosts"] if h["host"] == "host-1")
    assert host1["target"] == web and {"web-app": "added"}.items() <= {c["name"]: c["kind"]
                                                                       for c in host1["changes"]}.items()


def test_hosts_with_the_same_change_are_grouped_and_text_reads_like_diff_closures(fleet):
    lab, inventory, _ = fleet
    text = topdeck(inventory, "plan")
    assert text.returncode == 0, text.stderr
    assert "web-app: ∅ → 1.0" in text.stdout
    assert re.search(r"fetch: \d+ paths, [\d.]+ KiB download, [\d.]+ (KiB|MiB) unpacked", text.stdout)
    plan = json.loads(topdeck(inventory, "plan", "--json").stdout)
    assert sorted(map(sorted, plan["groups"])) == [["host-1"], ["host-2"], ["host-3"]]
    same = json.loads(topdeck(inventory, "plan", "--json", "--on", "host-1,host-2", "--target",
                              plan["hosts"][2]["target"]).stdout)
    assert all(h["target"] == plan["hosts"][2]["target"] for h in same["hosts"])


def test_up_to_date_host_fetches_nothing(fleet):
    lab, inventory, _ = fleet
    plan = json.loads(topdeck(inventory, "plan", "--json", "--on", "host-2").stdout)
    target = plan["hosts"][0]["current"]
    assert topdeck(inventory, "push", target).returncode == 0
    same = json.loads(topdeck(inventory, "plan", "--json", "--on", "host-2", "--target", target).stdout)
    host = same["hosts"][0]
    assert host["status"] == "up-to-date" and host["fetch_paths"] == 0 and host["download_bytes"] == 0
    assert host["changes"] == [] and host["diff_closures"] == []


def test_stopped_host_is_unreachable_while_others_are_planned(fleet):
    lab, inventory, _ = fleet
    lab.stop_host("host-3")
    try:
        result = topdeck(inventory, "plan", "--json")
    finally:
        lab.start_host("host-3")
    assert result.returncode == 1
    hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
    assert hosts["host-3"]["status"] == "unreachable" and hosts["host-3"]["reason"]
    assert hosts["host-1"]["status"] == hosts["host-2"]["status"] == "change"
    text = topdeck(inventory, "plan")
    assert text.returncode == 0


def test_changed_host_key_is_refused(fleet, tmp_path):
    lab, inventory, _ = fleet
    lines = lab.known_hosts.read_text().splitlines()
    victim, other_key = lab.host("host-3").address + " ", lab.host("host-1").public_host_key()
    forged = [line.split()[0] + " " + other_key if line.startswith(victim) else line for line in lines]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(forged) + "\n")
    config = inventory / "topdeck.toml"
    original = config.read_text()
    config.write_text(original.replace(str(lab.known_hosts), str(known)))
    try:
        result = topdeck(inventory, "plan", "--json")
    finally:
        config.write_text(original)
    hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
    assert result.returncode == 1
    assert hosts["host-3"]["status"] == "host-key" and "changed" in hosts["host-3"]["reason"].lower()
    assert hosts["host-1"]["status"] == "change"


def test_plan_changes_nothing_on_any_host(fleet):
    lab, inventory, _ = fleet
    before = store_snapshot(lab)
    assert topdeck(inventory, "plan").returncode == 0
    assert store_snapshot(lab) == before


def test_plan_of_a_target_not_in_the_cache_is_one_line(fleet):
    lab, inventory, _ = fleet
    missing = "/nix/store/" + "1" * 32 + "-nixos-system-x-1"
    result = topdeck(inventory, "plan", "--target", missing)
    assert result.returncode == 1 and "not in the cache" in result.stderr and result.stderr.count("\n") == 1



def test_host_whose_nix_cannot_hold_the_fetch_is_flagged(fleet, tmp_path):
    lab, _, _ = fleet
    lab.up(hosts={"tiny": "127.0.6.30"}, small_nix={"tiny": 24 * factory.MiB}, log=lambda *_: None)
    inventory = write_lab_inventory(lab, tmp_path / "hosts", "plan", roles={"tiny": "web"})
    big = factory.add_package(factory.spec_from_json((inventory / "web.json").read_text()),
                              factory.Package("huge-data", "1.0", size=40 * factory.MiB))
    target = factory.build(big, tmp_path)
    assert topdeck(inventory, "push", target).returncode == 0

    result = topdeck(inventory, "plan", "--target", target, "--json")

    host = json.loads(result.stdout)["hosts"][0]
    assert host["fits"] is False and host["unpacked_bytes"] > host["free_bytes"]
    assert any("tiny" in w and "free" in w for w in json.loads(result.stdout)["warnings"])
    text = topdeck(inventory, "plan", "--target", target).stdout
    assert "DOES NOT FIT" in text
