"""End-to-end tests of the activation on systemd hosts and on hosts without an init, on a mixed lab of their own.

host-1 is native (no init: the activation runs in a session of its own), host-2 Debian 13 and host-3 Debian sid
(systemd as PID 1: the activation and the magic-rollback watcher run as transient units, as nixos-rebuild runs
switch-to-configuration). All three follow pointer `web`, so one release reaches every kind.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time

import pytest
from deploytools import MIXED_KINDS, deploy, deploy_inventory, release, state, three_host_lab, topdeck

from topdeck.core.events import HostPhase
from topdeck.core.inventory import load_inventory
from topdeck.core.operations import deploy_fleet, plan_fleet
from topdeck.lab import factory

CONFIRM_TIMEOUT = 8
HOSTS = tuple(MIXED_KINDS)
SYSTEMD_HOSTS = ("host-2", "host-3")
LOCK = "/run/nixos/switch-to-configuration.lock"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("activationlab"), "127.0.26.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    root = deploy_inventory(lab, tmp_path_factory.mktemp("activation") / "hosts", CONFIRM_TIMEOUT)
    host_3 = root / "host-3" / "host.toml"
    host_3.write_text(host_3.read_text().replace('pointer = "db"', 'pointer = "web"'))
    deploy(root)
    return root


def next_web(inventory, kind: str = "ok", **options) -> str:  # type: ignore[no-untyped-def]
    return release(inventory, "web", lambda s: factory.with_activation(
        factory.upgrade(s, "web-app", f"7.{time.time_ns()}"), kind, **options))


def test_on_systemd_hosts_the_activation_and_its_watcher_are_units_kept_in_the_journal(lab, inventory):
    web = next_web(inventory)

    result, _, outcomes = deploy(inventory)

    assert result.returncode == 0, result.stdout[-2000:]
    run = json.loads(result.stdout.splitlines()[-1])["run_id"]
    for name in HOSTS:
        assert state(lab, name)["current"] == web and outcomes[name]["outcome"] == "done"
        assert outcomes[name]["switch_code"] == 0 and outcomes[name]["switch_meaning"] == "activated"
    for name in SYSTEMD_HOSTS:
        journal = lab.host(name).sh(f"journalctl --no-pager -o cat -u topdeck-activate-{run} -u topdeck-watch-{run}")
        assert "phase\tactivate\tswitch" in journal and "phase\tconfirmed" in journal, journal
        # Transient units, collected once they ended.
        assert lab.host(name).sh(f"systemctl show -p LoadState --value topdeck-activate-{run}").strip() == "not-found"
    native = lab.host("host-1").sh("cat /proc/1/comm").strip()
    assert native != "systemd"


def test_a_session_cut_mid_switch_with_kill_user_processes_and_a_sudo_user_still_completes(lab, inventory):
    """logind kills whatever a closed session left when KillUserProcesses=yes: the switch must not be in it."""
    host = lab.host("host-2")
    host.sh("mkdir -p /etc/systemd/logind.conf.d && printf '[Login]\\nKillUserProcesses=yes\\n' "
            "> /etc/systemd/logind.conf.d/kill.conf && systemctl restart systemd-logind")
    assert host.sh("busctl get-property org.freedesktop.login1 /org/freedesktop/login1 "
                   "org.freedesktop.login1.Manager KillUserProcesses").strip() == "b true"
    host_file = inventory / "host-2" / "host.toml"
    original = host_file.read_text()
    host_file.write_text('user = "topdeck-deployer"\nsudo = true\n' + original)
    web = next_web(inventory, "slow", slow_seconds=3)
    inv = load_inventory(inventory)
    cut = threading.Event()

    def emit(event) -> None:  # type: ignore[no-untyped-def]
        if isinstance(event, HostPhase) and event.host == "host-2" and event.phase == "activate" and not cut.is_set():
            cut.set()
            lab.stop_host("host-2")  # every SSH session ends: logind kills what they left
            threading.Timer(1.0, lab.start_host, ["host-2"]).start()

    try:
        result = deploy_fleet(inv, plan_fleet(inv, ["host-2"]), emit=emit)
    finally:
        host_file.write_text(original)
        host.sh("rm /etc/systemd/logind.conf.d/kill.conf && systemctl restart systemd-logind")
    assert cut.is_set(), result.outcomes  # the host reached its activation, where its sessions were cut
    [outcome] = result.outcomes
    assert outcome.outcome == "done", outcome
    after = state(lab, "host-2")
    assert after["current"] == after["profile"] == after["boot"] == web


@pytest.mark.parametrize("holder", ["switch", "stale"])
@pytest.mark.parametrize("name", ["host-1", "host-2"])
def test_a_held_switch_lock_stops_the_deploy_and_is_never_deleted(lab, inventory, holder, name):
    deploy(inventory, "--on", name)
    before = state(lab, name)
    next_web(inventory)
    host = lab.host(name)
    # The deploy's own switch may still be ending (its services, its lock) for a moment after its result.
    deadline = time.monotonic() + 30
    while host.sh(f"flock -n {LOCK} true && echo free || echo held", check=False).strip() != "free":
        assert time.monotonic() < deadline, host.sh(f"ls -l /proc/[0-9]*/fd 2>/dev/null | grep {LOCK}", check=False)
        time.sleep(0.2)
    # A running switch (a program of that name holding the lock), or a process that is no switch holding it.
    program = "/run/lab-held/switch-to-configuration" if holder == "switch" else "/run/lab-held/leftover"
    script = f"#!/bin/sh\necho $$ > /run/lab-held/pid\nexec 8>>{LOCK}\nflock 8\nsleep 60 8>&-\n"
    host.sh(f"mkdir -p /run/nixos /run/lab-held && printf %s {shlex.quote(script)} > {program} && chmod +x {program}"
            f" && (setsid {program} </dev/null >/dev/null 2>&1 &)")
    deadline = time.monotonic() + 30  # until the holder has the lock (a busy machine may take more than a moment)
    while host.sh(f"flock -n {LOCK} true && echo free || echo held", check=False).strip() != "held":
        assert time.monotonic() < deadline, "the holder did not take the lock"
        time.sleep(0.1)
    try:
        result, _, outcomes = deploy(inventory, "--on", name)
        still_held = host.sh(f"flock -n {LOCK} true && echo free || echo held").strip()
    finally:
        host.sh("kill $(cat /run/lab-held/pid)")
    assert result.returncode == 1
    reason = outcomes[name]["reason"]
    if holder == "switch":
        assert f"busy: another switch holds {LOCK}" in reason and program in reason, reason
    else:
        assert f"stale switch lock: {LOCK} is held by pid" in reason and "which is not a switch" in reason, reason
    assert reason.endswith("nothing was changed")
    assert state(lab, name) == before
    assert still_held == "held" and host.sh(f"test -e {LOCK} && echo kept").strip() == "kept"
    status = json.loads(topdeck(inventory, "status", "--on", name, "--json").stdout)
    assert status[0]["status"] != "deploying"


@pytest.mark.alone  # its switch, in a mount namespace of this machine, is seen by every native host's process scan
def test_a_switch_in_another_mount_namespace_is_not_the_holder(lab, inventory, tmp_path):
    """The native host shares this machine's process list: a switch of another container (here, a mount namespace
    with its own /run) holding its own lock at the same path must not be named as this host's holder."""
    import subprocess

    name = "host-1"
    deploy(inventory, "--on", name)
    next_web(inventory)
    host = lab.host(name)
    deadline = time.monotonic() + 30
    while host.sh(f"flock -n {LOCK} true && echo free || echo held", check=False).strip() != "free":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    elsewhere = tmp_path / "switch-to-configuration"
    ready = tmp_path / "ready"
    elsewhere.write_text(f"#!/bin/sh\nmkdir -p /run/nixos\nexec 8>>{LOCK}\nflock 8\ntouch {ready}\nsleep 60 8>&-\n")
    elsewhere.chmod(0o755)
    other = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f"mount -t tmpfs other-container /run && exec {elsewhere}"], start_new_session=True)
    script = f"#!/bin/sh\necho $$ > /run/lab-held/pid\nexec 8>>{LOCK}\nflock 8\nsleep 60 8>&-\n"
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and other.poll() is None, "the other namespace's switch did not start"
            time.sleep(0.1)
        host.sh(f"mkdir -p /run/nixos /run/lab-held && printf %s {shlex.quote(script)} > /run/lab-held/leftover"
                " && chmod +x /run/lab-held/leftover && (setsid /run/lab-held/leftover </dev/null >/dev/null 2>&1 &)")
        while host.sh(f"flock -n {LOCK} true && echo free || echo held", check=False).strip() != "held":
            assert time.monotonic() < deadline, "the holder did not take the lock"
            time.sleep(0.1)
        result, _, outcomes = deploy(inventory, "--on", name)
    finally:
        host.sh("kill $(cat /run/lab-held/pid)", check=False)
        os.killpg(other.pid, signal.SIGTERM)
        other.wait(10)
    reason = outcomes[name]["reason"]
    assert result.returncode == 1
    assert f"stale switch lock: {LOCK} is held by pid" in reason and "which is not a switch" in reason, reason


