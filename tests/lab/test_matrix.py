"""The whole path on every kind of host, in one mixed lab: push, plan, deploy, magic rollback, rollback.

host-1 is native (this machine's Nix, no init), host-2 Debian 13 (Nix 2.26) and host-3 Debian sid (Nix 2.34), both
booted with systemd as PID 1 and sshd as its unit. host-1 and host-2 follow pointer `web`, host-3 `db`. Every test
deploys to all three in one run and checks each host by what it runs.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from deploytools import MIXED_KINDS, deploy, deploy_inventory, last_activation, release, state, three_host_lab, topdeck
from labtools import ssh_run

from topdeck.core.inventory import load_inventory
from topdeck.lab import factory

CONFIRM_TIMEOUT = 8
HOSTS = tuple(MIXED_KINDS)
FETCHED = re.compile(r"these (\d+) paths will be fetched")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("matrixlab"), "127.0.22.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    return deploy_inventory(lab, tmp_path_factory.mktemp("matrix") / "hosts", CONFIRM_TIMEOUT)


def release_both(inventory, change) -> dict[str, str]:  # type: ignore[no-untyped-def]
    web, db = release(inventory, "web", change), release(inventory, "db", change)
    return {"host-1": web, "host-2": web, "host-3": db}


def dry_run_count(lab, inventory, host: str, target: str) -> int:
    """How many paths the host's own Nix says it would fetch for `target` from the cache."""
    cache = load_inventory(inventory).cache
    url = f"{lab.emulator.url}/file/{cache.bucket}/{cache.prefix}"
    key = lab.cache_public_key.read_text().strip()
    _, out, err = ssh_run(lab, host, f"nix-store -r --dry-run {target} --option substituters '{url}' "
                                     f"--option trusted-public-keys '{key}' --option narinfo-cache-negative-ttl 0")
    match = FETCHED.search(out + err)
    return int(match[1]) if match else 0


def test_the_hosts_are_of_each_kind(lab):
    for host, kind in MIXED_KINDS.items():
        init = lab.host(host).sh("cat /proc/1/comm").strip()
        assert (init == "systemd") == (kind != "native"), (host, init)


def test_push_plan_and_deploy_to_every_kind_in_one_run(lab, inventory):
    targets = release_both(inventory, lambda s: factory.upgrade(s, "web-app" if s.host == "web" else "db-app",
                                                                f"2.{time.time_ns()}"))
    before = {name: state(lab, name) for name in HOSTS}
    expected = {name: dry_run_count(lab, inventory, name, target) for name, target in targets.items()}

    result, plan, outcomes = deploy(inventory)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    planned = {host["host"]: host for host in plan["hosts"]}
    for name, target in targets.items():
        after = state(lab, name)
        assert after["current"] == after["profile"] == after["boot"] == target, name
        assert after["generation"] == before[name]["generation"] + 1
        assert last_activation(lab, name)[1:] == ["switch", target, "ok"]
        assert outcomes[name]["outcome"] == "done" and outcomes[name]["after"] == target
        # The plan's numbers are the host's own Nix's, and the fetch fetched what the plan said.
        assert planned[name]["fetch_paths"] == expected[name] > 0, name
        assert outcomes[name]["fetched_paths"] == planned[name]["fetch_paths"], name
        assert outcomes[name]["fetched_bytes"] == planned[name]["download_bytes"], name
    status = json.loads(topdeck(inventory, "status", "--json").stdout)
    assert {host["host"]: host["status"] for host in status} == dict.fromkeys(HOSTS, "up-to-date")


def test_a_system_that_locks_logins_out_rolls_itself_back_on_every_kind(lab, inventory):
    deploy(inventory)
    before = {name: state(lab, name) for name in HOSTS}
    bad = release_both(inventory, factory.without_ssh)

    started = time.monotonic()
    result, _, outcomes = deploy(inventory)
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert CONFIRM_TIMEOUT <= elapsed < CONFIRM_TIMEOUT + 30
    for name in HOSTS:
        assert outcomes[name]["outcome"] == "rolled-back", (name, outcomes[name])
        assert "no confirmation" in outcomes[name]["reason"]
        assert state(lab, name) == before[name]
        log = lab.host(name).sh("cat /run/lab/activation.log")
        assert f"switch\t{bad[name]}\t" in log and log.strip().endswith(f"{before[name]['current']}\tok")
        assert ssh_run(lab, name, "true")[0] == 0, f"{name}: logins work again"
    release_both(inventory, lambda s: factory.with_activation(s, "ok"))


def test_rollback_to_the_previous_generation_on_every_kind(lab, inventory):
    deploy(inventory)
    listed = {name: json.loads(topdeck(inventory, "generations", name, "--json").stdout) for name in HOSTS}

    back = topdeck(inventory, "rollback", *HOSTS, "--yes")

    assert back.returncode == 0, back.stdout + back.stderr
    for name in HOSTS:
        current = next(g for g in listed[name] if g["current"])
        previous = max((g for g in listed[name] if g["number"] < current["number"]), key=lambda g: g["number"])
        after = state(lab, name)
        assert after["current"] == after["profile"] == previous["path"], name
        assert after["generation"] == previous["number"]
    again = {name: json.loads(topdeck(inventory, "generations", name, "--json").stdout) for name in HOSTS}
    assert all(sum(g["current"] for g in gens) == 1 for gens in again.values())
