"""Reading an OpenSSH client configuration (ssh_config) as `ssh` reads it, on top of paramiko's SSHConfig.

paramiko parses the lines and matches Host and Match; `OpenSSHConfig` closes the gaps topdeck meets in real fleets:

- `Include` (several paths per line, globs sorted, `~`, relative paths under ~/.ssh, nested up to 16 deep, inside a
  Host or Match block only for the hosts that block applies to, as OpenSSH's readconf.c does). Included lines take
  their place in the file, so the first obtained value wins across files;
- `CertificateFile`, like `IdentityFile`, accumulates over every block that applies;
- a Match criterion topdeck cannot evaluate (`exec`, `localnetwork`, `tagged`, ...) is refused in one line when a
  lookup reaches it (paramiko would run `exec` or let an unknown criterion match);
- `ProxyCommand` is left unexpanded (its `%` tokens are expanded by sshroute with the final host, port and user,
  `%%` included).

The file is re-read when it, or any file it includes, changes.
"""

from __future__ import annotations

import glob
import os
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from topdeck.core.errors import SSHConfigError

MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
LIST_KEYS = ("identityfile", "certificatefile", "localforward", "remoteforward")
KNOWN_MATCH = ("all", "canonical", "final", "host", "originalhost", "user", "localuser")
USER_DIR = Path("~/.ssh")


class OpenSSHConfig(paramiko.SSHConfig):
    """paramiko's SSHConfig with Include, accumulating CertificateFile and refused Match criteria (see the module)."""

    TOKENS_BY_CONFIG_KEY = {
        **paramiko.SSHConfig.TOKENS_BY_CONFIG_KEY,
        "proxycommand": [],
        "certificatefile": ["%C", "~", "%d", "%h", "%l", "%u", "%r"],
    }

    def __init__(self) -> None:
        super().__init__()
        self.files: list[Path] = []  # every file read, the top one first
        self.globs: dict[str, tuple[str, ...]] = {}  # each Include pattern and what it found

    def read(self, path: Path) -> None:
        self._read(path, when=[], depth=0)

    def _read(self, path: Path, when: list[Any], depth: int) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else str(error)
            raise SSHConfigError(f"{path}: cannot read the SSH client configuration: {reason}") from None
        self.files.append(path)
        context: dict[str, Any] = {"host": [], "when": list(when), "config": {}, "where": str(path)}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            match = self.SETTINGS_REGEX.match(line)
            if not match:
                raise SSHConfigError(f"{where}: not a valid SSH client configuration line: {line[:80]!r}")
            key, value = match.group(1).lower(), match.group(2).strip()
            if key in ("host", "match"):
                self._config.append(context)
                context = {"host": [], "when": [*when, self._condition(key, value, where)], "config": {},
                           "where": where}
            elif key == "include":
                if depth >= MAX_DEPTH:
                    raise SSHConfigError(f"{where}: Include nested more than {MAX_DEPTH} deep (a loop?)")
                self._config.append(context)
                for found in self._include(value, where):
                    self._read(found, context["when"], depth + 1)
                context = {"host": [], "when": list(context["when"]), "config": {}, "where": where}
            else:
                _store(context["config"], key, value)
        self._config.append(context)

    def _condition(self, key: str, value: str, where: str) -> tuple[str, Any, str]:
        try:
            if key == "host":
                return ("host", self._get_hosts(value), where)
            return ("match", self._get_matches(value), where)
        except (paramiko.ssh_exception.ConfigParseError, ValueError) as error:  # shlex's "No closing quotation"...
            raise SSHConfigError(f"{where}: {key.capitalize()} {value[:80]!r}: {error}") from None

    def _include(self, value: str, where: str) -> list[Path]:
        try:
            patterns = shlex.split(value)
        except ValueError as error:
            raise SSHConfigError(f"{where}: Include {value!r}: {error}") from None
        found: list[Path] = []
        for pattern in patterns:
            full = os.path.expanduser(pattern)
            if not os.path.isabs(full):
                full = str(USER_DIR.expanduser() / full)
            names = tuple(sorted(glob.glob(full)))
            self.globs[full] = names
            found.extend(Path(name) for name in names if not Path(name).is_dir())
        return found

    def _lookup(self, hostname: str, options: Any = None, canonical: bool = False, final: bool = False) -> Any:
        """paramiko's lookup over the blocks whose every enclosing Host/Match applies (Include nests them)."""
        if options is None:
            options = paramiko.SSHConfigDict()
        for context in self._config:
            if not all(self._holds(condition, hostname, canonical, final, options)
                       for condition in context["when"]):
                continue
            for key, value in context["config"].items():
                if key not in options:
                    options[key] = value[:] if isinstance(value, list) else value
                elif key in LIST_KEYS:
                    options[key].extend(item for item in value if item not in options[key])
        if final:
            options = self._expand_variables(options, hostname)
        return options

    def _holds(self, condition: tuple[str, Any, str], hostname: str, canonical: bool, final: bool,
               options: Any) -> bool:
        kind, value, where = condition
        if kind == "host":
            return bool(self._pattern_matches(value, hostname))
        for index, criterion in enumerate(value):
            if criterion["type"] not in KNOWN_MATCH:
                before = value[:index]
                if before and not self._does_match(before, hostname, canonical, final, options):
                    return False
                raise SSHConfigError(f"{where}: Match {criterion['type']} is not supported by topdeck (it cannot "
                                     f"evaluate it as ssh would); give this host its options without it")
        return bool(self._does_match(value, hostname, canonical, final, options))


