"""End-to-end tests of reboots, with magic rollback across the reboot, on a mixed lab of their own.

host-2 (Debian 13) and host-3 (Debian sid) boot with systemd as PID 1: a reboot ends their systemd-nspawn, which the
lab's launcher starts again (a new boot id, a fresh /run, the system the boot entry names booted). host-1 is native:
no init, so it cannot reboot. All three follow pointer `web`.
"""

from __future__ import annotations

import json
import time

import pytest
from deploytools import MIXED_KINDS, deploy, deploy_inventory, release, topdeck

from topdeck.core import deploy as engine
from topdeck.core import runs
from topdeck.core.deploy import REBOOT, HostRules, Settings, Target, _HostRunner, _Tracker
from topdeck.core.errors import DeployError, SSHError
from topdeck.core.events import HostPhase
from topdeck.core.nix.signing import generate_keypair
from topdeck.lab import factory
from topdeck.lab.errors import LabError
from topdeck.lab.hosts import listener, processes_of
from topdeck.lab.imagehost import CGROUP_ROOT
from topdeck.lab.lab import Lab

CONFIRM_TIMEOUT = 8
SYSTEMD_HOSTS = ("host-2", "host-3")
BASE_ADDRESS = "127.0.28.11"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("rebootlab"), base_address=BASE_ADDRESS, emulator_port=0)
    lab.up(count=3, kinds=MIXED_KINDS, log=lambda *_: None)
    addresses = [host.address for host in lab.hosts.values()]
    try:
        yield lab
    finally:
        lab.down(log=lambda *_: None)
    # Hosts that rebooted (a new container, started by their launcher) leave nothing behind either.
    assert processes_of(lab.root) == []
    assert not [address for address in addresses if listener(address, 22)]
    assert not [group for group in CGROUP_ROOT.glob("*/topdeck-lab-127.0.28.*")]


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    root = deploy_inventory(lab, tmp_path_factory.mktemp("reboot") / "hosts", CONFIRM_TIMEOUT)
    host_3 = root / "host-3" / "host.toml"
    host_3.write_text(host_3.read_text().replace('pointer = "db"', 'pointer = "web"'))
    deploy(root)
    return root


def next_web(inventory, change=lambda spec: spec) -> str:  # type: ignore[no-untyped-def]
    return release(inventory, "web", lambda s: change(factory.upgrade(s, "web-app", f"8.{time.time_ns()}")))


def booted(lab: Lab, name: str) -> dict[str, object]:
    host = lab.host(name)
    return {"current": host.current_system(), "booted": host.sh("readlink /run/booted-system || true").strip(),
            "boot": host.sh("readlink /run/lab/boot-entry || true").strip(), "generation": host.generation(),
            "boot_id": host.boot_id()}


def test_the_lab_reboots_an_image_host_into_its_boot_entry_and_follows_it(lab, inventory):
    web = next_web(inventory)
    result, _, outcomes = deploy(inventory, "--on", "host-2", "--mode", "boot")
    assert outcomes["host-2"]["outcome"] == "done", result.stdout[-2000:]
    host = lab.host("host-2")
    before = booted(lab, "host-2")
    assert before["boot"] == web != before["current"]
    old_leader, old_sshd = host.state.anchor_pid, host.state.sshd_pid
    host.sh("echo left > /run/lab-marker")

    lab.reboot_host("host-2")

    after = booted(lab, "host-2")
    assert after["boot_id"] != before["boot_id"]
    assert after["booted"] == after["current"] == after["boot"] == web
    assert host.sh("test -e /run/lab-marker && echo kept || echo gone").strip() == "gone", "a fresh /run"
    # The state file follows the new container: its PID 1 and sshd, and the same launcher.
    saved = {h["name"]: h for h in json.loads(lab.state_file.read_text())["hosts"]}["host-2"]
    assert (saved["anchor_pid"], saved["sshd_pid"]) == (host.state.anchor_pid, host.state.sshd_pid)
    assert host.state.anchor_pid != old_leader and host.state.sshd_pid != old_sshd and host.sshd_running()
    assert topdeck(inventory, "status", "--on", "host-2", "--json").returncode in (0, 1)  # SSH logins work
    with pytest.raises(LabError, match="native host: it has no init system, so it cannot reboot"):
        lab.reboot_host("host-1")


def test_a_boot_deploy_with_reboot_boots_the_new_system_and_confirms_it(lab, inventory):
    deploy(inventory)
    before = {name: booted(lab, name) for name in SYSTEMD_HOSTS}
    web = next_web(inventory)

    result, _, outcomes = deploy(inventory, "--on", "host-2,host-3", "--mode", "boot", "--reboot")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    for name in SYSTEMD_HOSTS:
        after = booted(lab, name)
        assert after["boot_id"] != before[name]["boot_id"]
        assert after["booted"] == after["current"] == after["boot"] == web
        assert after["generation"] == before[name]["generation"] + 1
        outcome = outcomes[name]
        assert outcome["outcome"] == "done" and outcome["booted"] == outcome["after"] == web, outcome
        assert outcome["reason"] == f"booted {web}"
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    phases = [e["phase"] for e in events if e.get("event") == "HostPhase" and e["host"] == "host-2"]
    assert phases.index("reboot") < phases.index("booted") < phases.index("confirm") < phases.index("done"), phases


