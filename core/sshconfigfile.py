"""Reading an OpenSSH client configuration (ssh_config) with paramiko's own parser, re-read when it changes."""

from __future__ import annotations

import functools
from pathlib import Path

import paramiko

from topdeck.core.errors import SSHConfigError


def read_config(path: Path | None) -> paramiko.SSHConfig:
    """The parsed file (an empty configuration for none); re-read when it changes."""
    if path is None:
        return paramiko.SSHConfig()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as error:
        raise SSHConfigError(f"{path}: cannot read the SSH client configuration: {error.strerror}") from None
    return _parsed(path, stamp)


@functools.lru_cache(maxsize=8)
def _parsed(path: Path, stamp: int) -> paramiko.SSHConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SSHConfigError(f"{path}: cannot read the SSH client configuration: {error}") from None
    try:
        return paramiko.SSHConfig.from_text(text)
    except Exception as error:  # ConfigParseError and whatever a broken Include or Match gives
        raise SSHConfigError(f"{path}: not a valid SSH client configuration: {error}") from None
