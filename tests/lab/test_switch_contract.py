"""The lab's bin/switch-to-configuration follows the contract of NixOS's switch-to-configuration-ng, on a native host
(no init; host-1) and on a Debian 13 host booted with systemd (host-2): actions, exit codes and messages, the lock,
the init-interface check, the bootloader, the activate script, units (a real failed unit and a real restart of
ssh.service on the systemd host), the unit lists, specialisations and dry-activate."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from labtools import ssh_run

from topdeck.lab import factory
from topdeck.lab.hosts import LabHost
from topdeck.lab.lab import Lab
from topdeck.lab.nixenv import lab_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

NATIVE, SYSTEMD = "host-1", "host-2"
HOSTS = [NATIVE, SYSTEMD]
LOCK = "/run/nixos/switch-to-configuration.lock"
LISTS = ("start-list", "restart-list", "reload-list")
INCOMPATIBLE = ("Warning: the new NixOS configuration has an ‘init’ that is\n"
                "incompatible with the current configuration.  The new configuration\n"
                "won't take effect until you reboot the system.\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    lab = Lab(tmp_path_factory.mktemp("switch-lab"), base_address="127.0.25.11", emulator_port=0)
    try:
        lab.up(count=2, kinds={NATIVE: "native", SYSTEMD: "trixie"}, log=lambda *_: None)
        yield lab
    finally:
        lab.down(log=lambda *_: None)


@pytest.fixture(scope="module")
def systems(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The system every host was installed with ("base") and its variants, in both hosts' stores."""
    spec = factory.initial_system(authorized_keys=[lab.client_public_key()])
    other = factory.upgrade(spec, "openssl", "3.0.14")
    sshd = factory.with_sshd_settings(other, "ClientAliveInterval 42")
    variants = {
        "base": spec,
        "other": other,
        "fail": factory.with_activation(other, "fail"),
        "incompatible": factory.with_incompatible_init(other),
        "failed-units": factory.with_activation(other, "failed-units"),
        "sshd": sshd,
        "slow-sshd": factory.with_activation(factory.with_sshd_settings(other, "ClientAliveInterval 43"), "slow",
                                             slow_seconds=2),
        "specialised": factory.with_specialisation(factory.with_specialisation(other, "rescue"), "broken",
                                                   "failed-units"),
    }
    workdir = tmp_path_factory.mktemp("switch-systems")
    built = {name: factory.build(variant, workdir) for name, variant in variants.items()}
    assert built["base"] == lab.build_initial_toplevel()
    for name in HOSTS:
        for path in built.values():
            lab.host(name).import_closure(path, lab_env())
    return built


