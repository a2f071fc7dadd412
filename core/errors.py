"""Every error topdeck reports to a user. Each carries one line that says what is wrong and where."""

import traceback
from pathlib import Path
from typing import Any


class TopdeckError(Exception):
    """Base of all user-facing errors: the CLI prints str(error) on one line and exits non-zero.

    `setting` names the setting or argument at fault ("canary", "wave", "keep", ...), so that a front end can name
    its own flag for it; the message says what is wrong without naming any front end's flags, and begins with the
    setting's name where it can (`canary -1: must be 0 or more`, which the CLI can print as `--canary -1: ...`)."""

    def __init__(self, *args: object, setting: str = ""):
        super().__init__(*args)
        self.setting = setting


class InventoryError(TopdeckError):
    """The inventory (hosts/ and topdeck.toml) is missing, unreadable or invalid."""


class StorePathError(TopdeckError):
    """A value that should be a Nix store path is not one."""


class NarinfoError(TopdeckError):
    """A narinfo is malformed or incomplete."""


class SigningKeyError(TopdeckError):
    """A signing or public key file is unreadable or not in Nix's format."""


class SignatureError(TopdeckError):
    """A signature does not verify."""


class NixError(TopdeckError):
    """A local Nix command failed."""


class CacheError(TopdeckError):
    """The binary cache (B2 or a directory) refused or failed an operation."""


class CacheMissing(CacheError):
    """The cache answered, and the file is not there (unlike a refusal, a cap or a network failure)."""


class TransientCacheError(CacheError):
    """A failure that may pass (a 503, a timeout, a dropped connection): worth trying the operation again."""


class SSHError(TopdeckError):
    """A host could not be reached or refused the SSH session."""


class SSHConfigError(SSHError):
    """The SSH client configuration (ssh_config, ProxyJump) is unreadable or gives an unusable value."""


class HostKeyError(SSHError):
    """A host presented an unknown or changed host key."""


class UnknownHostKey(HostKeyError):
    """The host presented a key that known_hosts does not pin for its address (`key` is a paramiko PKey)."""

    def __init__(self, message: str, *, host: str, address: str, port: int, key: Any, fingerprint: str,
                 known_hosts: Path, key_name: str = "", certificate: str = ""):
        super().__init__(message)
        self.host, self.address, self.port, self.key = host, address, port, key
        self.fingerprint, self.known_hosts = fingerprint, known_hosts
        self.key_name = key_name  # the known_hosts name the key goes under ("" for the address's own)
        self.certificate = certificate  # why the host certificate it came in was not accepted ("" for none)


class ChangedHostKey(HostKeyError):
    """The host presented a key other than the one known_hosts pins for it: maybe an attack."""

    def __init__(self, message: str, *, host: str, address: str, port: int, key: Any, fingerprint: str,
                 expected: Any, expected_fingerprint: str, known_hosts: Path, key_name: str = ""):
        super().__init__(message)
        self.host, self.address, self.port, self.key = host, address, port, key
        self.fingerprint, self.known_hosts = fingerprint, known_hosts
        self.key_name = key_name
        self.expected, self.expected_fingerprint = expected, expected_fingerprint


class Cancelled(TopdeckError):
    """The operator cancelled; what finished before stays valid."""


class PointerError(TopdeckError):
    """A pointer is malformed, unsigned, wrongly signed, or older than one already seen."""


class PointerRace(PointerError):
    """Another operator's publishes kept taking the serial this publish claimed."""


class DeployError(TopdeckError):
    """A deploy, rollback or status request that cannot start as asked."""


class GcError(TopdeckError):
    """A cache garbage collection that cannot run as asked; nothing was deleted."""


class InternalError(TopdeckError):
    """A bug in topdeck met while working on one host: that host fails with this reason, the others go on."""


def internal_error(where: str, error: Exception) -> InternalError:
    """The one line for an unexpected exception: what it was and the line of topdeck (or below) that raised it."""
    frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    at = f" at {Path(frame[0].filename).name}:{frame[0].lineno}" if frame else ""
    said = " ".join(str(error).split())[:200]
    return InternalError(f"{where}: internal error in topdeck ({type(error).__name__}{at}: {said}); please report it")
