"""`[cache] download_url`: hosts fetch the cache through a front (a CDN or an own domain before the bucket), on every
kind of host, and never from the bucket's own URL; topdeck's own reads still go to B2's API.

The front is lab/forward.py on 127.0.35.1, passing each connection on to the emulator from an address of its own
(127.0.35.250), so the emulator's record of every /file/ request says who came through the front. Nix names itself
in its User-Agent (`curl/… Nix/2.26.3`), so the record also shows that each host kind's own Nix fetched there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import time

import pytest
from agentmodule import configuration, systemd_units
from deploytools import MIXED_KINDS, deploy, deploy_inventory, release, state, three_host_lab, topdeck
from labtools import ssh_run

from topdeck.core import runs
from topdeck.core.inventory import load_inventory
from topdeck.core.remote.hostverbs import host_script
from topdeck.lab import factory, forward
from topdeck.lab.lab import BUCKET

CONFIRM_TIMEOUT = 8
HOSTS = tuple(MIXED_KINDS)
FRONT = "127.0.35.1"
FRONT_SOURCE = "127.0.35.250"  # the front connects to the emulator from here, and nothing else does
DOWN_FRONT = "127.0.35.2"  # nothing listens here


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("cdnlab"), "127.0.32.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def front(lab, tmp_path_factory):
    """The front's URL (scheme, host and port) and its connection log."""
    log = tmp_path_factory.mktemp("front") / "front.log"
    emulator_port = int(lab.emulator.url.rpartition(":")[2])
    pid, port = forward.start((FRONT, 0), ("127.0.0.1", emulator_port), log, source=FRONT_SOURCE)
    try:
        yield f"http://{FRONT}:{port}", log
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def inventory(lab, front, tmp_path_factory):
    root = deploy_inventory(lab, tmp_path_factory.mktemp("cdn") / "hosts", CONFIRM_TIMEOUT)
    set_download_url(root, f"{front[0]}/file/{BUCKET}/{load_inventory(root).cache.prefix}")
    return root


@pytest.fixture(scope="module")
def nix_versions(lab) -> set[str]:
    """Each host's own Nix version, major.minor, as its User-Agent names it."""
    found = set()
    for name in HOSTS:
        _, out, _ = ssh_run(lab, name, "nix-store --version")
        found.add(re.search(r"(\d+\.\d+)", out)[1])  # type: ignore[index]
    return found


def set_download_url(root, url: str) -> None:  # type: ignore[no-untyped-def]
    config = root / "topdeck.toml"
    text = re.sub(r'\ndownload_url = "[^"]*"', "", config.read_text())
    config.write_text(text.replace("[cache]\n", f'[cache]\ndownload_url = "{url}"\n', 1))


def downloads(lab) -> list[dict]:  # type: ignore[type-arg]
    return lab.emulator_control("GET", "downloads")["downloads"]