def switch(host: LabHost, toplevel: str, *args: str, env: str = "") -> tuple[int, str, str]:
    """Run TOPLEVEL/bin/switch-to-configuration ARGS as root on the host: (exit code, stdout, stderr)."""
    script = f"{env} {toplevel}/bin/switch-to-configuration {' '.join(args)}".strip()
    result = host.run(["/bin/sh", "-c", script], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def state(host: LabHost) -> dict[str, str]:
    return {"current": host.current_system(), "boot": host.sh("readlink /run/lab/boot-entry || true").strip()}


def last_log(host: LabHost) -> list[str]:
    return host.sh("tail -n 1 /run/lab/activation.log").strip().split("\t")


def run_dir(host: LabHost) -> list[str]:
    return sorted(host.sh("ls -A /run/nixos").split())


def main_pid(host: LabHost) -> int:
    return int(host.sh("systemctl show --property=MainPID --value ssh.service").strip())


@pytest.fixture
def on_base(lab: Lab, systems: dict[str, str]):  # type: ignore[no-untyped-def]
    """Both hosts run and boot the base system before the test and after it."""
    def back() -> None:
        for name in HOSTS:
            code, _, err = switch(lab.host(name), systems["base"], "switch")
            assert code == 0, f"{name}: {err}"
            assert state(lab.host(name)) == {"current": systems["base"], "boot": systems["base"]}
    back()
    yield
    back()
    lab.host(SYSTEMD).start_sshd()  # the lab's record of the sshd pid, in case a test restarted ssh.service


# --- exit 1, and the order of the checks ---------------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_a_missing_or_unknown_action_prints_the_usage_and_exits_1(lab, systems, on_base, name):
    host = lab.host(name)
    for args in [(), ("reboot",), ("--switch",)]:
        code, out, err = switch(host, systems["other"], *args)
        assert code == 1 and out == ""
        assert err.startswith("Usage: switch-to-configuration [check|switch|boot|test|dry-activate]\n")
        assert last_log(host)[3] == "failed"
    assert state(host) == {"current": systems["base"], "boot": systems["base"]}


@pytest.mark.parametrize("name", HOSTS)
def test_it_must_be_run_as_root(lab, systems, on_base, name):
    host = lab.host(name)
    code, _, err = switch(host, systems["other"], "switch", env="setpriv --reuid=65534 --regid=65534 --clear-groups")
    assert code == 1
    assert err.strip() == "Error: switch-to-configuration must be run as the root user"
    assert state(host) == {"current": systems["base"], "boot": systems["base"]}


# --- the lock: exit 11 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_a_held_lock_exits_11_and_changes_nothing(lab, systems, on_base, name):
    host = lab.host(name)
    # Another process holds the lock (an exclusive flock on its own open file), as a running switch would.
    holder = host.sh(f"mkdir -p /run/nixos && sh -c 'exec 9>>{LOCK} && flock 9 && exec sleep 300' "
                     ">/dev/null 2>&1 </dev/null & echo $!").strip()
    try:
        deadline = time.monotonic() + 10
        while host.run(["flock", "-n", LOCK, "true"], check=False).returncode == 0:
            assert time.monotonic() < deadline, "the lock holder did not take the lock"
            time.sleep(0.05)
        for action in ("switch", "test", "boot", "dry-activate", "check"):
            code, _, err = switch(host, systems["other"], action)
            assert (code, err) == (11, "Could not acquire lock\n"), action
            assert last_log(host)[1:] == [action, systems["other"], "locked"]
        assert state(host) == {"current": systems["base"], "boot": systems["base"]}
    finally:
        host.sh(f"kill {holder}")
    deadline = time.monotonic() + 10
    while host.run(["flock", "-n", LOCK, "true"], check=False).returncode != 0:
        assert time.monotonic() < deadline, "the lock was not released"
        time.sleep(0.05)
    assert host.sh("stat -c %a /run/nixos").strip() == "755"
    assert switch(host, systems["other"], "switch")[0] == 0
    assert state(host) == {"current": systems["other"], "boot": systems["other"]}


# --- check, boot, the bootloader -----------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_check_and_boot_exit_0_and_the_bootloader_records_an_install(lab, systems, on_base, name):
    host = lab.host(name)
    assert switch(host, systems["other"], "check")[0] == 0
    assert state(host) == {"current": systems["base"], "boot": systems["base"]}

    code, out, _ = switch(host, systems["other"], "boot")
    assert code == 0 and "installing" not in out
    assert state(host) == {"current": systems["base"], "boot": systems["other"]}
    assert host.sh("tail -n 1 /run/lab/bootloader.log").split("\t")[1:] == [systems["other"], "update\n"]

    code, out, _ = switch(host, systems["other"], "boot", env="NIXOS_INSTALL_BOOTLOADER=1")
    assert code == 0 and "installing the lab's boot loader" in out
    assert host.sh("tail -n 1 /run/lab/bootloader.log").split("\t")[1:] == [systems["other"], "install\n"]
    assert last_log(host)[1:] == ["boot", systems["other"], "ok"]


# --- exit 100: an incompatible init --------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_an_incompatible_init_exits_100_after_the_bootloader_and_activates_nothing(lab, systems, on_base, name):
    host = lab.host(name)
    incompatible = systems["incompatible"]
    for action in ("test", "dry-activate"):
        code, _, err = switch(host, incompatible, action)
        assert code == 100 and err.startswith(INCOMPATIBLE), err
        assert state(host) == {"current": systems["base"], "boot": systems["base"]}

    code, _, err = switch(host, incompatible, "switch")

    assert code == 100 and err.startswith(INCOMPATIBLE)
    assert "activating the configuration" not in err
    assert state(host) == {"current": systems["base"], "boot": incompatible}  # the bootloader went first
    assert last_log(host)[1:] == ["switch", incompatible, "reboot-needed"]
    assert run_dir(host) == ["switch-to-configuration.lock"]


# --- exit 2: a failing activate script -------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_a_failing_activate_script_exits_2_and_the_switch_goes_on(lab, systems, on_base, name):
    host = lab.host(name)
    fail = systems["fail"]

    code, _, err = switch(host, fail, "switch")

    assert code == 2
    assert "Activation script snippet 'lab-fail' failed" in err and "Failed to run activate script" in err
    assert state(host) == {"current": fail, "boot": fail}  # the script moved the link before it failed
    assert last_log(host)[1:] == ["switch", fail, "activation-failed"]
    assert run_dir(host) == ["switch-to-configuration.lock"]


# --- exit 4: a unit that fails ------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_a_unit_that_fails_to_start_exits_4(lab, systems, on_base, name):
    host = lab.host(name)
    broken = systems["failed-units"]

    code, _, err = switch(host, broken, "switch")

    assert code == 4, err
    assert "starting the following units: lab-broken.service" in err
    assert "Failed to start lab-broken.service" in err
    assert "warning: the following units failed: lab-broken.service" in err
    assert state(host) == {"current": broken, "boot": broken}
    assert last_log(host)[1:] == ["switch", broken, "units-failed"]
    assert run_dir(host) == ["switch-to-configuration.lock"]
    if name == SYSTEMD:  # a real unit, which systemd saw fail
        assert host.run(["systemctl", "is-failed", "lab-broken.service"], check=False).stdout == b"failed\n"
        assert "lab-broken.service" in host.sh("systemctl list-units --state=failed --no-legend --plain")
        # The next switch forgets failed units (systemctl reset-failed, as ng does) and starts no broken one.
        assert switch(host, systems["base"], "switch")[0] == 0
        assert host.run(["systemctl", "is-failed", "lab-broken.service"], check=False).stdout != b"failed\n"
        assert host.sh("systemctl list-units --state=failed --no-legend --plain").strip() == ""


# --- exit 0: the lists, dry-activate, specialisations --------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_a_switch_writes_the_unit_lists_while_it_works_and_removes_them(lab, systems, on_base, name):
    host = lab.host(name)
    target = systems["slow-sshd"]  # an activation of 2 s, and (on the systemd host) an sshd to restart after it
    seen: dict[str, str] = {}
    result: list[tuple[int, str, str]] = []
    worker = threading.Thread(target=lambda: result.append(switch(host, target, "switch")))
    worker.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        listing = run_dir(host)
        if all(list_name in listing for list_name in LISTS):
            seen = {list_name: host.sh(f"cat /run/nixos/{list_name}") for list_name in LISTS}
        time.sleep(0.05)
    worker.join(60)

    assert result and result[0][0] == 0, result
    assert seen == {"start-list": "", "reload-list": "",
                    "restart-list": "ssh.service\n" if name == SYSTEMD else ""}
    assert run_dir(host) == ["switch-to-configuration.lock"]
    assert state(host) == {"current": target, "boot": target}
    assert last_log(host)[1:] == ["switch", target, "ok"]


@pytest.mark.parametrize("name", HOSTS)
def test_the_next_switch_handles_what_an_interrupted_one_left_in_the_lists(lab, systems, on_base, name):
    host = lab.host(name)
    host.sh("printf 'lab-broken.service\\n' > /run/nixos/start-list")  # only the failed-units system starts it
    if name == SYSTEMD:
        host.sh("printf 'ssh.service\\n' > /run/nixos/restart-list")
        before = main_pid(host)

    code, _, err = switch(host, systems["other"], "switch")

    assert code == 0, err
    assert "lab-broken" not in err
    if name == SYSTEMD:
        assert "restarting the following units: ssh.service" in err
        assert main_pid(host) not in (0, before)
    assert run_dir(host) == ["switch-to-configuration.lock"]


@pytest.mark.parametrize("name", HOSTS)
def test_dry_activate_says_what_it_would_do_and_changes_nothing(lab, systems, on_base, name):
    host = lab.host(name)
    pid = main_pid(host) if name == SYSTEMD else host.state.sshd_pid
    listing = host.sh("ls -lA --time-style=+%s%N /run/nixos /run/lab | grep -v activation.log")

    code, out, err = switch(host, systems["sshd"], "dry-activate")

    assert code == 0, err
    assert out == f"would switch /run/current-system from {systems['base']} to {systems['sshd']}\n"
    assert "would activate the configuration..." in err
    assert ("would restart the following units: ssh.service" in err) == (name == SYSTEMD)
    assert state(host) == {"current": systems["base"], "boot": systems["base"]}
    assert host.sh("ls -lA --time-style=+%s%N /run/nixos /run/lab | grep -v activation.log") == listing
    assert (main_pid(host) if name == SYSTEMD else host.state.sshd_pid) == pid
    assert last_log(host)[1:] == ["dry-activate", systems["sshd"], "ok"]


@pytest.mark.parametrize("name", HOSTS)
def test_a_specialisation_switches_to_its_own_toplevel(lab, systems, on_base, name):
    host = lab.host(name)
    parent = systems["specialised"]
    rescue = host.sh(f"readlink {parent}/specialisation/rescue").strip()
    broken = host.sh(f"readlink {parent}/specialisation/broken").strip()
    assert len({parent, rescue, broken}) == 3

    code, _, err = switch(host, f"{parent}/specialisation/rescue", "switch")

    assert code == 0, err
    assert state(host) == {"current": rescue, "boot": rescue}
    assert last_log(host)[1:] == ["switch", rescue, "ok"]
    assert host.sh("cat /run/current-system/nixos-version") == factory.DEFAULT_VERSION
    code, _, _ = switch(host, f"{parent}/specialisation/broken", "test")
    assert code == 4 and state(host) == {"current": broken, "boot": rescue}


# --- ssh.service: restarted for real when its settings change ------------------------------------------


def test_a_changed_sshd_fragment_restarts_ssh_service_and_logins_still_work(lab, systems, on_base):
    host = lab.host(SYSTEMD)
    before = main_pid(host)
    assert before > 0

    # Through an SSH login, as an operator would: the restart must neither kill this session nor lock anyone out.
    code, out, err = ssh_run(lab, SYSTEMD, f"{systems['sshd']}/bin/switch-to-configuration switch; echo exit=$?")

    assert out.strip().endswith("exit=0"), err
    assert "restarting the following units: ssh.service" in err
    after = main_pid(host)
    assert after > 0 and after != before
    assert host.sh("systemctl is-active ssh.service").strip() == "active"
    assert ssh_run(lab, SYSTEMD, "readlink /run/current-system") == (0, systems["sshd"] + "\n", "")
    # The same fragment again: nothing to restart.
    code, _, err = switch(host, systems["sshd"], "test")
    assert code == 0 and "restarting" not in err and main_pid(host) == after
    # Back to the base system, whose fragment differs again: restarted again, and logins still work.
    code, _, err = switch(host, systems["base"], "switch")
    assert code == 0 and "restarting the following units: ssh.service" in err
    assert main_pid(host) not in (0, after)
    assert ssh_run(lab, SYSTEMD, "readlink /run/current-system") == (0, systems["base"] + "\n", "")


def test_a_native_host_has_no_units_to_restart(lab, systems, on_base):
    host = lab.host(NATIVE)
    sshd = host.state.sshd_pid

    code, _, err = switch(host, systems["sshd"], "switch")

    assert code == 0 and "restarting" not in err
    assert host.state.sshd_pid == sshd and Path(f"/proc/{sshd}").exists()
    assert ssh_run(lab, NATIVE, "readlink /run/current-system") == (0, systems["sshd"] + "\n", "")
