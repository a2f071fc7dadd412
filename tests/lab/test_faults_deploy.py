"""Faults during a deploy, on a lab of its own: hosts lost while they change, activations that lock topdeck out,
a full /nix, topdeck itself killed, and a B2 daily cap while the hosts pull.

Every test checks where each host ended: it runs what its profile names, that system is complete in its store,
and it is either the old system or the new one; and the report (or the next `topdeck status`) says which.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import write_lab_inventory
from deploytools import deploy, deploy_inventory, last_activation, release, state, three_host_lab, topdeck
from labtools import ssh_run

from topdeck.core.events import HostPhase
from topdeck.core.inventory import load_inventory
from topdeck.core.operations import deploy_fleet, plan_fleet
from topdeck.lab import factory
from topdeck.lab.lab import Lab
from topdeck.lab.nixenv import lab_env

CONFIRM_TIMEOUT = 10
WEB = ("host-1", "host-2")
TINY_NIX = 48 * factory.MiB


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("faultlab"), "127.0.13.11") as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    """host-1 and host-2 follow `web`, host-3 `db`, and all three run their pointer's system."""
    # no switch here waits for its lock: a lost host is given up after 60 s + confirm_timeout + 10 s, not + 180 s
    root = deploy_inventory(lab, tmp_path_factory.mktemp("faults") / "hosts", CONFIRM_TIMEOUT, lock_wait=10)
    assert deploy(root)[0].returncode == 0
    return root


def next_web(inventory, **activation) -> str:  # type: ignore[no-untyped-def]
    return release(inventory, "web", lambda s: factory.with_activation(
        factory.upgrade(s, "web-app", f"9.{time.time_ns()}"), activation.pop("kind", "ok"), **activation))


def assert_consistent(lab: Lab, name: str) -> dict[str, object]:
    """The host runs what its profile names, and that system is complete in its store."""
    now = state(lab, name)
    assert now["current"] == now["profile"] == now["boot"], now
    lab.host(name).sh(f"nix-store --check-validity {now['profile']}")
    return now


def lock_free(lab: Lab, name: str) -> bool:
    """Whether no deploy runs on the host (looked at from inside it, without SSH)."""
    return lab.host(name).sh("flock -n /run/topdeck/lock true && echo free", check=False).strip() == "free"


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


# --- a host lost after it began to change -------------------------------------------------------------


@pytest.mark.parametrize("lost_in", ["activate", "confirm"])
@pytest.mark.parametrize("back", ["soon", "after its own timeout"])
def test_a_host_lost_while_it_changes_ends_on_one_generation_and_the_report_says_which(lab, inventory, lost_in,
                                                                                      back):
    before = {name: assert_consistent(lab, name) for name in WEB}
    web = next_web(inventory, kind="slow", slow_seconds=2)  # an activation that lasts long enough to be cut
    inv = load_inventory(inventory)
    lost = threading.Event()

    def bring_back() -> None:
        if back == "soon":
            time.sleep(1)
        else:  # the host rolls back by itself, unconfirmed, and its run ends
            wait_until(lambda: lock_free(lab, "host-1"), CONFIRM_TIMEOUT + 60, "host-1's run ends")
        lab.start_host("host-1")

    def emit(event) -> None:  # type: ignore[no-untyped-def]
        if isinstance(event, HostPhase) and event.host == "host-1" and event.phase == lost_in and not lost.is_set():
            lost.set()
            lab.stop_host("host-1")  # before topdeck's confirming thread starts: it finds sshd gone
            threading.Thread(target=bring_back).start()

    result = deploy_fleet(inv, plan_fleet(inv, list(WEB)), emit=emit)

    assert lost.is_set()
    outcomes = {o.host: o for o in result.outcomes}
    assert outcomes["host-2"].outcome == "done" and state(lab, "host-2")["current"] == web
    ended = assert_consistent(lab, "host-1")
    if back == "soon":  # topdeck logs in again, follows the run, and confirms it in time
        assert outcomes["host-1"].outcome == "done", outcomes["host-1"]
        assert ended["current"] == web and ended["generation"] == before["host-1"]["generation"] + 1
    else:
        assert outcomes["host-1"].outcome == "rolled-back", outcomes["host-1"]
        assert "no confirmation" in outcomes["host-1"].reason
        assert ended == before["host-1"]
        assert last_activation(lab, "host-1")[2:] == [str(before["host-1"]["current"]), "ok"]
    assert outcomes["host-1"].after == ended["current"]  # the report names the system the host ended on