def test_topdeck_reboot_keeps_the_system_and_changes_the_boot_id(lab, inventory):
    before = {name: booted(lab, name) for name in SYSTEMD_HOSTS}

    result = topdeck(inventory, "reboot", *SYSTEMD_HOSTS, "--yes", "--json")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    outcomes = {o["host"]: o for o in json.loads(result.stdout.splitlines()[-1])["outcomes"]}
    for name in SYSTEMD_HOSTS:
        after = booted(lab, name)
        assert after["boot_id"] != before[name]["boot_id"]
        assert {k: v for k, v in after.items() if k != "boot_id"} == {
            k: v for k, v in before[name].items() if k != "boot_id"}
        assert outcomes[name]["outcome"] == "done" and outcomes[name]["booted"] == before[name]["current"]
    run = next(runs.runs_dir(inventory).glob(f"{json.loads(result.stdout.splitlines()[-1])['run_id']}*"))
    assert json.loads(run.read_text())["kind"] == "reboot"


def test_a_reboot_into_a_system_that_locks_logins_out_comes_back_on_the_old_system(lab, inventory):
    deploy(inventory)
    before = {name: booted(lab, name) for name in SYSTEMD_HOSTS}
    locked = next_web(inventory, factory.without_ssh)

    result, _, outcomes = deploy(inventory, "--on", "host-2,host-3", "--mode", "boot", "--reboot")

    assert result.returncode == 1
    for name in SYSTEMD_HOSTS:
        after = booted(lab, name)
        assert after["boot_id"] != before[name]["boot_id"]
        old = before[name]["current"]
        assert after["booted"] == after["current"] == after["boot"] == old != locked
        assert after["generation"] == before[name]["generation"]
        outcome = outcomes[name]
        assert outcome["outcome"] == "rolled-back", outcome
        assert "no confirmation within 8s" in outcome["reason"] and "rebooted into" in outcome["reason"], outcome
        assert outcome["booted"] == old
    status = json.loads(topdeck(inventory, "status", "--on", "host-2,host-3", "--json").stdout)
    assert [s["status"] for s in status] == ["rolled-back", "rolled-back"]  # SSH logins work again
    next_web(inventory)
    deploy(inventory)


def test_a_native_host_cannot_reboot_and_nothing_changes(lab, inventory):
    before = booted(lab, "host-1")

    result = topdeck(inventory, "reboot", "host-1", "--yes")
    deploy_result, _, outcomes = deploy(inventory, "--on", "host-1", "--mode", "boot", "--reboot",
                                        "--target", next_web(inventory))

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line == ("topdeck: error: host-1: failed: cannot reboot: this host runs no systemd, so nothing can "
                    "reboot it and guard the boot: nothing was changed")
    assert outcomes["host-1"]["outcome"] == "failed" and "runs no systemd" in outcomes["host-1"]["reason"]
    assert booted(lab, "host-1") == before


def test_reboot_goes_with_mode_boot_only(inventory):
    result = topdeck(inventory, "deploy", "--reboot", "--yes")

    assert result.returncode == 1
    assert result.stderr.strip() == ("topdeck: error: --reboot goes with mode boot (not switch): boot makes the "
                                     "new system the one the reboot starts")


# --- the engine's side, without a lab ---------------------------------------------------------------------

OLD, NEW = "/nix/store/" + "o" * 32 + "-nixos-system-old", "/nix/store/" + "n" * 32 + "-nixos-system-new"


def test_a_reboot_goes_with_boot_mode_and_a_reboot_target_is_the_boot_default_alone():
    key = generate_keypair("t")[1]
    with pytest.raises(DeployError, match="^reboot goes with mode boot"):
        Settings("switch", "", key, reboot=True)
    assert Settings("boot", "", key, reboot=True).rebooting and Settings(REBOOT, "", key, reboot=True).rebooting
    assert not Settings("boot", "", key).rebooting
    with pytest.raises(ValueError):
        Target(generation=2, boot_default=True)


def test_the_tracker_waits_for_the_result_of_a_host_that_went_to_reboot():
    events = []
    track = _Tracker("web-1", events.append, lambda: None)
    for line in [f"state\ttarget\t{NEW}", "phase\tactivate\tboot", "state\tboot-id\tb1", "phase\treboot\tb1"]:
        track.line(line)
    assert track.reboot_from == "b1" and track.rebooting
    for line in ["phase\tbooted\tb2", f"state\tbooted\t{NEW}", "result\tdone\tbooted"]:
        track.line(line)
    assert not track.rebooting and (track.outcome, track.booted) == ("done", NEW)
    assert [e.phase for e in events if isinstance(e, HostPhase)] == ["activate", "reboot", "booted"]


def test_a_host_that_does_not_come_back_fails_with_what_its_guard_does_by_itself(monkeypatch):
    monkeypatch.setattr(engine, "RECONNECT_EVERY", 0.01)

    def unreachable(host, ssh):  # type: ignore[no-untyped-def]
        raise SSHError("web-1 (10.0.0.1): connection refused")

    settings = Settings("boot", "http://cache.invalid", generate_keypair("t")[1], 30, "run-1", reboot=True,
                        reboot_timeout=0.2)
    runner = _HostRunner(settings, None, HostRules(), unreachable, lambda _: None, None, time.monotonic)  # type: ignore[arg-type]
    track = _Tracker("web-1", lambda _: None, lambda: None)
    for line in [f"state\tbefore\t{OLD}", f"state\ttarget\t{NEW}", "phase\treboot\tb1"]:
        track.line(line)

    runner._after_reboot(None, track)  # type: ignore[arg-type]

    assert track.outcome == "failed"
    assert track.reason == (
        "it did not come back from its reboot within 0.2 s (web-1 (10.0.0.1): connection refused); if it boots, its "
        f"topdeck-reboot-guard.service waits 30 s for a confirmation, and without one returns it to {OLD} (and "
        "reboots it); `topdeck status` shows where it ended")
