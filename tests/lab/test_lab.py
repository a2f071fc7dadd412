"""End-to-end tests of the lab itself: real sshd hosts in mount namespaces, real Nix, the B2 emulator over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import paramiko
import pytest
from b2sdk.v2 import B2Api, InMemoryAccountInfo
from labtools import connect, ssh_run, substitute

from topdeck.lab import factory
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.nixenv import lab_env


def test_each_host_answers_ssh_with_its_pinned_key_and_runs_generation_1(lab):
    systems = set()
    for name, host in lab.hosts.items():
        code, out, _ = ssh_run(lab, name, "readlink /run/current-system; readlink /nix/var/nix/profiles/system; "
                                          "readlink /run/booted-system")
        current, profile, booted = out.split()
        assert code == 0
        assert current == booted == host.current_system()
        assert profile == "system-1-link"
        assert "nixos-system" in current
        systems.add(current)
    assert len(systems) == 1, "every host is installed from the same first toplevel"


def test_unknown_host_key_is_refused(lab, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(lab, "host-1", known_hosts=empty)


def test_changed_host_key_is_refused(lab, tmp_path):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{lab.host('host-1').address} {lab.host('host-2').public_host_key()}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(lab, "host-1", known_hosts=wrong)


def test_hosts_have_distinct_stores(lab):
    add = "printf 'only on host-1 %s' $$ > /root/marker && nix-store --add /root/marker"
    code, out, err = ssh_run(lab, "host-1", add)
    assert code == 0, err
    path = out.strip()
    assert path.startswith("/nix/store/")
    assert ssh_run(lab, "host-1", f"test -e {path}")[0] == 0
    for other in ("host-2", "host-3"):
        assert ssh_run(lab, other, f"test -e {path}")[0] != 0
        assert ssh_run(lab, other, f"nix-store --check-validity {path}")[0] != 0
    assert not Path(path).exists(), "the path was added to the host's store, not this machine's"


def test_switch_changes_only_that_host(lab, tmp_path):
    before = {name: host.current_system() for name, host in lab.hosts.items()}
    spec = factory.upgrade(factory.initial_system(authorized_keys=[lab.client_public_key()]), "openssl", "3.0.14")
    toplevel = factory.build(spec, tmp_path)
    assert toplevel not in before.values()
    lab.host("host-2").import_closure(toplevel, lab_env())

    code, _, err = ssh_run(lab, "host-2", f"{toplevel}/bin/switch-to-configuration switch")
    assert code == 0, err

    assert lab.host("host-2").current_system() == toplevel
    for name in ("host-1", "host-3"):
        assert lab.host(name).current_system() == before[name]
    log = lab.host("host-2").sh("cat /run/lab/activation.log")
    assert f"switch\t{toplevel}\tok" in log
    # put host-2 back, so tests do not depend on their order
    lab.host("host-2").sh(f"{before['host-2']}/bin/switch-to-configuration switch")


def b2_api(lab: Lab) -> B2Api:
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(lab.emulator.url, *lab.b2_key())
    return api


def test_lab_emulator_serves_b2sdk_and_counts(lab):
    api = b2_api(lab)
    bucket = api.get_bucket_by_name(BUCKET)
    before = lab.emulator_control("GET", "counters")
    bucket.upload_bytes(b"hello lab", "e2e/hello.txt")
    after = lab.emulator_control("GET", "counters")
    assert after["A"] > before["A"]
    with urllib.request.urlopen(f"{lab.emulator.url}/file/{BUCKET}/e2e/hello.txt") as response:
        assert response.read() == b"hello lab"
    assert lab.emulator_control("GET", "counters")["B"] == after["B"] + 1


def publish_with_nix_copy(lab: Lab, toplevel: str, secret_key: Path, prefix: str, workdir: Path) -> str:
    """Make a signed binary cache with `nix copy --to file://`, upload its files to the bucket; return its URL."""
    cache = workdir / "cache"
    subprocess.run(["nix", "copy", "--to", f"file://{cache}?compression=zstd&secret-key={secret_key}", toplevel],
                   check=True, capture_output=True, env=lab_env())
    bucket = b2_api(lab).get_bucket_by_name(BUCKET)
    for file in sorted(p for p in cache.rglob("*") if p.is_file()):
        bucket.upload_local_file(str(file), f"{prefix}/{file.relative_to(cache)}")
    return f"{lab.emulator.url}/file/{BUCKET}/{prefix}"


def test_host_substitutes_a_signed_closure_from_the_emulator_and_refuses_a_wrong_key(lab, tmp_path):
    spec = factory.add_package(factory.initial_system(authorized_keys=[lab.client_public_key()]),
                               factory.Package("redis", "7.2.4", size=300_000))
    toplevel = factory.build(spec, tmp_path)
    url = publish_with_nix_copy(lab, toplevel, lab.cache_secret_key, "e2e-signed", tmp_path)
    lab_key = lab.cache_public_key.read_text().strip()
    other_sec, other_pub = tmp_path / "other.sec", tmp_path / "other.pub"
    subprocess.run(["nix-store", "--generate-binary-cache-key", "other-1", str(other_sec), str(other_pub)],
                   check=True, env=lab_env())

    code, _, err = substitute(lab, "host-1", toplevel, url, other_pub.read_text().strip())
    assert code != 0
    assert ssh_run(lab, "host-1", f"test -e {toplevel}")[0] != 0, "nothing unsigned was accepted"

    code, _, err = substitute(lab, "host-3", toplevel, url, lab_key)
    assert code == 0, err
    assert ssh_run(lab, "host-3", f"nix-store --check-validity {toplevel}")[0] == 0
    closure = ssh_run(lab, "host-3", f"nix-store -qR {toplevel}")[1].split()
    assert any("redis-7.2.4" in p for p in closure)


def test_stopped_host_is_unreachable_and_comes_back_with_its_state(lab):
    generation = lab.host("host-3").generation()
    lab.stop_host("host-3")
    try:
        with pytest.raises((OSError, paramiko.SSHException)):
            connect(lab, "host-3")
        assert ssh_run(lab, "host-1", "true")[0] == 0
    finally:
        lab.start_host("host-3")
    assert ssh_run(lab, "host-3", "true")[0] == 0
    assert lab.host("host-3").generation() == generation


def topdeck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topdeck.cli", *args], capture_output=True, text=True,
                          timeout=300)


def dead(pid: int) -> bool:
    """Gone, or a zombie that only waits for init to reap it (it holds no mount, socket or namespace)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_lab_up_from_nothing_then_down_leaves_no_process_and_no_mount(tmp_path):
    root = tmp_path / "lab"
    up = topdeck("lab", "--root", str(root), "up", "--hosts", "2", "--base-address", "127.0.4.11",
                 "--emulator-port", "0")
    assert up.returncode == 0, up.stderr
    status = json.loads(topdeck("lab", "--root", str(root), "status", "--json").stdout)
    assert status["up"] and [h["address"] for h in status["hosts"]] == ["127.0.4.11", "127.0.4.12"]
    assert all(h["generation"] == 1 for h in status["hosts"])
    state = json.loads((root / "state.json").read_text())
    namespaces = {h["namespace"] for h in state["hosts"]}
    pids = [h["anchor_pid"] for h in state["hosts"]] + [h["sshd_pid"] for h in state["hosts"]]
    pids.append(state["emulator"]["pid"])

    down = topdeck("lab", "--root", str(root), "down")
    assert down.returncode == 0, down.stderr

    for pid in pids:
        assert dead(pid), f"process {pid} survived lab down"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "ns" / "mnt") in namespaces:
                    # a namespace's number is reused once it is gone (by another test's lab, say): the lab host's
                    # own namespace is the one whose mounts come from the lab's folder
                    assert str(root).encode() not in (proc / "mountinfo").read_bytes(), f"{proc.name} is in a host"
                assert str(root).encode() not in (proc / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    assert str(root) not in Path("/proc/self/mountinfo").read_text()
    assert topdeck("lab", "--root", str(root), "status").returncode != 0


def test_small_nix_and_slow_host_controls(tmp_path):
    lab = Lab(tmp_path / "lab", base_address="127.0.5.11", emulator_port=0)
    try:
        lab.up(count=1, small_nix={"host-1": 64 * 1024 * 1024}, log=lambda *_: None)
        host = lab.host("host-1")
        size_kib = int(host.sh("df -k --output=size /nix | tail -1"))
        assert 60 * 1024 <= size_kib <= 64 * 1024
        assert host.generation() == 1
        lab.set_slow("host-1", 20)
        quota = (host._cgroup() / "cpu.cfs_quota_us").read_text().strip()
        assert quota == "20000"
        procs = (host._cgroup() / "cgroup.procs").read_text().split()
        assert str(host.state.sshd_pid) in procs
        connect(lab, "host-1").close()  # the pinned key is accepted before the rotation
        lab.rotate_host_key("host-1")
        with pytest.raises(paramiko.BadHostKeyException):
            connect(lab, "host-1")
    finally:
        lab.down(log=lambda *_: None)
    assert not host._cgroup().exists()
