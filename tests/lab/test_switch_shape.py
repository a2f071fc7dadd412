"""What nixpkgs' real switch-to-configuration does that topdeck meets (issue 25), end to end on a lab of every kind:
host-1 native (this machine's Nix 2.8, no init), host-2 Debian 13 (Nix 2.26) and host-3 Debian sid (Nix 2.34), both
with systemd as PID 1. All three follow pointer `web`.

- a move from the lab's first system onto a NixOS-shaped one (a unit of its own, a switch that waits for its lock)
  and back (its unit stopped and unlinked);
- a lock taken after the host script's own check, held by another switch that lets go: the wait shown, then done;
- a lock held by a process that is no switch and never lets go: stopped after deploy.lock_wait, profile back, one line;
- a failed unit named in the report, ng's words first in the log;
- a dry run of a system with a new init: "would need a reboot", exit 0;
- an external switch program (a stand-in script) run on the systemd hosts with ng's environment;
- the lab's switch itself: ng's checks (the distro, sw/bin) and both lock behaviours.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import time

import pytest
from deploytools import MIXED_KINDS, deploy_inventory, release, state, three_host_lab, topdeck

from topdeck.lab import factory
from topdeck.lab.nixenv import lab_env

HOSTS = tuple(MIXED_KINDS)
SYSTEMD_HOSTS = ("host-2", "host-3")
LOCK = "/run/nixos/switch-to-configuration.lock"
UNIT = "topdeck-lab-demo.service"
LOCK_DELAY = 3  # seconds the waiting switch takes before it takes its lock: the holder takes it first
# ng's summary lines (core/remote/host.sh's SWITCH_WORDS, in short)
NG_WORDS = re.compile(r"^((would )?(stopping|starting|restarting|reloading) the following|warning: the following units"
                      r" failed|Failed to run activate script|Warning: the new NixOS configuration)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("switchshape"), "127.0.52.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    root = deploy_inventory(lab, tmp_path_factory.mktemp("switchshape") / "hosts", confirm_timeout=8)
    host_3 = root / "host-3" / "host.toml"
    host_3.write_text(host_3.read_text().replace('pointer = "db"', 'pointer = "web"'))
    return root


def plain(spec: factory.SystemSpec) -> factory.SystemSpec:
    """The role's system as the lab's first one behaves: activates, a switch that fails at once on a held lock (the
    role's spec file keeps what the last release changed)."""
    return factory.with_switch_lock(factory.with_activation(spec, "ok"), "fail")


def run(inventory, *args: str) -> tuple[int, list[dict], dict[str, dict]]:  # type: ignore[no-untyped-def]
    """`topdeck ARGS --yes --json`: its exit code, its events, and the result's outcome per host."""
    result = topdeck(inventory, *args, "--yes", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["event"] == "DeployResult", result.stdout[-2000:] + result.stderr
    return result.returncode, events, {outcome["host"]: outcome for outcome in events[-1]["outcomes"]}


def logs(events: list[dict], host: str) -> list[str]:
    return [event["text"] for event in events if event["event"] == "LogLine" and event["host"] == host]


def phases(events: list[dict], host: str) -> list[tuple[str, str]]:
    return [(e["phase"], e["detail"]) for e in events if e["event"] == "HostPhase" and e["host"] == host]


def set_lock_wait(inventory, seconds: int) -> None:  # type: ignore[no-untyped-def]
    config = inventory / "topdeck.toml"
    text = re.sub(r"lock_wait = \d+\n", "", config.read_text())
    config.write_text(text.replace("[deploy]\n", f"[deploy]\nlock_wait = {seconds}\n"))


def hold_lock_after_the_check(lab, name: str, program: str, hold: str) -> None:  # type: ignore[no-untyped-def]
    """Start, on host `name`, `program` that takes the switch lock once the next deploy passed its own check (its run's
    env file appears, written after check_switch_lock) and then runs `hold`."""
    script = (f"#!/bin/sh\nbefore=$(ls /run/topdeck/runs/*/env 2>/dev/null)\n"
              f"while [ \"$(ls /run/topdeck/runs/*/env 2>/dev/null)\" = \"$before\" ]; do sleep 0.05; done\n"
              f"echo $$ > /run/lab-held/pid\n{hold}\n")
    lab.host(name).sh(f"mkdir -p /run/nixos /run/lab-held && printf %s {shlex.quote(script)} > {program} && "
                      f"chmod +x {program} && (setsid {program} </dev/null >/dev/null 2>&1 &)")


def test_a_move_from_the_first_system_onto_a_nixos_shaped_one_and_back(lab, inventory):
    first = {name: state(lab, name) for name in HOSTS}
    assert first["host-1"]["generation"] == 1, "the hosts still run the lab's first system"
    shaped = release(inventory, "web", lambda s: factory.with_units(factory.with_switch_lock(s, "wait"), UNIT))

    code, events, outcomes = run(inventory, "deploy")

    assert code == 0, outcomes
    for name in HOSTS:
        host = lab.host(name)
        assert outcomes[name]["outcome"] == "done" and state(lab, name)["current"] == shaped
        assert host.sh("test -d /run/current-system/sw/bin && test -e /run/current-system/etc/fstab && "
                       "test -e /run/current-system/etc/systemd/system/sysinit-reactivation.target && "
                       "test -e /run/current-system/etc/systemd/user/nixos-activation.service && echo shaped"
                       ).strip() == "shaped"
    for name in SYSTEMD_HOSTS:
        host = lab.host(name)
        assert host.sh(f"readlink /etc/systemd/system/{UNIT}").strip() == f"{shaped}/etc/systemd/system/{UNIT}"
        assert host.sh(f"systemctl is-active {UNIT} || true").strip() == "active"
        assert f"starting the following units: {UNIT}" in logs(events, name)

    code, events, outcomes = run(inventory, "rollback", *HOSTS)

    assert code == 0, outcomes
    for name in HOSTS:
        assert outcomes[name]["outcome"] == "done" and state(lab, name)["current"] == first[name]["current"]
    for name in SYSTEMD_HOSTS:
        host = lab.host(name)
        assert host.sh(f"systemctl is-active {UNIT} || true").strip() == "inactive"
        assert host.sh(f"test -e /etc/systemd/system/{UNIT} || test -L /etc/systemd/system/{UNIT} || echo gone"
                       ).strip() == "gone"
        assert f"stopping the following units: {UNIT}" in logs(events, name)


def test_a_lock_taken_after_the_check_is_waited_for_shown_and_then_the_switch_goes_on(lab, inventory):
    set_lock_wait(inventory, 60)
    target = release(inventory, "web", lambda s: factory.with_switch_lock(plain(s), "wait", delay=LOCK_DELAY))
    for name in HOSTS:  # another switch (a program of that name) takes the lock after topdeck's check, and lets go
        # about 4 s after the deploy's switch began to wait for it
        hold_lock_after_the_check(lab, name, "/run/lab-held/switch-to-configuration",
                                  f"exec 8>>{LOCK}; flock 8; sleep {LOCK_DELAY + 4} 8>&-")

    code, events, outcomes = run(inventory, "deploy")

    assert code == 0, outcomes
    seen = {name: [detail for phase, detail in phases(events, name) if phase == "switch-lock"] for name in HOSTS}
    for name in HOSTS:
        assert outcomes[name]["outcome"] == "done" and state(lab, name)["current"] == target, outcomes[name]
        waits = seen[name]
        assert len(waits) == 1, seen
        assert re.fullmatch(r"waiting for the switch lock held by another switch, pid \d+ \(/bin/sh "
                            r"/run/lab-held/switch-to-configuration\)", waits[0]), waits
        assert waits[0] in logs(events, name)
        after = [phase for phase, _ in phases(events, name)]
        assert after[after.index("switch-lock") + 1] == "activate", after  # then the switch goes on


def test_a_holder_that_never_lets_go_is_stopped_after_lock_wait_with_the_profile_back(lab, inventory):
    set_lock_wait(inventory, 3)
    release(inventory, "web", lambda s: factory.with_switch_lock(plain(s), "wait", delay=LOCK_DELAY))
    before = {name: state(lab, name) for name in HOSTS}
    for name in HOSTS:  # a process that is no switch: its command line merely names the lock file
        hold_lock_after_the_check(lab, name, "/run/lab-held/leftover", f"exec flock {LOCK} sleep 600")
    try:
        code, _, outcomes = run(inventory, "deploy")
        left = {name: lab.host(name).sh(
            f"i=$(stat -c %i {LOCK}); grep -c -- \"-> FLOCK.*:$i \" /proc/locks || true").strip() for name in HOSTS}
    finally:
        for name in HOSTS:
            lab.host(name).sh("p=$(cat /run/lab-held/pid); kill $(cat /proc/$p/task/*/children) $p || true")
        set_lock_wait(inventory, 60)

    assert code == 1
    for name in HOSTS:
        reason = outcomes[name]["reason"]
        assert outcomes[name]["outcome"] == "failed" and "\n" not in reason, reason
        assert re.fullmatch(rf"the switch waited 3 s for {LOCK}, held by pid \d+ \((flock {LOCK} )?sleep 600\), "
                            r"which is not a switch; stopped it: nothing was activated, the profile is back",
                            reason), reason
        assert state(lab, name) == before[name]
        assert left[name] == "0", "no switch is left waiting for the lock"


def test_a_failed_unit_is_named_in_the_report_and_ngs_words_come_first(lab, inventory):
    release(inventory, "web", plain)
    run(inventory, "deploy")
    before = {name: state(lab, name) for name in HOSTS}
    release(inventory, "web", lambda s: factory.with_activation(plain(s), "failed-units"))

    code, events, outcomes = run(inventory, "deploy")

    assert code == 1
    for name in HOSTS:
        assert outcomes[name]["outcome"] == "rolled-back" and outcomes[name]["switch_code"] == 4
        assert outcomes[name]["reason"].endswith(": warning: the following units failed: lab-broken.service"), \
            outcomes[name]["reason"]
        assert state(lab, name) == before[name]
        said = logs(events, name)
        first = next(i for i, text in enumerate(said) if NG_WORDS.match(text))
        failed = said.index("warning: the following units failed: lab-broken.service")
        # ng's own lines together, before the rest of the switch's output (systemctl status, the journal's lines)
        assert all(NG_WORDS.match(text) for text in said[first:failed + 1]), said[first:failed + 1]
        noise = [i for i, text in enumerate(said) if "Loaded:" in text or "Active:" in text]
        assert all(i > failed for i in noise), said


def test_a_dry_run_of_a_system_with_a_new_init_would_need_a_reboot(lab, inventory):
    release(inventory, "web", plain)
    run(inventory, "deploy")
    before = {name: state(lab, name) for name in HOSTS}
    release(inventory, "web", lambda s: factory.with_incompatible_init(plain(s)))

    code, events, outcomes = run(inventory, "deploy", "--mode", "dry-activate")

    assert code == 0, outcomes
    for name in HOSTS:
        outcome = outcomes[name]
        assert outcome["outcome"] == "done" and outcome["switch_code"] == 100, outcome
        assert outcome["reason"].startswith("this system would need a reboot (its init differs"), outcome["reason"]
        assert "nothing was changed" in outcome["reason"] and "roll" not in outcome["reason"]
        assert "rollback" not in [phase for phase, _ in phases(events, name)]
        assert state(lab, name) == before[name]


STAND_IN = """#!/bin/sh
# stands in for nixpkgs' switch-to-configuration-ng: records what it was given, then does what a switch does
{ echo "argv $*"; for v in OUT TOPLEVEL DISTRO_ID INSTALL_BOOTLOADER LOCALE_ARCHIVE SYSTEMD; do
    eval "echo $v=\\${$v:-}"; done; } > /run/lab-stand-in.log
case $1 in switch | boot) "$INSTALL_BOOTLOADER" "$TOPLEVEL" || exit 1 ;; esac
case $1 in switch | test) ln -sfn "$TOPLEVEL" /run/lab-next && mv -T /run/lab-next /run/current-system ;; esac
echo "the stand-in switched to $TOPLEVEL"
"""


def test_an_external_switch_program_runs_on_systemd_hosts_with_ngs_environment(lab, inventory, tmp_path, monkeypatch):
    program = tmp_path / "switch-to-configuration"
    program.write_text(STAND_IN)
    program.chmod(0o755)
    monkeypatch.setenv(factory.SWITCH_PROGRAM_VARIABLE, str(program))
    for name in HOSTS:
        lab.host(name).sh("rm -f /run/lab-stand-in.log")

    target = release(inventory, "web", plain)
    code, events, outcomes = run(inventory, "deploy")

    assert code == 0, outcomes
    for name in HOSTS:
        assert outcomes[name]["outcome"] == "done" and state(lab, name)["current"] == target, outcomes[name]
        assert state(lab, name)["boot"] == target
    for name in SYSTEMD_HOSTS:
        recorded = lab.host(name).sh("cat /run/lab-stand-in.log").splitlines()
        assert recorded == ["argv switch", f"OUT={target}", f"TOPLEVEL={target}", "DISTRO_ID=debian",
                            f"INSTALL_BOOTLOADER={target}/bin/lab-install-bootloader",
                            "LOCALE_ARCHIVE=/usr/lib/locale/locale-archive", "SYSTEMD=/usr"], recorded
        assert f"the stand-in switched to {target}" in logs(events, name)
    native = lab.host("host-1")  # no systemd: the lab's own switch
    assert native.sh("test -e /run/lab-stand-in.log || echo none").strip() == "none"
    assert native.sh("tail -n 1 /run/lab/activation.log").strip().split("\t")[1:] == ["switch", target, "ok"]

    monkeypatch.delenv(factory.SWITCH_PROGRAM_VARIABLE)
    release(inventory, "web", plain)
    assert run(inventory, "deploy")[0] == 0


def test_the_switch_checks_as_ng_does_and_meets_a_held_lock_as_its_spec_says(lab, tmp_path):
    first = factory.initial_system(authorized_keys=[lab.client_public_key()])
    variants = {"wait": factory.with_switch_lock(first, "wait"), "fail": factory.with_switch_lock(first, "fail"),
                "nixos": dataclasses.replace(first, distro_id="nixos")}
    built = {name: factory.build(spec, tmp_path) for name, spec in variants.items()}
    for name in HOSTS:
        host = lab.host(name)
        for path in built.values():
            host.import_closure(path, lab_env())

        def switch(toplevel: str, action: str = "test") -> tuple[int, str, float]:
            started = time.monotonic()
            result = host.run([f"{toplevel}/bin/switch-to-configuration", action], check=False)  # noqa: B023
            return result.returncode, result.stderr.decode(), time.monotonic() - started

        assert switch(built["nixos"])[:2] == (1, "This is not a NixOS installation!\n")
        current = host.sh("readlink /run/current-system").strip()
        host.sh("mkdir -p /run/lab-no-sw && ln -sfn /run/lab-no-sw /run/current-system")
        try:
            assert switch(built["fail"])[:2] == (1, "Error: /run/current-system/sw/bin is missing\n")
        finally:
            host.sh(f"ln -sfn {current} /run/current-system")
        host.sh(f"mkdir -p /run/nixos && (setsid flock {LOCK} sleep 3 </dev/null >/dev/null 2>&1 &) && sleep 0.3")
        code, said, took = switch(built["fail"])
        assert (code, said) == (11, "Could not acquire lock\n") and took < 2, (name, took)
        code, said, took = switch(built["wait"])
        assert code == 0 and took >= 2, (name, code, said, took)
        assert host.current_system() == built["wait"]