def test_a_host_lost_for_good_is_reported_with_where_it_will_end(lab, inventory):
    """topdeck gives up on a lost host after its window; the report says the host returns by itself."""
    before = assert_consistent(lab, "host-1")
    next_web(inventory, kind="slow", slow_seconds=2)
    inv = load_inventory(inventory)
    lost = threading.Event()

    def emit(event) -> None:  # type: ignore[no-untyped-def]
        if isinstance(event, HostPhase) and event.host == "host-1" and event.phase == "activate" and not lost.is_set():
            lost.set()
            lab.stop_host("host-1")

    try:
        result = deploy_fleet(inv, plan_fleet(inv, ["host-1"]), emit=emit)
        outcome = result.outcomes[0]
        assert outcome.outcome == "failed"
        assert f"topdeck could not confirm it, so it returns to {before['current']} by itself" in outcome.reason
        assert "`topdeck status` shows where it ended" in outcome.reason
        wait_until(lambda: lock_free(lab, "host-1"), 30, "host-1's run ends")
    finally:
        lab.start_host("host-1")
    assert assert_consistent(lab, "host-1") == before
    status = json.loads(topdeck(inventory, "status", "--on", "host-1", "--json").stdout)[0]
    assert status["status"] == "rolled-back" and status["current"] == before["current"]


# --- magic rollback --------------------------------------------------------------------------------------


def test_magic_rollback_restores_ssh_in_ten_trials_out_of_ten(lab, inventory):
    """An activation that locks topdeck out (the new system drops its authorized keys), ten times."""
    deploy(inventory, "--on", "@web")
    bad = release(inventory, "web", factory.without_ssh)
    trials = []
    for _ in range(5):
        before = {name: assert_consistent(lab, name) for name in WEB}
        started = time.monotonic()
        result, _, outcomes = deploy(inventory, "--on", "@web")
        elapsed = time.monotonic() - started
        for name in WEB:
            restored = outcomes[name]["outcome"] == "rolled-back" and "no confirmation" in outcomes[name]["reason"]
            restored = restored and state(lab, name) == before[name] and ssh_run(lab, name, "true")[0] == 0
            assert f"switch\t{bad}\t" in lab.host(name).sh("cat /run/lab/activation.log")
            trials.append((name, restored, elapsed))
        assert result.returncode == 1
    print("\nmagic rollback trials (host, restored, seconds):", *trials, sep="\n  ")
    assert [restored for _, restored, _ in trials] == [True] * 10
    assert max(elapsed for *_, elapsed in trials) < CONFIRM_TIMEOUT + 45
    next_web(inventory)


# --- a full /nix -----------------------------------------------------------------------------------------


def test_a_host_whose_nix_is_full_is_stopped_before_anything_changes(lab, tmp_path):
    lab.up(hosts={"tiny": "127.0.13.30"}, small_nix={"tiny": TINY_NIX}, log=lambda *_: None)
    inventory = write_lab_inventory(lab, tmp_path / "hosts", f"full-{uuid.uuid4().hex[:6]}",
                                    roles={"tiny": "bulk", "host-3": "bulk"})
    release(inventory, "bulk", lambda s: s, via="tiny")
    assert deploy(inventory)[0].returncode == 0
    before = assert_consistent(lab, "tiny")

    # The plan sees it: the fetch does not fit, so the deploy does not start there.
    big = release(inventory, "bulk", lambda s: factory.add_package(
        s, factory.Package("bulk-data", "1.0", size=TINY_NIX)), via="tiny")
    result, plan, outcomes = deploy(inventory)
    assert result.returncode == 1
    assert not next(h for h in plan["hosts"] if h["host"] == "tiny")["fits"]
    assert outcomes["host-3"]["outcome"] == "done" and state(lab, "host-3")["current"] == big
    assert outcomes["tiny"]["outcome"] == "failed"
    assert "free, the fetch unpacks to" in outcomes["tiny"]["reason"]
    assert "tiny: failed: /nix has" in result.stderr and result.stderr.count("topdeck: error:") == 1
    assert assert_consistent(lab, "tiny") == before

    # /nix fills up between the plan and the deploy: the host itself refuses before fetching anything.
    small = release(inventory, "bulk", lambda s: factory.upgrade(s, "bulk-data", "1.1", size=8 * factory.MiB),
                    via="tiny")
    inv = load_inventory(inventory)
    fleet_plan = plan_fleet(inv, ["tiny"])
    assert fleet_plan.plan.hosts[0].fits
    # Leave 4 MiB: enough for Nix's own database, not for the fetch.
    lab.host("tiny").sh("free=$(df -Pk /nix | awk 'NR == 2 { print $4 }'); "
                        "dd if=/dev/zero of=/nix/filler bs=1K count=$((free - 4096)) 2>/dev/null")
    try:
        outcome = deploy_fleet(inv, fleet_plan).outcomes[0]
        assert outcome.outcome == "failed" and "MiB free; the fetch needs" in outcome.reason
        assert "nothing was changed" in outcome.reason
        assert assert_consistent(lab, "tiny") == before
        assert lab.host("tiny").run(["nix-store", "--check-validity", small], check=False).returncode != 0
    finally:
        lab.host("tiny").sh("rm -f /nix/filler")
    assert deploy(inventory, "--on", "tiny")[2]["tiny"]["outcome"] == "done"
    assert state(lab, "tiny")["current"] == small