def _store(config: dict[str, Any], key: str, value: str) -> None:
    if key == "proxycommand" and value.lower() == "none":
        config.setdefault(key, None)
        return
    if value.startswith('"') and value.endswith('"') and len(value) > 1:
        value = value[1:-1]
    if key in LIST_KEYS:
        config.setdefault(key, []).append(value)
    else:
        config.setdefault(key, value)


@dataclass
class _Cached:
    config: OpenSSHConfig
    stamps: tuple[tuple[str, int], ...]


_cache: dict[Path, _Cached] = {}
_lock = threading.Lock()


def read_config(path: Path | None) -> paramiko.SSHConfig:
    """The parsed file with what it includes (an empty configuration for none); re-read when any of it changes."""
    if path is None:
        return OpenSSHConfig()
    with _lock:
        cached = _cache.get(path)
        if cached is not None and _stamps(cached.config) == cached.stamps:
            return cached.config
    try:
        path.stat()
    except OSError as error:
        raise SSHConfigError(f"{path}: cannot read the SSH client configuration: {error.strerror}") from None
    config = OpenSSHConfig()
    try:
        config.read(path)
    except SSHConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever else paramiko's parts raise on a broken file, in one line
        raise SSHConfigError(f"{path}: not a valid SSH client configuration: {error}") from None
    with _lock:
        _cache[path] = _Cached(config, _stamps(config))
    return config


def _stamps(config: OpenSSHConfig) -> tuple[tuple[str, int], ...]:
    """What the parse depended on: each file's modification time, and what each Include pattern finds."""
    stamps: list[tuple[str, int]] = []
    for file in config.files:
        try:
            stamps.append((str(file), file.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(file), -1))
    for pattern in config.globs:
        stamps.append((pattern + "\0" + "\0".join(sorted(glob.glob(pattern))), 0))
    return tuple(stamps)


# Options that change how ssh reaches or authenticates a host, which topdeck cannot do as ssh would: a lookup that
# finds one set is refused in one line (the value that leaves it off is listed; anything else is refused).
REFUSED = {
    "gssapiauthentication": ("no",),
    "hostbasedauthentication": ("no",),
    "pkcs11provider": ("none",),
    "knownhostscommand": ("none",),
    "proxyusefdpass": ("no",),
    "verifyhostkeydns": ("no",),
    "identityagent": ("SSH_AUTH_SOCK", "$SSH_AUTH_SOCK"),
}
NAMES = {"gssapiauthentication": "GSSAPIAuthentication", "hostbasedauthentication": "HostbasedAuthentication",
         "pkcs11provider": "PKCS11Provider", "knownhostscommand": "KnownHostsCommand",
         "proxyusefdpass": "ProxyUseFdpass", "verifyhostkeydns": "VerifyHostKeyDNS", "identityagent": "IdentityAgent"}


def refused(found: paramiko.SSHConfigDict) -> str:
    """What in a looked-up host's options topdeck cannot honour, as one line (empty when nothing)."""
    for key, allowed in REFUSED.items():
        value = found.get(key)
        if value is not None and str(value).strip().lower() not in {item.lower() for item in allowed}:
            return (f"{NAMES[key]} {str(value)[:60]} is not supported by topdeck (it would not reach or log in to "
                    f"the host as ssh does); set {NAMES[key]} {allowed[0]} for the hosts topdeck manages")
    return ""
