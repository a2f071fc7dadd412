"""core/sshconfigfile.py and sshroute's use of it: ssh_config as OpenSSH reads it (Include, first value wins,
ConnectTimeout, CertificateFile, ProxyCommand and its precedence with ProxyJump, refused options). Pure parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from topdeck.core.errors import SSHConfigError
from topdeck.core.inventory import Host, SSHConfig
from topdeck.core.remote.sshroute import route
from topdeck.core.sshconfigfile import read_config


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def target(config: Path, name: str):
    return route(Host(name="h", address=name, pointer="p"), SSHConfig(config=config)).target


def test_include_relative_to_dot_ssh_globs_sorted_and_first_value_wins(home: Path) -> None:
    config = write(home / ".ssh" / "config", "Include config.d/*\nHost *\n  User last\n")
    write(home / ".ssh" / "config.d" / "20-b", "Host web\n  HostName 10.0.0.2\n  User second\n")
    write(home / ".ssh" / "config.d" / "10-a", "Host web\n  HostName 10.0.0.1\n")
    found = target(config, "web")
    assert (found.hostname, found.user) == ("10.0.0.1", "second")


def test_include_with_tilde_nested_and_absolute(home: Path) -> None:
    config = write(home / ".ssh" / "config", f"Include ~/.ssh/one {home}/abs\n")
    write(home / ".ssh" / "one", "Include two\n")
    write(home / ".ssh" / "two", "Host a\n  HostName 10.0.0.3\n")
    write(home / "abs", "Host b\n  HostName 10.0.0.4\n")
    assert target(config, "a").hostname == "10.0.0.3"
    assert target(config, "b").hostname == "10.0.0.4"


def test_include_inside_a_host_block_applies_only_to_it(home: Path) -> None:
    config = write(home / ".ssh" / "config", "Host web-*\n  Include web.conf\n  User afterwards\n"
                                             "Host *\n  Port 2200\n")
    write(home / ".ssh" / "web.conf", "HostName 10.0.0.5\nHost *\n  Port 2201\n")
    web = target(config, "web-1")
    assert (web.hostname, web.port, web.user) == ("10.0.0.5", 2201, "afterwards")
    other = target(config, "db-1")
    assert (other.hostname, other.port) == ("db-1", 2200)  # the included Host * never applies outside web-*


def test_include_loop_is_refused_in_one_line(home: Path) -> None:
    config = write(home / ".ssh" / "config", "Include config\n")
    with pytest.raises(SSHConfigError, match=r"Include nested more than 16 deep"):
        read_config(config)


def test_a_changed_included_file_is_read_again(home: Path) -> None:
    config = write(home / ".ssh" / "config", "Include inc/*\n")
    write(home / ".ssh" / "inc" / "a", "Host x\n  HostName 10.0.0.1\n")
    assert target(config, "x").hostname == "10.0.0.1"
    write(home / ".ssh" / "inc" / "0", "Host x\n  HostName 10.0.0.9\n")  # a new file the glob now finds
    assert target(config, "x").hostname == "10.0.0.9"


def test_connecttimeout_and_certificatefiles(home: Path) -> None:
    config = write(home / ".ssh" / "config", "Host x\n  ConnectTimeout 3\n  CertificateFile ~/c1\n"
                                             "Host *\n  CertificateFile ~/c2\n")
    found = target(config, "x")
    assert found.connect_timeout == 3.0
    assert found.certificates == (home / "c1", home / "c2")
    assert target(config, "y").connect_timeout is None
    write(config, "Host x\n  ConnectTimeout soon\n")
    with pytest.raises(SSHConfigError, match="ConnectTimeout 'soon' is not a number of seconds"):
        target(config, "x")


@pytest.mark.parametrize("text,command,jumps", [
    ("Host x\n  HostName 10.0.0.1\n  User u\n  Port 2222\n  ProxyCommand nc %h %p # %r %n 100%%\n",
     "nc 10.0.0.1 2222 # u x 100%", []),
    ("Host x\n  ProxyCommand nc %h %p\n  ProxyJump j\n", "nc x 22", []),  # the first obtained wins
    ("Host x\n  ProxyJump j\n  ProxyCommand nc %h %p\n", "", ["j"]),
    ("Host x\n  ProxyCommand none\nHost *\n  ProxyJump j\n", "", []),  # none, first, keeps the later jump off
    ("Host j\n  ProxyCommand nc %h %p\nHost x\n  ProxyJump j,k\nHost k\n  ProxyCommand nope\n", "", ["j", "k"]),
])
def test_proxycommand_tokens_and_its_precedence_with_proxyjump(home: Path, text: str, command: str,
                                                               jumps: list[str]) -> None:
    config = write(home / ".ssh" / "config", text)
    found = route(Host(name="h", address="x", pointer="p"), SSHConfig(config=config))
    assert found.target.proxy_command == command
    assert [jump.name for jump in found.jumps] == jumps
    if jumps and text.startswith("Host j"):
        assert found.jumps[0].proxy_command == "nc j 22" and found.jumps[1].proxy_command == ""


def test_an_unknown_proxycommand_token_is_refused(home: Path) -> None:
    config = write(home / ".ssh" / "config", "Host x\n  ProxyCommand nc %h %z\n")
    with pytest.raises(SSHConfigError, match=r"%z is not a token topdeck expands"):
        target(config, "x")


@pytest.mark.parametrize("text,message", [
    ("Match host x exec 'true'\n  User u\n", "Match exec is not supported by topdeck"),
    ("Match localnetwork 10.0.0.0/8\n  User u\n", "Match localnetwork is not supported by topdeck"),
    ("Host x\n  GSSAPIAuthentication yes\n", "GSSAPIAuthentication yes is not supported by topdeck"),
    ("Host *\n  PKCS11Provider /usr/lib/p11.so\n", "PKCS11Provider /usr/lib/p11.so is not supported"),
    ("Host x\n  IdentityAgent ~/.1password/agent.sock\n", "IdentityAgent ~/.1password/agent.sock is not supported"),
])
def test_options_topdeck_cannot_honour_are_refused_in_one_line(home: Path, text: str, message: str) -> None:
    config = write(home / ".ssh" / "config", text)
    with pytest.raises(SSHConfigError) as caught:
        target(config, "x")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_unsupported_match_that_is_not_reached_is_no_problem(home: Path) -> None:
    config = write(home / ".ssh" / "config", "Match host other exec 'false'\n  User u\nHost x\n  User v\n"
                                             "Host *\n  GSSAPIAuthentication no\n")
    assert target(config, "x").user == "v"
    assert not os.path.exists(home / "ran")


def test_no_file_is_an_empty_configuration() -> None:
    assert read_config(None).lookup("web-1")["hostname"] == "web-1"


def test_a_file_is_read_and_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "ssh_config"
    path.write_text("Host web-1\n    HostName 10.0.0.1\n    Port 2222\n")
    first = read_config(path)
    assert (first.lookup("web-1")["hostname"], first.lookup("web-1")["port"]) == ("10.0.0.1", "2222")
    assert read_config(path) is first  # unchanged: parsed once
    path.write_text("Host web-1\n    HostName 10.0.0.2\n")
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))  # a later modification time, however coarse the file system's clock
    assert read_config(path).lookup("web-1")["hostname"] == "10.0.0.2"


def test_a_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"
    with pytest.raises(SSHConfigError) as caught:
        read_config(path)
    assert str(caught.value) == f"{path}: cannot read the SSH client configuration: No such file or directory"


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfe not utf-8\n", "cannot read the SSH client configuration"),
    (b"Host\n", "1: not a valid SSH client configuration line: 'Host'"),  # Host without a pattern
])
def test_an_unreadable_or_invalid_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "ssh_config"
    path.write_bytes(content)
    with pytest.raises(SSHConfigError) as caught:
        read_config(path)
    assert str(caught.value).startswith(f"{path}:") and message in str(caught.value)
    assert "\n" not in str(caught.value)
