"""core.sshconfigfile: an ssh_config read with paramiko's parser, re-read when it changes, refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from topdeck.core.errors import SSHConfigError
from topdeck.core.sshconfigfile import read_config


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
    (b"Host\n", "not a valid SSH client configuration"),  # Host without a pattern: paramiko refuses it
])
def test_an_unreadable_or_invalid_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "ssh_config"
    path.write_bytes(content)
    with pytest.raises(SSHConfigError) as caught:
        read_config(path)
    assert str(caught.value).startswith(f"{path}: {message}") and "\n" not in str(caught.value)