# --- topdeck killed -------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["fetch", "activate", "confirm"])
def test_topdeck_killed_mid_deploy_the_hosts_end_by_themselves_and_status_shows_it(lab, inventory, phase):
    deploy(inventory, "--on", "@web")
    before = {name: assert_consistent(lab, name) for name in WEB}
    web = release(inventory, "web", lambda s: factory.add_package(
        factory.upgrade(s, "web-app", f"10.{time.time_ns()}"), factory.Package(f"bulk-{phase}", "1.0", size=24 << 20)))
    # so that the fetch lasts long enough to be cut; host-2 slower still, so that it never reaches (and passes) the
    # confirmation before host-1 does, which would let topdeck confirm it before the kill
    for name, cpu_percent in zip(WEB, (10, 4), strict=True):
        lab.set_slow(name, cpu_percent)
    try:
        killed = kill_topdeck_at(inventory, phase, "host-1")
    finally:
        for name in WEB:
            lab.set_slow(name, 0)
    assert killed.returncode == -signal.SIGKILL

    if phase != "fetch":  # the host may still wait for a confirmation that will never come
        early = json.loads(topdeck(inventory, "status", "--on", "host-1", "--json").stdout)[0]
        assert early["status"] in ("deploying", "rolled-back"), early
    for name in WEB:
        wait_until(lambda name=name: lock_free(lab, name), CONFIRM_TIMEOUT + 90, f"{name}'s run ends")
    status = {s["host"]: s for s in json.loads(topdeck(inventory, "status", "--on", "@web", "--json").stdout)}
    for name in WEB:
        ended = assert_consistent(lab, name)
        assert status[name]["current"] == ended["current"]
        # Nobody confirmed: whatever the host got to, it is back on its old system, and status says so.
        assert ended == before[name], name
        assert status[name]["status"] in ("behind", "rolled-back")
    assert status["host-1"]["status"] == ("behind" if phase == "fetch" else "rolled-back")
    retry, _, outcomes = deploy(inventory, "--on", "@web")
    assert retry.returncode == 0 and all(state(lab, name)["current"] == web for name in WEB)


def kill_topdeck_at(inventory, phase: str, host: str) -> subprocess.CompletedProcess[str]:
    """Run `topdeck deploy` and SIGKILL it as soon as `host` reports `phase`."""
    command = [sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), "deploy", "--yes", "--json",
               "--on", "@web"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lab_env())
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "HostPhase" and event["host"] == host and event["phase"] == phase:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(60)
    assert seen and seen[-1].startswith("{") and phase in seen[-1], "".join(seen[-5:])
    return subprocess.CompletedProcess(command, process.returncode, "".join(seen), process.stderr.read())


# --- a B2 daily cap while the hosts pull -----------------------------------------------------------------


def test_a_b2_download_cap_during_the_pulls_stops_the_deploy_and_names_the_cap(lab, inventory):
    deploy(inventory, "--on", "@web")
    before = {name: assert_consistent(lab, name) for name in WEB}
    web = release(inventory, "web", lambda s: factory.add_package(
        factory.upgrade(s, "web-app", f"11.{time.time_ns()}"), factory.Package("bulk-cap", "1.0", size=24 << 20)))
    inv = load_inventory(inventory)
    capped = threading.Event()

    # The cap comes as the first host starts to fetch: the fetch ahead has every request of a host in flight at once,
    # so a cap after its first bytes would find nothing left to refuse (the host would have all it needs).
    def emit(event) -> None:  # type: ignore[no-untyped-def]
        if isinstance(event, HostPhase) and event.phase == "fetch" and not capped.is_set():
            capped.set()
            lab.emulator_control("POST", "faults", {"download_cap": True})

    for name in WEB:
        lab.set_slow(name, 10)
    try:
        result = deploy_fleet(inv, plan_fleet(inv, list(WEB)), emit=emit)
        assert capped.is_set()
        for outcome in result.outcomes:
            assert outcome.outcome == "failed", outcome
            assert "the B2 daily download cap is exceeded (HTTP 403 download_cap_exceeded)" in outcome.reason
            assert "nothing was changed" in outcome.reason
        for name in WEB:
            assert assert_consistent(lab, name) == before[name]
            assert lab.host(name).run(["nix-store", "--check-validity", web], check=False).returncode != 0

        # Still capped, the next deploy stops at the plan, in one line naming the cap.
        again = topdeck(inventory, "deploy", "--yes", "--on", "@web")
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert again.stderr.startswith("topdeck: error:") and "B2 daily download cap is exceeded" in again.stderr
    finally:
        lab.emulator_control("DELETE", "faults")
        for name in WEB:
            lab.set_slow(name, 0)
    assert all(state(lab, name) == before[name] for name in WEB)
    done, _, _ = deploy(inventory, "--on", "@web")  # lifted: the same deploy finishes from where it stopped
    assert done.returncode == 0 and all(state(lab, name)["current"] == web for name in WEB)