def test_an_incompatible_init_is_installed_as_the_boot_default_and_not_rolled_back(lab, inventory):
    deploy(inventory)
    before = {name: state(lab, name) for name in HOSTS}
    web = next_web(inventory, "incompatible-init")

    result, _, outcomes = deploy(inventory)

    assert result.returncode == 0, result.stdout[-2000:]
    for name in HOSTS:
        after = state(lab, name)
        assert after["current"] == before[name]["current"], "nothing was activated"
        assert after["profile"] == after["boot"] == web, "the new system is the boot default"
        assert after["generation"] == before[name]["generation"] + 1
        outcome = outcomes[name]
        assert outcome["outcome"] == "done" and outcome["switch_code"] == 100
        assert "as the boot default; it takes effect after a reboot" in outcome["reason"]
        assert outcome["switch_meaning"].startswith("the new init is incompatible")
    next_web(inventory)  # a compatible system again, for the tests after this one
    deploy(inventory)


@pytest.mark.parametrize("choice", ["rollback", "keep"])
def test_failed_units_roll_back_or_stay_as_the_setting_says(lab, inventory, choice):
    deploy(inventory)
    before = {name: state(lab, name) for name in HOSTS}
    config = inventory / "topdeck.toml"
    original = config.read_text()
    config.write_text(original.replace("[deploy]\n", f'[deploy]\non_failed_units = "{choice}"\n'))
    try:
        web = next_web(inventory, "failed-units")
        result, _, outcomes = deploy(inventory)
    finally:
        config.write_text(original)

    for name in HOSTS:
        assert outcomes[name]["switch_code"] == 4, outcomes[name]
        after = state(lab, name)
        if choice == "rollback":
            assert outcomes[name]["outcome"] == "rolled-back" and "units failed" in outcomes[name]["reason"]
            assert after == before[name]
        else:
            assert outcomes[name]["outcome"] == "done" and "units failed to start (kept" in outcomes[name]["reason"]
            assert after["current"] == after["profile"] == web
    assert result.returncode == (1 if choice == "rollback" else 0)
    next_web(inventory)
    deploy(inventory)


def test_a_switch_that_restarts_sshd_completes_and_is_confirmed(lab, inventory):
    deploy(inventory)
    pids = {name: _sshd_main_pid(lab, name) for name in SYSTEMD_HOSTS}
    web = release(inventory, "web", lambda s: factory.with_sshd_settings(
        factory.upgrade(s, "web-app", f"7.{time.time_ns()}"), f"# lab setting {time.time_ns()}"))

    result, _, outcomes = deploy(inventory)

    assert result.returncode == 0, result.stdout[-2000:]
    for name in HOSTS:
        assert outcomes[name]["outcome"] == "done" and state(lab, name)["current"] == web
    for name in SYSTEMD_HOSTS:
        assert _sshd_main_pid(lab, name) != pids[name], f"{name}: the switch restarted ssh.service"


def _sshd_main_pid(lab, name: str) -> str:  # type: ignore[no-untyped-def]
    return lab.host(name).sh("systemctl show --property=MainPID --value ssh.service").strip()