def release_both(inventory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    def change(spec: factory.SystemSpec) -> factory.SystemSpec:
        return factory.upgrade(spec, "web-app" if spec.host == "web" else "db-app", f"3.{time.time_ns()}")

    web, db = release(inventory, "web", change), release(inventory, "db", change)
    return {"host-1": web, "host-2": web, "host-3": db}


def assert_hosts_came_through_the_front(lab, inventory, since: int, nix_versions: set[str]) -> None:
    """Every request without B2 authorization (the hosts': the fetch ahead's and the sidecar's curl, Nix's when it
    fetches) since `since` came from the front; they include both pointers' sidecars and the closures' files (narinfos
    and NARs, or a delta object for a host on the pointer's previous system: docs/DEPLOY.md), fetched by each host
    kind (each has a curl of its own version: 7.88, 8.14, 8.23)."""
    root = f"/file/{BUCKET}/{load_inventory(inventory).cache.prefix}/"
    public = [d for d in downloads(lab)[since:] if not d["authorized"]]
    assert public, "the hosts fetched nothing"
    assert {d["peer"] for d in public} == {FRONT_SOURCE}, [d for d in public if d["peer"] != FRONT_SOURCE][:3]
    paths = {d["path"] for d in public}
    assert all(path.startswith(root) for path in paths), paths
    files = [d for d in public if d["path"].startswith((f"{root}nar/", f"{root}deltas/"))]
    assert files and all(d["path"].startswith(f"{root}deltas/") for d in files) or \
        any(path.endswith(".narinfo") for path in paths), paths
    assert {f"{root}toplevels/web.json", f"{root}toplevels/db.json"} <= paths
    agents = {d["user_agent"].split()[0] for d in files}
    assert len(agents) == len(nix_versions), agents


def test_plan_and_deploy_fetch_through_the_front_on_every_kind(lab, inventory, front, nix_versions):
    url = load_inventory(inventory).cache.download_url
    targets = release_both(inventory)
    before = {name: state(lab, name) for name in HOSTS}
    since = len(downloads(lab))

    shown = topdeck(inventory, "plan")
    result, plan, outcomes = deploy(inventory)

    assert shown.returncode == 0 and f"hosts fetch from {url}\n" in shown.stdout, shown.stdout + shown.stderr
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert plan["fetch_url"] == url
    for name, target in targets.items():
        after = state(lab, name)
        assert after["current"] == after["profile"] == target, name
        assert after["generation"] == before[name]["generation"] + 1
        assert outcomes[name]["outcome"] == "done" and outcomes[name]["fetched_paths"] > 0, outcomes[name]
    assert_hosts_came_through_the_front(lab, inventory, since, nix_versions)
    operator = [d for d in downloads(lab)[since:] if d["authorized"]]
    assert any("/manifests/" in d["path"] for d in operator), "topdeck read the manifests through B2's API"
    assert FRONT_SOURCE not in {d["peer"] for d in operator}
    assert forward.peers(front[1]), "the front logged no connection"
    assert not (inventory / ".topdeck").exists() and any(runs.runs_dir(inventory).glob("*.json")), "run records"


def test_the_agent_module_from_agent_config_fetches_through_the_front_on_every_kind(lab, inventory, tmp_path,
                                                                                   nix_versions):
    """What an operator does: `topdeck agent-config HOST` pasted into a configuration.nix beside a copy of the
    module; the unit's ExecStart, run on the host as its timer would run it, applies the pointer through the front."""
    url = load_inventory(inventory).cache.download_url
    targets = release_both(inventory)
    since = len(downloads(lab))
    for name in HOSTS:
        printed = topdeck(inventory, "agent-config", name)
        assert printed.returncode == 0 and f'cache = "{url}";' in printed.stdout, printed.stdout + printed.stderr
        units = systemd_units(configuration(tmp_path / name, printed.stdout))
        argv = shlex.split(units["services"]["topdeck-agent"]["serviceConfig"]["ExecStart"])
        assert open(argv[1], "rb").read() == host_script()
        code, _, err = ssh_run(lab, name, f"mkdir -p /root/agent && printf %s {shlex.quote(host_script().decode())} "
                                          "> /root/agent/host.sh")
        assert code == 0, err

        code, out, err = ssh_run(lab, name, shlex.join(["sh", "/root/agent/host.sh", *argv[2:]]))

        assert code == 0, out[-2000:] + err
        after = state(lab, name)
        assert after["current"] == after["profile"] == targets[name], name
    assert_hosts_came_through_the_front(lab, inventory, since, nix_versions)


def test_a_front_that_is_down_fails_each_host_in_one_line_and_changes_nothing(lab, inventory, tmp_path):
    down = tmp_path / "hosts"
    shutil.copytree(inventory, down)
    url = f"http://{DOWN_FRONT}:9/file/{BUCKET}/{load_inventory(inventory).cache.prefix}"
    set_download_url(down, url)
    targets = release_both(inventory)
    before = {name: state(lab, name) for name in HOSTS}

    by_pointer, _, outcomes = deploy(down)
    by_target = topdeck(down, "deploy", "--on", "host-1", "--target", targets["host-1"], "--yes")

    assert by_pointer.returncode == 1
    for name in HOSTS:
        reason = outcomes[name]["reason"]
        assert outcomes[name]["outcome"] == "failed" and "\n" not in reason, outcomes[name]
        pointer = "db" if name == "host-3" else "web"
        # curl's own words differ between versions ("to 127.0.35.2 port 9" or "to 127.0.35.2:9")
        assert reason.startswith(f"cannot read pointer {pointer}: no answer from {url}/toplevels/{pointer}.json "
                                 f"(curl: (7) Failed to connect to {DOWN_FRONT}"), reason
    errors = by_pointer.stderr.strip().splitlines()
    assert len(errors) == len(HOSTS) and all(line.startswith("topdeck: error: host-") for line in errors), errors
    assert by_target.returncode == 1
    assert (f"host-1: failed: fetching {targets['host-1']} from {url} failed (no answer from {url}/nix-cache-info "
            f"(curl: (7) Failed to connect to {DOWN_FRONT}") in by_target.stderr, by_target.stderr
    assert by_target.stderr.count("\n") == 1 and "nothing was changed" in by_target.stderr
    assert {name: state(lab, name) for name in HOSTS} == before
