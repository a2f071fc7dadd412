"""End-to-end tests of deploy, magic rollback, waves, retries, generations and rollback, on a lab of their own.

Real sshd hosts in their own namespaces, real Nix substituting from the B2 emulator over HTTP, the real CLI.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from deploytools import deploy, deploy_inventory, last_activation, release, state, three_host_lab, topdeck

from topdeck.core.cache import pointers
from topdeck.core.cache.access import open_cache
from topdeck.core.events import HostOutcome, HostPhase
from topdeck.core.inventory import load_inventory
from topdeck.core.nix.signing import generate_keypair, load_secret_key, ssh_public_key
from topdeck.core.nix.store import parse_store_path
from topdeck.core.operations import deploy_fleet, plan_fleet
from topdeck.lab import factory

CONFIRM_TIMEOUT = 6


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("deploylab"), "127.0.7.11") as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    return deploy_inventory(lab, tmp_path_factory.mktemp("deploy") / "hosts", CONFIRM_TIMEOUT)


def test_deploy_a_new_toplevel_to_three_hosts(lab, inventory):
    web = release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "1.1", size=300_000))
    db = release(inventory, "db", lambda s: factory.upgrade(s, "db-app", "2.0", size=250_000))
    before = {name: state(lab, name) for name in ("host-1", "host-2", "host-3")}

    result, plan, outcomes = deploy(inventory)

    assert result.returncode == 0, result.stderr
    targets = {"host-1": web, "host-2": web, "host-3": db}
    planned = {host["host"]: host for host in plan["hosts"]}
    for name, target in targets.items():
        after = state(lab, name)
        assert after["current"] == after["profile"] == after["boot"] == target
        assert after["generation"] == before[name]["generation"] + 1
        assert last_activation(lab, name)[1:] == ["switch", target, "ok"]
        assert outcomes[name]["outcome"] == "done" and outcomes[name]["after"] == target
        # What the host fetched, by Nix's own count, is what the plan said it would.
        assert outcomes[name]["fetched_paths"] == planned[name]["fetch_paths"] > 0
        assert outcomes[name]["fetched_bytes"] == planned[name]["download_bytes"]


def test_a_second_deploy_of_the_same_target_changes_nothing(lab, inventory):
    deploy(inventory)
    before = {name: state(lab, name) for name in ("host-1", "host-2", "host-3")}
    log_before = lab.host("host-1").sh("wc -l < /run/lab/activation.log")

    result, plan, outcomes = deploy(inventory)

    assert result.returncode == 0, result.stderr
    assert all(host["status"] == "up-to-date" for host in plan["hosts"])
    assert {name: state(lab, name) for name in before} == before
    assert lab.host("host-1").sh("wc -l < /run/lab/activation.log") == log_before
    assert all(o["outcome"] == "done" and "already running" in o["reason"] for o in outcomes.values())


@pytest.mark.parametrize("mode", ["boot", "test", "dry-activate"])
def test_each_mode_changes_what_it_should(lab, inventory, mode):
    target = release(inventory, "db", lambda s: factory.upgrade(s, "db-app", f"3.{time.time_ns()}"))
    before = state(lab, "host-3")

    result, _, outcomes = deploy(inventory, "--on", "host-3", "--mode", mode)

    assert result.returncode == 0, result.stderr
    after = state(lab, "host-3")
    if mode == "boot":
        assert after["profile"] == after["boot"] == target and after["current"] == before["current"]
        assert after["generation"] == before["generation"] + 1
    elif mode == "test":
        assert after["current"] == target
        assert (after["profile"], after["boot"], after["generation"]) == \
            (before["profile"], before["boot"], before["generation"])
    else:
        assert after == before
    assert last_activation(lab, "host-3")[1:3] == [mode, target]
    assert outcomes["host-3"]["outcome"] == "done"
    deploy(inventory, "--on", "host-3")  # leave it running its pointer


@pytest.mark.parametrize("variant", ["break-ssh", "fail"])
def test_a_bad_activation_rolls_the_host_back_by_itself(lab, inventory, variant):
    deploy(inventory, "--on", "host-1")
    before = state(lab, "host-1")
    change = factory.without_ssh if variant == "break-ssh" else (lambda s: factory.with_activation(s, "fail"))
    bad = release(inventory, "web", change)

    started = time.monotonic()
    result, _, outcomes = deploy(inventory, "--on", "host-1")
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert outcomes["host-1"]["outcome"] == "rolled-back"
    assert state(lab, "host-1") == before  # the same system, profile, boot entry and generation
    log = lab.host("host-1").sh("cat /run/lab/activation.log")
    assert f"switch\t{bad}\t" in log and log.strip().endswith(f"{before['current']}\tok")
    if variant == "break-ssh":
        assert "no confirmation" in outcomes["host-1"]["reason"]
        assert CONFIRM_TIMEOUT <= elapsed < CONFIRM_TIMEOUT + 20
    else:
        assert "failed" in outcomes["host-1"]["reason"] and elapsed < CONFIRM_TIMEOUT + 10
    release(inventory, "web",
            lambda s: factory.with_activation(factory.upgrade(s, "web-app", f"5.{time.time_ns()}"), "ok"))


def test_a_failing_health_check_rolls_back(lab, inventory):
    deploy(inventory, "--on", "host-2")
    before = state(lab, "host-2")
    release(inventory, "web", lambda s: factory.upgrade(s, "web-app", f"6.{time.time_ns()}"))
    host_file = inventory / "host-2" / "host.toml"
    original = host_file.read_text()
    host_file.write_text(original + '\n[check]\ncommand = "test -e /run/lab/healthy"\n')
    try:
        result, _, outcomes = deploy(inventory, "--on", "host-2")
    finally:
        host_file.write_text(original)
    assert result.returncode == 1
    assert outcomes["host-2"]["outcome"] == "rolled-back"
    assert "health check" in outcomes["host-2"]["reason"] and "test -e /run/lab/healthy" in outcomes["host-2"]["reason"]
    assert state(lab, "host-2") == before


def test_a_host_lost_mid_deploy_fails_alone_and_retry_failed_finishes_it(lab, inventory):
    web = release(inventory, "web", lambda s: factory.add_package(s, factory.Package("bulk", "1.0", size=24 << 20)))
    lab.set_slow("host-2", 10)  # so that its fetch lasts long enough to be cut
    inv = load_inventory(inventory)
    stopped = threading.Event()

    def emit(event):
        if isinstance(event, HostPhase) and event.host == "host-2" and event.phase == "fetch" and not stopped.is_set():
            stopped.set()
            threading.Thread(target=lab.stop_host, args=("host-2",)).start()

    try:
        result = deploy_fleet(inv, plan_fleet(inv, []), emit=emit)
    finally:
        lab.set_slow("host-2", 0)
    assert stopped.is_set()
    outcomes = {o.host: o for o in result.outcomes}
    assert not result.ok and result.failed == ("host-2",)
    assert outcomes["host-1"].outcome == outcomes["host-3"].outcome == "done"
    assert state(lab, "host-1")["current"] == web
    lab.start_host("host-2")
    lost = state(lab, "host-2")
    # Consistent: it runs what its profile names, that system is complete in its store, and it is the old one.
    assert lost["current"] == lost["profile"] != web
    lab.host("host-2").sh(f"nix-store --check-validity {lost['profile']}")

    retry, _, retried = deploy(inventory, "--retry-failed", "--on", "@web")  # host-2 is the failed one of @web

    assert retry.returncode == 0, retry.stderr
    assert list(retried) == ["host-2"] and retried["host-2"]["outcome"] == "done"
    assert state(lab, "host-2")["current"] == web


def test_two_deploys_to_one_host_the_second_is_refused(lab, inventory):
    slow = release(inventory, "db", lambda s: factory.with_activation(s, "slow", slow_seconds=3))
    inv = load_inventory(inventory)
    first_at_activate = threading.Event()
    results = {}

    def first():
        results["first"] = deploy_fleet(inv, plan_fleet(inv, ["host-3"]), emit=lambda e: (
            first_at_activate.set() if isinstance(e, HostPhase) and e.phase == "activate" else None))

    thread = threading.Thread(target=first)
    thread.start()
    assert first_at_activate.wait(60)
    second = deploy_fleet(inv, plan_fleet(inv, ["host-3"]))
    thread.join(60)

    assert second.outcomes[0].outcome == "failed"
    assert "another deploy holds this host's lock" in second.outcomes[0].reason
    assert results["first"].ok and state(lab, "host-3")["current"] == slow
    release(inventory, "db", lambda s: factory.with_activation(s, "ok"))


def test_generations_and_rollback_to_the_previous_and_a_chosen_one(lab, inventory):
    deploy(inventory, "--on", "host-1")
    listed = json.loads(topdeck(inventory, "generations", "host-1", "--json").stdout)
    current = next(g for g in listed if g["current"])
    previous = max((g for g in listed if g["number"] < current["number"]), key=lambda g: g["number"])
    assert current["path"] == state(lab, "host-1")["current"] and current["version"]

    back = topdeck(inventory, "rollback", "host-1", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert state(lab, "host-1")["current"] == previous["path"]
    assert state(lab, "host-1")["generation"] == previous["number"]
    status = json.loads(topdeck(inventory, "status", "--on", "host-1", "--json").stdout)
    assert status[0]["status"] == "behind"  # an earlier target of its pointer

    first = topdeck(inventory, "rollback", "host-1", "--to", "1", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert state(lab, "host-1")["current"] == listed[0]["path"]
    again = json.loads(topdeck(inventory, "generations", "host-1", "--json").stdout)
    assert [g["number"] for g in again if g["current"]] == [1]

    status = json.loads(topdeck(inventory, "status", "--on", "host-1", "--json").stdout)
    assert status[0]["status"] == "drifted"  # the lab's install, which the pointer never named
    assert status[0]["current"] == listed[0]["path"] != status[0]["desired"]


def test_the_host_refuses_a_forged_or_replayed_pointer(lab, inventory):
    deploy(inventory, "--on", "host-3")  # the host now remembers db's serial
    inv = load_inventory(inventory)
    cache = open_cache(inv.cache)
    now = pointers.current(cache.listing(), [load_secret_key(inv.cache.signing_key).public_key()])["db"]
    path = parse_store_path(now.path)
    before = state(lab, "host-3")

    forger, _ = generate_keypair("topdeck-lab-1")
    forged = pointers.signed(pointers.Pointer("db", path, now.serial + 1, int(time.time())), forger)
    cache.put_bytes(pointers.sidecar_name("db"), pointers.render_sidecar(forged), content_type="application/json")
    _, _, outcomes = deploy(inventory, "--on", "host-3")
    assert outcomes["host-3"]["outcome"] == "failed"
    assert "signature does not verify" in outcomes["host-3"]["reason"]

    replayed = pointers.signed(pointers.Pointer("db", path, now.serial - 1, int(time.time())),
                               load_secret_key(lab.cache_secret_key))
    cache.put_bytes(pointers.sidecar_name("db"), pointers.render_sidecar(replayed), content_type="application/json")
    _, _, outcomes = deploy(inventory, "--on", "host-3")
    assert outcomes["host-3"]["outcome"] == "failed"
    assert f"serial {now.serial - 1} is older than serial {now.serial}" in outcomes["host-3"]["reason"]
    assert state(lab, "host-3") == before
    release(inventory, "db", lambda s: s)  # a fresh, properly signed pointer for the tests after this one


def test_outcome_events_are_emitted_once_per_host(lab, inventory):
    inv = load_inventory(inventory)
    events = []
    result = deploy_fleet(inv, plan_fleet(inv, ["host-1", "host-3"]), emit=events.append)
    assert result.ok
    assert sorted(e.host for e in events if isinstance(e, HostOutcome)) == ["host-1", "host-3"]


def test_the_installed_script_is_an_unattended_pull_agent(lab, inventory):
    """The same host script, installed on the host and run by a timer, applies its pointer when it moves."""
    from topdeck.core.operations import trusted_key
    from topdeck.core.remote.hostverbs import host_script

    inv = load_inventory(inventory)
    key = trusted_key(inv)
    url = open_cache(inv.cache).substituter_url
    web = release(inventory, "web", lambda s: factory.upgrade(s, "web-app", f"7.{time.time_ns()}"))
    host = lab.host("host-2")
    host.run(["/bin/sh", "-c", "mkdir -p /root/agent && cat > /root/agent/topdeck-host.sh"], input=host_script())
    agent = ["/bin/sh", "/root/agent/topdeck-host.sh", "agent", "--pointer", "web", "--sidecar",
             f"{url}/toplevels/web.json", "--cache", url, "--key", key.to_text(), "--signer", ssh_public_key(key)]
    generation = state(lab, "host-2")["generation"]

    first = host.run(agent, check=False)
    assert first.returncode == 0, first.stdout.decode()[-1000:]
    assert state(lab, "host-2")["current"] == web and state(lab, "host-2")["generation"] == generation + 1

    second = host.run(agent, check=False)
    assert second.returncode == 0 and "already running" in second.stdout.decode()
    assert state(lab, "host-2")["generation"] == generation + 1


def test_a_non_root_user_deploys_through_sudo(lab, inventory):
    web = release(inventory, "web", lambda s: factory.upgrade(s, "web-app", f"8.{time.time_ns()}"))
    host_file = inventory / "host-2" / "host.toml"
    original = host_file.read_text()
    before = state(lab, "host-2")
    try:
        host_file.write_text('user = "topdeck-deployer"\n' + original)
        refused, _, outcomes = deploy(inventory, "--on", "host-2")
        assert refused.returncode == 1 and outcomes["host-2"]["outcome"] == "failed"
        assert "user topdeck-deployer is not root here" in outcomes["host-2"]["reason"]
        assert state(lab, "host-2") == before  # without sudo, nothing it may not do was done

        host_file.write_text('user = "topdeck-deployer"\nsudo = true\n' + original)
        result, _, outcomes = deploy(inventory, "--on", "host-2")
    finally:
        host_file.write_text(original)
    assert result.returncode == 0, result.stderr
    assert state(lab, "host-2")["current"] == web and outcomes["host-2"]["outcome"] == "done"
    assert "Accepted publickey for topdeck-deployer" in lab.host("host-2").sshd_log.read_text()
