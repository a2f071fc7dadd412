"""core/remote/ssh.py against the lab's real sshd: pinned host keys, login failures, commands without a pty."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest

from topdeck.core.errors import Cancelled, ChangedHostKey, HostKeyError, SSHError, UnknownHostKey
from topdeck.core.inventory import Host, SSHConfig
from topdeck.core.remote.ssh import (
    MAX_LINE,
    MAX_OUTPUT,
    TRUNCATED,
    HostKeys,
    Session,
    accept_host_key,
    connect,
    fingerprint,
    quote,
    remote_command,
)
from topdeck.lab.lab import Lab


def lab_host(lab: Lab, name: str) -> Host:
    return Host(name=name, address=lab.host(name).address, pointer="web")


def lab_ssh(lab: Lab, known_hosts: Path | None = None, identity: Path | None = None) -> SSHConfig:
    return SSHConfig(known_hosts=known_hosts or lab.known_hosts, identity=identity or lab.client_key,
                     connect_timeout=5)


def host_public_key(lab: Lab, name: str) -> paramiko.PKey:
    key_type, data = lab.host(name).public_host_key().split()
    return paramiko.PKey.from_type_string(key_type, __import__("base64").b64decode(data))


def keygen_fingerprint(lab: Lab, name: str) -> str:
    pub = lab.host(name).host_key_path.with_suffix(".pub")
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def session(lab: Lab):
    with connect(lab_host(lab, "host-1"), lab_ssh(lab)) as session:
        yield session


# --- running commands -----------------------------------------------------------------------------


def test_run_returns_exit_status_stdout_and_stderr(session: Session) -> None:
    result = session.run("echo out; echo err >&2; exit 3")
    assert (result.exit_status, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.ok
    assert session.run("true").ok


def test_stdin_is_closed_when_none_is_given(session: Session) -> None:
    result = session.run("cat", timeout=5)
    assert result.ok and result.stdout == b""


def test_a_megabyte_on_each_stream_does_not_hang(session: Session) -> None:
    command = "head -c 1048576 /dev/zero | tr '\\0' e >&2; head -c 1048576 /dev/zero | tr '\\0' o"
    result = session.run(command, timeout=20)
    assert result.ok
    assert result.stderr == b"e" * 1048576 and result.stdout == b"o" * 1048576


def test_50_mb_without_a_newline_costs_bounded_memory_and_the_last_line_is_still_read(session: Session) -> None:
    command = ("head -c 50000000 /dev/zero | tr '\\0' x; printf '\\nresult\\tdone\\tafter the flood\\n'; "
               "head -c 30000000 /dev/zero | tr '\\0' e >&2")
    out: list[str] = []
    err: list[str] = []
    tracemalloc.start()
    try:
        result = session.run(command, on_stdout_line=out.append, on_stderr_line=err.append, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok and result.truncated
    assert out == [TRUNCATED, "result\tdone\tafter the flood"] and err[0] == TRUNCATED and err[1] == "e" * MAX_LINE
    assert len(result.stdout) <= MAX_OUTPUT and len(result.stderr) <= MAX_OUTPUT
    assert peak < 4 * MAX_OUTPUT  # 9 MiB here; before the bound, 231 MiB for the 80 MB the host sent
    with pytest.raises(SSHError, match="over 8 MiB: not read"):
        result.whole_stdout("host-1: status")


def test_interleaved_output_on_both_streams(session: Session) -> None:
    command = "i=0; while [ $i -lt 2000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done"
    out: list[str] = []
    err: list[str] = []
    result = session.run(command, on_stdout_line=out.append, on_stderr_line=err.append, timeout=20)
    assert out == [f"out-{i}" for i in range(2000)] and err == [f"err-{i}" for i in range(2000)]
    assert result.stdout.decode().splitlines() == out


def test_several_megabytes_of_stdin_reach_the_remote(session: Session) -> None:
    data = hashlib.sha256(b"seed").digest() * (6 * 1024 * 1024 // 32 + 7)
    result = session.run("sha256sum", stdin=data, timeout=20)
    assert result.ok
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_stdin_while_the_remote_writes_a_lot_back(session: Session) -> None:
    # `cat` echoes 4 MB while we are still sending: stdin and output must be interleaved.
    data = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    result = session.run("cat; cat /dev/null >&2", stdin=data, timeout=20)
    assert result.ok and result.stdout == data


@pytest.mark.alone
def test_stdin_the_command_never_reads_does_not_block(session: Session) -> None:
    start = time.monotonic()
    result = session.run("echo done", stdin=b"x" * (8 * 1024 * 1024), timeout=10)
    assert result.ok and result.stdout == b"done\n"
    assert time.monotonic() - start < 5


def test_lines_arrive_before_the_command_ends(session: Session) -> None:
    seen: list[tuple[str, float]] = []
    start = time.monotonic()
    result = session.run("echo first; echo warn >&2; sleep 1; printf 'second\\nno-newline'",
                         on_stdout_line=lambda line: seen.append((line, time.monotonic() - start)),
                         on_stderr_line=lambda line: seen.append(("E:" + line, time.monotonic() - start)),
                         timeout=10)
    elapsed = time.monotonic() - start
    assert result.ok and elapsed >= 1
    lines = [line for line, _ in seen]
    assert sorted(lines) == sorted(["first", "E:warn", "second", "no-newline"])
    when = dict(seen)
    assert when["first"] < elapsed - 0.5 and when["E:warn"] < elapsed - 0.5
    assert when["second"] >= 1


def still_running(session: Session, marker: str) -> bool:
    time.sleep(0.2)
    return marker in session.run("ps -eo args").stdout.decode()


@pytest.mark.alone
def test_the_overall_timeout_fires_and_stops_the_command(session: Session) -> None:
    marker = f"timeout-{uuid.uuid4().hex}"
    start = time.monotonic()
    with pytest.raises(SSHError, match=r"host-1 .*`sleep 30; echo timeout-.*` timed out after 1 s"):
        session.run(f"sleep 30; echo {marker}", timeout=1)
    assert time.monotonic() - start < 2
    assert not still_running(session, marker)
    assert session.run("echo still usable").stdout == b"still usable\n"


@pytest.mark.alone
def test_cancel_stops_the_command(session: Session) -> None:
    marker = f"cancel-{uuid.uuid4().hex}"
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(Cancelled, match="host-1 .*cancelled"):
        session.run(f"echo started; sleep 30; echo {marker}", on_stdout_line=lines.append, cancel=cancel)
    assert time.monotonic() - start < 1.5
    assert lines == ["started"]  # the pid line the session adds never shows
    assert not still_running(session, marker)


def test_a_cancel_set_beforehand_runs_nothing_to_the_end(session: Session, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        session.run(remote_command("sh", "-c", "sleep 1; touch \"$0\"", tmp_path / "ran"), cancel=cancel)
    time.sleep(1.3)
    assert not (tmp_path / "ran").exists()


def test_a_session_closes_on_exit(lab: Lab) -> None:
    with connect(lab_host(lab, "host-2"), lab_ssh(lab)) as session:
        assert session.run("true").ok
    assert not session.active
    with pytest.raises(SSHError, match="host-2 .*closed"):
        session.run("true")


def test_many_hosts_from_a_thread_pool(lab: Lab) -> None:
    hosts = [lab_host(lab, name) for name in ("host-1", "host-2", "host-3")] * 3
    keys = HostKeys(lab.known_hosts)  # read once, shared read-only

    def work(host: Host) -> str:
        with connect(host, lab_ssh(lab), host_keys=keys) as session:
            return session.run("echo $SSH_CONNECTION", timeout=10).stdout.decode().split()[2]

    with ThreadPoolExecutor(9) as pool:
        assert list(pool.map(work, hosts)) == [host.address for host in hosts]


# --- quoting --------------------------------------------------------------------------------------

HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "a; touch {marker}",
    "x && touch {marker} || true",
    "line one\nline two; touch {marker}",
    "it's \"quoted\" \\ back",
    "${HOME} $PATH * ? [a] ~ #",
    "| touch {marker} &",
    "",
    "-n",
]


def test_hostile_values_arrive_verbatim_and_nothing_runs(session: Session, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"  # /tmp is shared with the lab hosts' mount namespaces
    values = [value.replace("{marker}", str(marker)) for value in HOSTILE]
    result = session.run(remote_command("printf", "%s\\n", *values))
    assert result.ok, result.stderr
    assert result.stdout.decode() == "".join(f"{value}\n" for value in values)
    assert not marker.exists()
    assert session.run(remote_command("test", "-e", marker)).exit_status == 1


def test_quote_refuses_nul_and_accepts_paths() -> None:
    assert quote(Path("/a b")) == "'/a b'" and quote(3) == "3"
    with pytest.raises(ValueError):
        quote("a\0b")
    with pytest.raises(ValueError):
        remote_command()


# --- host keys ------------------------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_its_fingerprint(lab: Lab, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    host = lab_host(lab, "host-1")
    with pytest.raises(UnknownHostKey) as caught:
        connect(host, lab_ssh(lab, known_hosts=known_hosts))
    error = caught.value
    expected = keygen_fingerprint(lab, "host-1")
    assert error.fingerprint == expected == fingerprint(error.key)
    message = str(error)
    assert "\n" not in message
    for part in ("host-1", host.address, "unknown host key", "ssh-ed25519", expected, "accept", str(known_hosts)):
        assert part in message


def test_accepting_a_key_appends_one_line_then_connect_works(lab: Lab, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("# pinned by hand\n127.9.9.9 " + lab.host("host-2").public_host_key())  # no newline
    host = lab_host(lab, "host-1")
    with pytest.raises(UnknownHostKey) as caught:
        connect(host, lab_ssh(lab, known_hosts=known_hosts))
    before = known_hosts.read_text().splitlines()
    line = accept_host_key(known_hosts, caught.value.address, caught.value.port, caught.value.key)
    after = known_hosts.read_text().splitlines()
    assert after == before + [line.strip()]
    assert line == f"{host.address} {lab.host('host-1').public_host_key()}\n"
    with connect(host, lab_ssh(lab, known_hosts=known_hosts)) as session:
        assert session.run("true").ok
    # Accepting again changes nothing; a different key for the same address is refused.
    accept_host_key(known_hosts, host.address, 22, caught.value.key)
    assert known_hosts.read_text().splitlines() == after
    with pytest.raises(HostKeyError, match="already pins"):
        accept_host_key(known_hosts, host.address, 22, host_public_key(lab, "host-2"))
    assert known_hosts.read_text().splitlines() == after


def test_a_changed_host_key_is_refused_as_a_possible_attack(lab: Lab, tmp_path: Path) -> None:
    host = lab_host(lab, "host-1")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{host.address} {lab.host('host-2').public_host_key()}\n")
    with pytest.raises(ChangedHostKey) as caught:
        connect(host, lab_ssh(lab, known_hosts=known_hosts))
    message = str(caught.value)
    assert "\n" not in message
    assert "CHANGED" in message and "attack" in message and "host-1" in message
    assert caught.value.expected_fingerprint == keygen_fingerprint(lab, "host-2") in message
    assert caught.value.fingerprint == keygen_fingerprint(lab, "host-1") in message


def test_hashed_names_match_and_a_bad_line_does_not_spoil_the_file(lab: Lab, tmp_path: Path) -> None:
    host = lab_host(lab, "host-1")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "@cert-authority *.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMmTZ9oB1mGmjJdq9p9pJ0qK8D0b0sYb0F\n"
        "garbage line here\n"
        f"{paramiko.HostKeys.hash_host(host.address)} {lab.host('host-1').public_host_key()}\n"
    )
    keys = HostKeys(known_hosts)
    assert len(keys.problems) == 2
    with connect(host, lab_ssh(lab, known_hosts=known_hosts), host_keys=keys) as session:
        assert session.run("true").ok


def test_accepted_keys_off_port_22_use_the_bracketed_name(lab: Lab, tmp_path: Path) -> None:
    known_hosts = tmp_path / "sub" / "known_hosts"  # created, with its folder
    key = host_public_key(lab, "host-1")
    line = accept_host_key(known_hosts, "192.0.2.7", 2222, key)
    assert line == f"[192.0.2.7]:2222 {key.get_name()} {key.get_base64()}\n"
    assert known_hosts.read_text() == line
    keys = HostKeys(known_hosts)
    assert [k.asbytes() for k in keys.lookup("192.0.2.7", 2222)] == [key.asbytes()]
    assert keys.lookup("192.0.2.7") == [] and keys.lookup("192.0.2.8", 2222) == []


def test_a_revoked_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    host = lab_host(lab, "host-1")
    known_hosts = tmp_path / "known_hosts"
    public = lab.host("host-1").public_host_key()
    known_hosts.write_text(f"{host.address} {public}\n@revoked * {public}\n")
    with pytest.raises(HostKeyError, match="revoked"):
        connect(host, lab_ssh(lab, known_hosts=known_hosts))


# --- login failures -------------------------------------------------------------------------------


def test_a_key_the_server_does_not_know_is_refused(lab: Lab, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    stranger = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    host = lab_host(lab, "host-1")
    with pytest.raises(SSHError, match=rf"host-1 \(root@{host.address}\): the server refused our key") as caught:
        connect(host, lab_ssh(lab, identity=stranger))
    assert not isinstance(caught.value, HostKeyError)
    assert "Traceback" not in capfd.readouterr().err


def test_a_missing_identity_file_is_named(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(SSHError, match="identity file .*nope not found"):
        connect(lab_host(lab, "host-1"), lab_ssh(lab, identity=tmp_path / "nope"))


@pytest.mark.alone
def test_a_stopped_host_is_unreachable_fast(lab: Lab, capfd: pytest.CaptureFixture[str]) -> None:
    host = lab_host(lab, "host-3")
    lab.stop_host("host-3")
    try:
        start = time.monotonic()
        with pytest.raises(SSHError, match=rf"host-3 \(root@{host.address}\): unreachable: connection refused"):
            connect(host, lab_ssh(lab))
        assert time.monotonic() - start < 1
    finally:
        lab.start_host("host-3")
    assert "Traceback" not in capfd.readouterr().err
    with connect(host, lab_ssh(lab)) as session:
        assert session.run("true").ok


def test_a_host_that_dies_mid_command_is_reported(lab: Lab) -> None:
    host = lab_host(lab, "host-3")
    with connect(host, lab_ssh(lab)) as session:
        stopper = threading.Timer(0.5, lab.stop_host, ["host-3"])
        stopper.start()
        try:
            with pytest.raises(SSHError, match="host-3 .*connection lost"):
                session.run("sleep 10", timeout=8)
        finally:
            stopper.join()
            lab.start_host("host-3")
