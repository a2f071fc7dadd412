"""End-to-end tests of the lab's host kinds: image hosts booted with systemd as PID 1 beside a native host.

A lab of its own on 127.0.23.x: host-1 native, host-2 Debian 13 (Nix 2.26), host-3 Debian sid (Nix 2.34), started
and stopped through the real `topdeck lab` commands.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
from labtools import connect, ssh_run

from topdeck.lab import images
from topdeck.lab.hosts import listener, listeners
from topdeck.lab.lab import Lab
from topdeck.lab.nixenv import lab_env

BASE = "127.0.23.11"
KINDS = {"host-1": "native", "host-2": "trixie", "host-3": "sid"}
NIX_SERIES = {"native": None, "trixie": "2.26.", "sid": "2.34."}


def topdeck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topdeck.cli", *args], capture_output=True, text=True,
                          timeout=600, env=lab_env())


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagelab")
    up = topdeck("lab", "--root", str(root), "up", "--hosts", "3", "--base-address", BASE, "--emulator-port", "0",
                 "--image", "host-2=trixie", "--image", "host-3=sid")
    assert up.returncode == 0, up.stderr
    try:
        yield root
    finally:
        topdeck("lab", "--root", str(root), "down")


@pytest.fixture(scope="module")
def lab(lab_root):
    return Lab(lab_root)


def test_lab_images_lists_what_each_kind_has(lab):
    result = topdeck("lab", "images", "--json")
    assert result.returncode == 0, result.stderr
    listed = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert set(listed) == {"native", "trixie", "sid"}
    native_nix = subprocess.run(["nix-store", "--version"], capture_output=True, text=True).stdout.split()[-1]
    assert listed["native"]["nix"] == native_nix and listed["native"]["systemd"] == ""
    for name in ("trixie", "sid"):
        assert listed[name]["state"] == "ready"
        assert listed[name]["nix"].startswith(NIX_SERIES[name]) and listed[name]["systemd"] and listed[name]["openssh"]
    # What the listing says is what a host of that kind runs.
    for host, kind in KINDS.items():
        version = lab.host(host).sh("nix-store --version").split()[-1]
        assert listed[kind]["nix"].startswith(version), (host, version, listed[kind]["nix"])


def test_lab_status_names_each_host_kind(lab_root):
    status = json.loads(topdeck("lab", "--root", str(lab_root), "status", "--json").stdout)
    assert status["up"]
    assert {h["name"]: h["image"] for h in status["hosts"]} == KINDS
    assert all(h["generation"] == 1 and h["current_system"] for h in status["hosts"])


@pytest.mark.parametrize("host", ["host-2", "host-3"])
def test_image_hosts_run_systemd_as_pid_1_and_sshd_as_its_unit(lab, host):
    code, out, err = ssh_run(lab, host, "cat /proc/1/comm; systemctl is-system-running; "
                             "systemctl is-active systemd-journald.service systemd-logind.service ssh.service; "
                             "grep ^0:: /proc/$(systemctl show --property=MainPID --value ssh.service)/cgroup; "
                             "grep ^0:: /proc/self/cgroup")
    assert code == 0, err
    lines = out.split()
    assert lines[0] == "systemd"
    assert lines[1] in ("running", "degraded")
    assert lines[2:5] == ["active", "active", "active"]
    assert lines[5].endswith("/system.slice/ssh.service")
    assert "/user.slice/" in lines[6] and "session-" in lines[6], "the login is a logind session"
    # Nix on the host is the image's, not this machine's.
    assert ssh_run(lab, host, "nix --version")[1].split()[-1].startswith(NIX_SERIES[KINDS[host]])


@pytest.mark.parametrize("host", ["host-2", "host-3"])
def test_image_hosts_have_their_own_store_run_and_pinned_key(lab, host, tmp_path):
    marker = f"/nix/var/marker-{host}"
    lab.host(host).sh(f"touch {marker}")
    assert (lab.root / "hosts" / host / marker.removeprefix("/")).exists(), "/nix is the host's own folder"
    others = [name for name in KINDS if name != host]
    assert all(lab.host(name).sh(f"test -e {marker} && echo yes || echo no").strip() == "no" for name in others)
    # The operator's key comes through /run/current-system, as on native hosts.
    assert ssh_run(lab, host, "readlink /run/current-system")[1].strip() == lab.host(host).current_system()
    other_key = tmp_path / "known_hosts"
    other_key.write_text(f"{lab.host(host).address} {lab.host('host-1').public_host_key()}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(lab, host, known_hosts=other_key)


@pytest.mark.parametrize("host", ["host-2", "host-3"])
def test_stop_host_cuts_sessions_and_start_host_brings_it_back(lab_root, lab, host):
    session = connect(lab, host)
    before = (lab.host(host).current_system(), lab.host(host).generation())
    try:
        assert topdeck("lab", "--root", str(lab_root), "stop-host", host).returncode == 0
        address = lab.host(host).address
        assert not listener(address, 22)
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            session.exec_command("true", timeout=5)[1].read()
    finally:
        session.close()
    assert topdeck("lab", "--root", str(lab_root), "start-host", host).returncode == 0
    restarted = Lab(lab_root).host(host)
    assert restarted.sshd_running()
    assert (restarted.current_system(), restarted.generation()) == before
    assert ssh_run(lab, host, "systemctl is-active ssh.service")[1].strip() == "active"


def test_a_small_slow_image_host(tmp_path):
    lab = Lab(tmp_path / "lab", base_address="127.0.23.31", emulator_port=0)
    try:
        lab.up(count=1, image="sid", small_nix={"host-1": 64 * 1024 * 1024}, log=lambda *_: None)
        host = lab.host("host-1")
        assert host.sh("cat /proc/1/comm").strip() == "systemd"
        size_kib = int(host.sh("df -k --output=size /nix | tail -1"))
        assert 60 * 1024 <= size_kib <= 64 * 1024
        assert host.generation() == 1
        lab.set_slow("host-1", 20)
        group = host._cgroup()  # /sys/fs/cgroup/cpu/topdeck-lab-127.0.23.31-n<this network namespace>
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "20000"
        procs = (group / "cgroup.procs").read_text().split()
        assert {str(host.state.anchor_pid), str(host.state.sshd_pid)} <= set(procs)
        lab.rotate_host_key("host-1")
        with pytest.raises(paramiko.BadHostKeyException):
            connect(lab, "host-1")
    finally:
        lab.down(log=lambda *_: None)
    assert not group.exists()


def test_lab_down_leaves_nothing_running_mounted_or_listening(tmp_path):
    root = tmp_path / "lab"
    up = topdeck("lab", "--root", str(root), "up", "--hosts", "2", "--base-address", "127.0.23.41",
                 "--emulator-port", "0", "--image", "trixie", "--image", "host-2=sid")
    assert up.returncode == 0, up.stderr
    state = json.loads((root / "state.json").read_text())
    pids = [h[key] for h in state["hosts"] for key in ("anchor_pid", "sshd_pid", "boot_pid")]
    assert all(pids)

    down = topdeck("lab", "--root", str(root), "down")

    assert down.returncode == 0, down.stderr
    assert all(_dead(pid) for pid in pids)
    assert not [pid for pid in _pids() if str(root).encode() in _read(f"/proc/{pid}/cmdline")]
    assert not [pid for pid in _pids() if str(root).encode() in _read(f"/proc/{pid}/mountinfo")]
    assert not {"127.0.23.41", "127.0.23.42"} & set(listeners(22))
    for hierarchy in ("systemd", "unified", "cpu"):
        assert not list(Path(f"/sys/fs/cgroup/{hierarchy}").glob("topdeck-lab-127.0.23.4*"))


def test_lab_up_refuses_an_address_held_by_another_process(tmp_path):
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.23.51", 22))
    squatter.listen()
    try:
        up = topdeck("lab", "--root", str(tmp_path / "lab"), "up", "--hosts", "1", "--base-address", "127.0.23.51",
                     "--emulator-port", "0")
    finally:
        squatter.close()
    assert up.returncode == 1
    assert up.stderr.count("\n") == 1 and "Traceback" not in up.stderr
    assert f"127.0.23.51:22 is held by pid {os.getpid()}" in up.stderr
    assert not (tmp_path / "lab" / "state.json").exists(), "nothing was started"


def test_a_lab_that_forgot_its_hosts_is_not_fooled_and_down_stops_them(tmp_path):
    """The case seen by a new user: sshds of an earlier lab answer on the hosts' addresses."""
    root = tmp_path / "lab"
    assert topdeck("lab", "--root", str(root), "up", "--hosts", "1", "--base-address", "127.0.23.61",
                   "--emulator-port", "0").returncode == 0
    old_sshd = listener("127.0.23.61", 22)
    (root / "state.json").unlink()  # the lab forgets its host; its sshd still answers on port 22

    up = topdeck("lab", "--root", str(root), "up", "--hosts", "1", "--base-address", "127.0.23.61",
                 "--emulator-port", "0")
    assert up.returncode == 1
    assert f"127.0.23.61:22 is held by pid {old_sshd} (" in up.stderr and "sshd" in up.stderr

    down = topdeck("lab", "--root", str(root), "down")
    assert down.returncode == 0, down.stderr
    assert not listener("127.0.23.61", 22) and _dead(old_sshd)
    assert not [pid for pid in _pids() if str(root).encode() in _read(f"/proc/{pid}/mountinfo")]
    assert topdeck("lab", "--root", str(root), "up", "--hosts", "1", "--base-address", "127.0.23.61",
                   "--emulator-port", "0").returncode == 0
    assert topdeck("lab", "--root", str(root), "down").returncode == 0


def test_an_unknown_image_is_one_line(tmp_path):
    result = topdeck("lab", "--root", str(tmp_path), "up", "--image", "bookworm")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "'bookworm' is no host image; choose from native, trixie, sid" in result.stderr
    assert images.known_kinds() == ("native", "trixie", "sid")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True
