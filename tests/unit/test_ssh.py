"""core.remote.ssh without a network: fingerprints and known_hosts names as OpenSSH writes them, known_hosts read line
by line (hashed names, revoked keys, lines it cannot use), pinning that never replaces a key, remote quoting, and the
passphrase asked once per key file. Real sessions against sshd: tests/lab/test_ssh_lab.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shlex
import threading
import time
from pathlib import Path

import paramiko
import pytest

from topdeck.core.errors import Cancelled, HostKeyError
from topdeck.core.remote.ssh import (
    AskOnce,
    HostKeys,
    accept_host_key,
    fingerprint,
    known_hosts_name,
    quote,
    remote_command,
)

KEY, OTHER = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()


def line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_fingerprint_is_ssh_keygens_sha256_without_padding() -> None:
    expected = base64.b64encode(hashlib.sha256(base64.b64decode(KEY.get_base64())).digest()).decode().rstrip("=")
    assert fingerprint(KEY) == f"SHA256:{expected}" and "=" not in fingerprint(KEY)


def test_known_hosts_names() -> None:
    assert known_hosts_name("10.0.0.1") == "10.0.0.1"
    assert known_hosts_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert known_hosts_name("fe80::1", 2222) == "[fe80::1]:2222"


def test_known_hosts_lines_plain_hashed_revoked_and_unusable(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("# a comment\n\n" + line("10.0.0.1,web-1", KEY) + line(hashed("[10.0.0.2]:2222"), KEY)
                    + "@cert-authority *.example " + line("", OTHER).strip() + "\n"
                    + "10.0.0.3 ssh-ed25519 not-base64!\n" + line("10.0.0.4", OTHER) + "@revoked " + line("*", OTHER))
    keys = HostKeys(path)
    assert [k.asbytes() for k in keys.lookup("10.0.0.1")] == [KEY.asbytes()] == [
        k.asbytes() for k in keys.lookup_name("web-1")]
    assert [k.asbytes() for k in keys.lookup("10.0.0.2", 2222)] == [KEY.asbytes()]
    assert keys.lookup("10.0.0.2") == [] and keys.lookup("10.0.0.3") == []
    assert keys.lookup("10.0.0.4") == [] and keys.revoked(OTHER)  # pinned, and revoked elsewhere in the file
    assert keys.problems == [f"{path}:6: not a usable known_hosts line; skipped"]  # the CA line is read


def test_a_missing_file_holds_no_keys_and_a_system_file_is_read_too(tmp_path: Path) -> None:
    system = tmp_path / "ssh_known_hosts"
    system.write_text(line("10.0.0.9", KEY))
    keys = HostKeys(tmp_path / "absent", also=[system])
    assert not keys.exists and keys.files == (tmp_path / "absent", system)
    assert [k.asbytes() for k in keys.lookup("10.0.0.9")] == [KEY.asbytes()]


def test_pinning_appends_once_and_never_replaces_a_key(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "known_hosts"
    assert accept_host_key(path, "10.0.0.1", 2222, KEY) == line("[10.0.0.1]:2222", KEY)
    accept_host_key(path, "10.0.0.1", 2222, KEY)  # already pinned: nothing written
    assert path.read_text() == line("[10.0.0.1]:2222", KEY)
    with pytest.raises(HostKeyError) as caught:
        accept_host_key(path, "10.0.0.1", 2222, OTHER)
    assert str(caught.value) == (f"{path}: already pins {KEY.get_name()} {fingerprint(KEY)} for [10.0.0.1]:2222, not "
                                 f"{fingerprint(OTHER)}; remove the old line first (ssh-keygen -R [10.0.0.1]:2222 -f "
                                 f"{path})")
    assert path.read_text() == line("[10.0.0.1]:2222", KEY)


@pytest.mark.parametrize("argv", [
    ("nix-store", "-r", "/nix/store/abc-x"),
    ("sh", "-c", "echo $HOME; rm -rf / `id` $(id) 'quoted' \"double\"", "name with space", "", "\n", "*", "~"),
    ("printf", 42, Path("/tmp/a b")),
])
def test_the_remote_shell_splits_a_command_back_into_its_argv(argv) -> None:
    assert shlex.split(remote_command(*argv)) == [os.fspath(a) if isinstance(a, Path) else str(a) for a in argv]


def test_quoting_refuses_a_nul_and_a_command_needs_a_program() -> None:
    with pytest.raises(ValueError, match="cannot contain a NUL byte"):
        quote("a\0b")
    with pytest.raises(ValueError, match="needs at least the program"):
        remote_command()


def test_the_passphrase_is_asked_once_per_key_file_and_a_refusal_is_remembered() -> None:
    asked: list[Path] = []

    def ask(path: Path) -> str:
        asked.append(path)
        time.sleep(0.01)  # hosts connecting at once wait for the one question
        if path.name == "refused":
            raise Cancelled("no passphrase given")
        return f"secret of {path.name}"

    once = AskOnce(ask)
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(once(Path("id_ed25519")))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == ["secret of id_ed25519"] * 8
    for _ in range(2):
        with pytest.raises(Cancelled, match="no passphrase given"):
            once(Path("refused"))
    assert asked == [Path("id_ed25519"), Path("refused")]
