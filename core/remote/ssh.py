"""The engine's SSH access: pinned host keys, one client per host, commands run without a pty.

- Host keys come only from the configured known_hosts (read-only). Nothing is ever accepted by
  itself: an unknown key raises `UnknownHostKey`, a changed one `ChangedHostKey` (both `HostKeyError`),
  each carrying the presented key and its SHA256 fingerprint so a front end can offer
  `accept_host_key` (an explicit, separate step that `connect` never takes).
- `connect(host, ssh)` returns a `Session` (a context manager). Every failure is one `SSHError` line
  that names the host. Sessions share no mutable state: drive many hosts from a thread pool, one
  session per host.
- `Session.run` reads stdout and stderr together (reading one while the remote fills the other hangs),
  feeds stdin in the same loop, hands complete lines to callbacks as they arrive, and enforces an
  overall deadline and a cancel event; a stopped command's process group on the host gets SIGTERM.
- `remote_command(*argv)` quotes every value, so callers never build shell strings by hand.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import errno
import hashlib
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.kex_curve25519 import KexCurve25519

from topdeck.core.errors import Cancelled, ChangedHostKey, HostKeyError, SSHError, TopdeckError, UnknownHostKey
from topdeck.core.inventory import Host, Passphrase, SSHConfig
from topdeck.core.remote import hostcert
from topdeck.core.remote.hostcert import Authority
from topdeck.core.remote.sshroute import Endpoint, Route, route
from topdeck.core.strict import parse_uint

# paramiko logs transport failures (with tracebacks) at ERROR; without a handler Python's last-resort
# handler would print them on stderr, under the TUI. Our errors say what went wrong, in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
KEEPALIVE = 15.0
READ_SIZE = 65536
SEND_SIZE = 32768
TICK = 0.1
PID_MARKER = "topdeck-pid:"
PID_WAIT = 2.0
# What one command's output may cost the operator's memory, per stream (a compromised host can print without end):
MAX_LINE = 64 * 1024  # a line handed to a callback is cut here, the rest of it dropped
MAX_OUTPUT = 8 * 1024 * 1024  # kept per stream; past it the stream is dropped, but for its last line
TRUNCATED = f"[topdeck: output truncated (over {MAX_OUTPUT // 1024**2} MiB, or a line over {MAX_LINE // 1024} KiB)]"

LineCallback = Callable[[str], None]
_CERT = hostcert.CERT_SUFFIX
# The host key algorithms that can present a key of each type (an RSA key signs with either SHA-2 algorithm).
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "rsa-sha2-512" + _CERT, "rsa-sha2-256" + _CERT)}


# --- the transport ---

HOST_KEY_ALGORITHMS = (*paramiko.Transport._preferred_keys,
                       *(name + _CERT for name in paramiko.Transport._preferred_keys))


class Transport(paramiko.Transport):
    """paramiko's client transport with what OpenSSH clients do besides: the RFC 8731 kex name
    `curve25519-sha256` (paramiko knows only the libssh alias), host key algorithms in the order given per host
    (`host_key_order`), the host key blob kept (a certificate is checked by hostcert), and the reason a server gave
    for disconnecting kept."""

    _kex_info = {**paramiko.Transport._kex_info, "curve25519-sha256": KexCurve25519}
    _preferred_kex = tuple(
        name for kex in paramiko.Transport._preferred_kex
        for name in (("curve25519-sha256", kex) if kex == "curve25519-sha256@libssh.org" else (kex,)))

    def __init__(self, sock: object, host_key_order: Sequence[str] = ()) -> None:
        super().__init__(sock)
        self.host_key_order = tuple(host_key_order)
        self.host_key_blob = b""
        self.disconnect_reason = ""
        self.trusted = ""  # how its host key was trusted: "pinned", or "certified by ..."

    @property
    def preferred_keys(self) -> tuple[str, ...]:
        offered = super().preferred_keys
        return tuple(a for a in self.host_key_order if a in offered) if self.host_key_order else offered

    def _verify_key(self, host_key: bytes, sig: bytes) -> None:
        self.host_key_blob = bytes(host_key)
        super()._verify_key(host_key, sig)

    def _parse_disconnect(self, m: paramiko.Message) -> None:
        code = m.get_int()
        self.disconnect_reason = " ".join(m.get_text().split())[:200]
        self._log(logging.INFO, f"Disconnect (code {code:d}): {self.disconnect_reason}")

    def certificate(self) -> bytes:
        """The host certificate the server presented (empty when it presented a plain key)."""
        return self.host_key_blob if str(self.host_key_type).endswith(_CERT) else b""


# --- host keys ------------------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """`SHA256:<base64 without padding>`, as `ssh-keygen -lf` shows it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int = 22) -> str:
    """The name OpenSSH writes into known_hosts: the address, or `[address]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def check_certificate(blob: bytes, keys: HostKeys, name: str) -> tuple[Authority | None, str]:
    """The CA line that vouches for the host certificate `blob` under the known_hosts `name`, or None and why not."""
    key_type = paramiko.Message(blob).get_text()
    matching = [ca for ca in keys.authorities if ca.matches(name)]
    return hostcert.check(blob, key_type, matching, keys.revoked_blob, name)


class HostKeys:
    """known_hosts files, read once and then only looked up (safe to share between threads).

    `path` is the operator's own file (the one keys are pinned into); `also` are read-only files such as
    /etc/ssh/ssh_known_hosts, where NixOS's programs.ssh.knownHosts puts a fleet's keys. A key is trusted when
    any of them pins it for the name, or when it is a host certificate that a `@cert-authority` line for the name
    vouches for (core/remote/hostcert.py checks it as OpenSSH does). Plain and hashed (`|1|...`) host names are
    understood, as paramiko's `load_system_host_keys` does; wildcard patterns match only on @cert-authority lines,
    as in OpenSSH. Unlike paramiko, one line it cannot use (an unknown key type, bad base64) does not make the whole
    file fail: that line is skipped and noted in `problems`. Keys on `@revoked` lines (in any file) are never
    trusted, nor certificates they or their CA are. A missing file holds no keys.
    """

    def __init__(self, path: Path | None = None, *, also: Sequence[Path] = ()):
        self.path = Path(path).expanduser() if path is not None else DEFAULT_KNOWN_HOSTS.expanduser()
        self.also = tuple(Path(extra).expanduser() for extra in also if Path(extra).expanduser() != self.path)
        self.exists = self.path.exists()
        self.problems: list[str] = []
        self._keys = paramiko.HostKeys()
        self._revoked: set[bytes] = set()
        self.authorities: list[Authority] = []
        for file in (self.path, *self.also):
            if file.exists():
                self._load(file)

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path, *self.also)

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise HostKeyError(f"{path}: cannot read known_hosts: {error.strerror}") from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            marker = ""
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                line = line.strip()
                if marker not in ("@revoked", "@cert-authority"):
                    self.problems.append(f"{path}:{number}: {marker} is not a known_hosts marker; line skipped")
                    continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
            except Exception:  # InvalidHostKey is not an SSHException; anything here means a bad line
                entry = None
            if entry is None or entry.key is None:
                self.problems.append(f"{path}:{number}: not a usable known_hosts line; skipped")
                continue
            if marker == "@revoked":
                self._revoked.add(entry.key.asbytes())
            elif marker == "@cert-authority":
                self.authorities.append(Authority(tuple(entry.hostnames), entry.key, f"{path}:{number}"))
            else:
                for name in entry.hostnames:
                    self._keys.add(name, entry.key.get_name(), entry.key)

    def lookup(self, address: str, port: int = 22) -> list[paramiko.PKey]:
        """The keys pinned for this address and port (revoked ones left out)."""
        return self.lookup_name(known_hosts_name(address, port))

    def lookup_name(self, name: str) -> list[paramiko.PKey]:
        """The keys pinned under a known_hosts name (`host` or `[host]:port`), revoked ones left out."""
        found = self._keys.lookup(name)
        if found is None:
            return []
        return [key for key in found.values() if not self.revoked(key)]

    def authorities_for(self, name: str) -> list[Authority]:
        """The CAs whose @cert-authority patterns match a known_hosts name (revoked CAs left out)."""
        return [ca for ca in self.authorities if ca.matches(name) and not self.revoked(ca.key)]

    def revoked(self, key: paramiko.PKey) -> bool:
        return key.asbytes() in self._revoked

    def revoked_blob(self, blob: bytes) -> bool:
        return blob in self._revoked

    def host_key_order(self, name: str, offered: Sequence[str]) -> tuple[str, ...]:
        """`offered` host key algorithms reordered as OpenSSH orders them for a host: certificate algorithms first
        when a CA vouches for the name, then the algorithms of the keys pinned for it, then the rest."""
        pinned = {key.get_name() for key in self.lookup_name(name)}
        wanted = {algorithm for key_type in pinned for algorithm in _ALGORITHMS.get(key_type, (key_type,))}
        certified = any(ca.matches(name) for ca in self.authorities)  # a revoked CA too: its refusal is named
        first = [a for a in offered if certified and a.endswith(_CERT)]
        second = [a for a in offered if a in wanted]
        return tuple(dict.fromkeys([*first, *second, *offered]))

    def check(self, host: str, address: str, port: int, key: paramiko.PKey, name: str = "", *,
              trust: str = "", certificate: bytes = b"") -> str:
        """Raise UnknownHostKey or ChangedHostKey unless `key` is pinned for this address (or under `name`, the
        known_hosts name when it is not the address's own, as with HostKeyAlias), or `certificate` (the host
        certificate the key came in) is valid for it. Returns how it is trusted: "pinned", or "certified by CA
        <fingerprint> (<file:line>)"."""
        name = name or known_hosts_name(address, port)
        why = ""
        if certificate:
            authority, why = check_certificate(certificate, self, name)
            if authority is not None:
                return f"certified by {authority.key.get_name()} CA {fingerprint(authority.key)} ({authority.where})"
        pinned = self.lookup_name(name)
        if any(known.asbytes() == key.asbytes() for known in pinned):
            return "pinned"
        same_type = [known for known in pinned if known.get_name() == key.get_name()]
        if same_type:
            raise self.changed(host, address, port, key, same_type[0], name)
        raise self.unknown(host, address, port, key, name, trust=trust, others=pinned, certificate=why)

    def unknown(self, host: str, address: str, port: int, key: paramiko.PKey, name: str = "", *,
                trust: str = "", others: Sequence[paramiko.PKey] = (), certificate: str = "") -> UnknownHostKey:
        name = name or known_hosts_name(address, port)
        where = _where_host(host, address, port)
        if certificate:
            message = (f"{where}: host certificate not accepted: {certificate}; and its key {key.get_name()} "
                       f"{fingerprint(key)} is not pinned in {self._names()}; refusing to connect")
        elif self.revoked(key):
            message = (f"{where}: host key {key.get_name()} {fingerprint(key)} is marked @revoked in "
                       f"{self._names()}; refusing to connect")
        else:
            missing = "" if self.exists else " (the file does not exist yet)"
            alias = "" if name == known_hosts_name(address, port) else f" under {name}"
            kinds = sorted({known.get_name() for known in others})
            other = f" (it pins only {', '.join(kinds)} keys for it, none the host offered)" if kinds else ""
            message = (
                f"{where}: unknown host key {key.get_name()} {fingerprint(key)}, not in {self._names()}{alias}"
                f"{other}"
                f"{missing}; check it on the host (ssh-keygen -lf /etc/ssh/ssh_host_{_short_type(key)}_key.pub) "
                f"and, if it matches, accept it into {self.path}" + (f" (topdeck trust {trust})" if trust else "")
            )
        return UnknownHostKey(message, host=host, address=address, port=port, key=key,
                              fingerprint=fingerprint(key), known_hosts=self.path, key_name=name,
                              certificate=certificate)

    def changed(self, host: str, address: str, port: int, key: paramiko.PKey,
                expected: paramiko.PKey, name: str = "") -> ChangedHostKey:
        name = name or known_hosts_name(address, port)
        where = _where_host(host, address, port)
        message = (
            f"{where}: HOST KEY CHANGED (possible man-in-the-middle attack, or the host was reinstalled): "
            f"{self._names()} pins {expected.get_name()} {fingerprint(expected)}, the host presented "
            f"{key.get_name()} {fingerprint(key)}; refusing to connect (if the change is expected, remove "
            f"the old line with: ssh-keygen -R {name} -f {self.path})"
        )
        return ChangedHostKey(message, host=host, address=address, port=port, key=key,
                              fingerprint=fingerprint(key), expected=expected,
                              expected_fingerprint=fingerprint(expected), known_hosts=self.path, key_name=name)

    def _names(self) -> str:
        present = [str(file) for file in self.also if file.exists()]
        return str(self.path) if not present else f"{self.path} or {', '.join(present)}"


def accept_host_key(known_hosts: Path | str, address: str, port: int, key: paramiko.PKey,
                    name: str = "") -> str:
    """Pin `key` for `address:port` (or under the known_hosts `name`, when given) by appending one line to
    `known_hosts` (created if missing).

    Only for an explicit decision of the operator (after checking the fingerprint); `connect` never
    calls it. Returns the line. Refuses (HostKeyError) when the file already pins a different key for
    the address: a changed key is replaced by hand, not accepted next to the old one. Does nothing if
    the key is already pinned.
    """
    path = Path(known_hosts).expanduser()
    name = name or known_hosts_name(address, port)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    current = HostKeys(path)
    pinned = current.lookup_name(name)
    if any(known.asbytes() == key.asbytes() for known in pinned):
        return line
    if pinned:
        raise HostKeyError(
            f"{path}: already pins {pinned[0].get_name()} {fingerprint(pinned[0])} for {name}, not "
            f"{fingerprint(key)}; remove the old line first (ssh-keygen -R {name} -f {path})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("ab") as handle:
            if handle.tell() > 0:
                with path.open("rb") as reader:
                    reader.seek(-1, os.SEEK_END)
                    if reader.read(1) != b"\n":
                        handle.write(b"\n")
            handle.write(line.encode())
    except OSError as error:
        raise HostKeyError(f"{path}: cannot write known_hosts: {error.strerror}") from None
    return line


# --- quoting --------------------------------------------------------------------------------------


def quote(value: str | int | os.PathLike[str]) -> str:
    """One value as one word for the remote POSIX shell (shlex.quote; NUL bytes refused)."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if "\0" in text:
        raise ValueError(f"a remote command argument cannot contain a NUL byte: {text!r}")
    return shlex.quote(text)


def remote_command(*argv: str | int | os.PathLike[str]) -> str:
    """A command line that the remote shell splits back into exactly `argv`, nothing expanded."""
    if not argv:
        raise ValueError("remote_command needs at least the program")
    return " ".join(quote(arg) for arg in argv)


# --- sessions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    exit_status: int  # -1 when the remote sent none (killed by a signal)
    stdout: bytes
    stderr: bytes
    truncated: bool = False  # a stream passed MAX_OUTPUT: stdout and stderr hold only their first whole lines

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def whole_stdout(self, what: str) -> str:
        """stdout as text, for a reader of the whole answer; SSHError when it was truncated (not read in part)."""
        if self.truncated:
            raise SSHError(f"{what}: the answer is over {MAX_OUTPUT // (1024 * 1024)} MiB: not read")
        return self.stdout.decode(errors="replace")


class Session:
    """One logged-in SSH connection to one host, through its jump hosts if it has any. Use as a context
    manager; `close` (idempotent) closes the target's connection and then every jump's. `host` carries the user
    and port it logged in with."""

    def __init__(self, host: Host, transports: Sequence[paramiko.Transport], *, route: Route | None = None,
                 channel_timeout: float = 10.0):
        self.host = host
        self.route = route
        self.where = route.describe() if route is not None else _where(host)
        self._transports = tuple(transports)  # the first jump first, the target last
        self._channel_timeout = channel_timeout

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        _close_all(self._transports)

    @property
    def host_key_trust(self) -> str:
        """How the target's host key was trusted: "pinned", or "certified by <CA> (<known_hosts line>)"."""
        return str(getattr(self._transports[-1], "trusted", ""))

    @property
    def active(self) -> bool:
        return self._transports[-1].is_active()

    def run(
        self,
        command: str,
        stdin: bytes | None = None,
        *,
        on_stdout_line: LineCallback | None = None,
        on_stderr_line: LineCallback | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Run `command` (build it with `remote_command`) through the login shell, no pty; wait for it.

        `stdin` is sent, then end-of-file (none given: end-of-file at once). Complete lines (without
        the newline, UTF-8 with replacement) go to the callbacks as they arrive; a last unterminated
        line comes at the end. After `timeout` seconds: SSHError; once `cancel` is set: Cancelled.
        Either way the command's process group on the host gets SIGTERM (through a second channel,
        since sshd refuses signal requests for root sessions) and the channel is closed.
        A non-zero exit status is not an error here: look at `Result.exit_status`.
        """
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{self.where}: cancelled before {_short(command)} started")
        deadline = None if timeout is None else time.monotonic() + timeout
        # The login shell prints its pid first (it leads the process group sshd made), so a stop can
        # kill the whole command; the line is taken out of stdout.
        channel = self._open_channel(f"echo {PID_MARKER}$$\n{command}")
        running = _Running(self, channel, command, on_stdout_line, on_stderr_line, timeout, deadline, cancel)
        try:
            return running.wait(stdin)
        finally:
            channel.close()

    def _open_channel(self, command: str) -> paramiko.Channel:
        transport = self._transports[-1]
        if not transport.is_active():
            raise SSHError(f"{self.where}: the SSH connection is closed")
        try:
            channel = transport.open_session(timeout=self._channel_timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SSHError(f"{self.where}: cannot start a command: {_one_line(error)}") from None
        return channel

    def _kill_group(self, pid: int) -> None:
        """SIGTERM a stopped command's process group, best effort, bounded by the channel timeout."""
        try:
            # The group only: sshd made the login shell a session and group leader, and a group id cannot be
            # reused while any of its members lives. A bare `kill PID` could hit an unrelated process that got
            # the pid after the shell ended (on the lab, which shares one pid space, any process of this machine).
            channel = self._open_channel(f"kill -TERM -- -{pid} 2>/dev/null")
        except SSHError:
            return
        try:
            channel.shutdown_write()
            channel.status_event.wait(self._channel_timeout)
        finally:
            channel.close()


class _Running:
    """One command in flight: feeds stdin and reads both streams in one loop until both end."""

    def __init__(self, session: Session, channel: paramiko.Channel, command: str,
                 on_stdout_line: LineCallback | None, on_stderr_line: LineCallback | None,
                 timeout: float | None, deadline: float | None, cancel: threading.Event | None):
        self.session, self.channel, self.command = session, channel, command
        self.out, self.err = _Stream(on_stdout_line), _Stream(on_stderr_line)
        self.timeout, self.deadline, self.cancel = timeout, deadline, cancel
        self.pid: int | None = None
        self._head: bytearray | None = bytearray()  # stdout until the pid line is seen

    def wait(self, stdin: bytes | None) -> Result:
        channel = self.channel
        pending = memoryview(stdin or b"")
        if not pending:
            channel.shutdown_write()
        while True:
            self._check_stop()
            if pending:
                pending = self._feed(pending)
            eof = channel.eof_received or channel.closed  # read before draining: no data after EOF
            got = self._drain()
            if eof and not got and not pending:
                break
            if not got and not (pending and channel.send_ready()):
                left = TICK if self.deadline is None else self.deadline - time.monotonic()
                select.select([channel], [], [], 0.01 if pending else max(0.0, min(TICK, left)))
        self._stdout(b"", end=True)
        self.out.finish()
        self.err.finish()
        while not channel.exit_status_ready():
            self._check_stop()
            channel.status_event.wait(TICK)
        status = channel.recv_exit_status()
        if status == -1 and not self.session.active:
            raise SSHError(f"{self.session.where}: connection lost while running {_short(self.command)}")
        return Result(status, bytes(self.out.data), bytes(self.err.data), self.out.truncated or self.err.truncated)

    def _feed(self, pending: memoryview) -> memoryview:
        channel = self.channel
        if channel.closed:  # the command is gone; nobody reads the rest
            return pending[:0]
        while pending and channel.send_ready():
            try:
                sent = channel.send(bytes(pending[:SEND_SIZE]))
            except OSError:
                return pending[:0]
            if sent <= 0:
                break
            pending = pending[sent:]
        if not pending:
            channel.shutdown_write()
        return pending

    def _drain(self) -> bool:
        """Read whatever both streams hold now; True if anything was read."""
        channel, got = self.channel, False
        while channel.recv_ready() or channel.recv_stderr_ready():
            if channel.recv_ready():
                self._stdout(channel.recv(READ_SIZE))
                got = True
            if channel.recv_stderr_ready():
                self.err.add(channel.recv_stderr(READ_SIZE))
                got = True
        return got

    def _stdout(self, chunk: bytes, end: bool = False) -> None:
        if self._head is None:
            self.out.add(chunk)
            return
        self._head += chunk
        line, newline, rest = bytes(self._head).partition(b"\n")
        if not newline and not end and len(self._head) <= MAX_LINE:
            return
        self._head = None
        marker = PID_MARKER.encode()
        pid = parse_uint(line[len(marker):].decode("ascii", errors="replace")) if line.startswith(marker) else None
        if newline and pid is not None:
            self.pid = pid
            self.out.add(rest)
        else:  # not the line we sent (a noisy shell rc file?): pass it all on, no kill on stop
            self.out.add(line + newline + rest)

    def _check_stop(self) -> None:
        stop: TopdeckError | None = None
        if self.cancel is not None and self.cancel.is_set():
            stop = Cancelled(f"{self.session.where}: cancelled {_short(self.command)}")
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            stop = SSHError(f"{self.session.where}: {_short(self.command)} timed out after {self.timeout:g} s")
        if stop is None:
            return
        still_running = not self.channel.exit_status_ready()
        if still_running and self._head is not None:
            self._await_pid()
        self.channel.close()
        if still_running and self.pid is not None:
            self.session._kill_group(self.pid)
        raise stop


    def _await_pid(self) -> None:
        """A stop came before the pid line: give the host a moment to send it (stdout is kept)."""
        limit = time.monotonic() + PID_WAIT
        while self._head is not None and not self.channel.eof_received and time.monotonic() < limit:
            if not self._drain():
                select.select([self.channel], [], [], 0.05)


class _Stream:
    """One output stream: its bytes (at most MAX_OUTPUT, then cut back to a whole line) and its lines (each cut at
    MAX_LINE) handed to a callback as they come. Past MAX_OUTPUT the callback gets TRUNCATED once, then only the
    stream's last line, at its end: a host script's result line is still read, in bounded memory."""

    def __init__(self, on_line: LineCallback | None, limit: int = MAX_OUTPUT, line_limit: int = MAX_LINE):
        self.data = bytearray()
        self.on_line = on_line
        self.limit, self.line_limit = limit, line_limit
        self.truncated = False
        self._line = bytearray()  # the line being read, at most line_limit bytes of it
        self._cut = False  # the line being read passed line_limit
        self._dropped = False  # TRUNCATED was handed on
        self._last: bytes | None = None  # past the limit: the last whole line, kept for the end
        self._seen = 0

    def add(self, chunk: bytes) -> None:
        if self.on_line is None:
            self._keep(chunk)
            return
        start = 0
        while start < len(chunk):
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline
            self._keep(chunk[start:end + 1])
            room = self.line_limit - len(self._line)
            self._line += chunk[start:start + max(0, room)] if end - start > room else chunk[start:end]
            self._cut = self._cut or end - start > room
            if newline < 0:
                break
            self._end_line()
            start = newline + 1
        if self._cut or self.truncated:
            self._drop()

    def finish(self) -> None:
        if self._line or self._cut:
            self._end_line()
        if self._last is not None:
            self._hand(self._last)
            self._last = None

    def _keep(self, chunk: bytes) -> None:
        self._seen += len(chunk)
        if self.truncated:
            return
        if self._seen <= self.limit:
            self.data += chunk
            return
        self.data += chunk[:self.limit - len(self.data)]
        del self.data[self.data.rfind(b"\n") + 1:]
        self.truncated = True

    def _end_line(self) -> None:
        line, cut = bytes(self._line), self._cut
        self._line.clear()
        self._cut = False
        if self.truncated:
            self._last = line
        else:
            self._hand(line)
        if cut or self.truncated:
            self._drop()

    def _drop(self) -> None:
        """Say once that this stream lost something."""
        if not self._dropped:
            self._dropped = True
            self._hand(TRUNCATED.encode())

    def _hand(self, line: bytes) -> None:
        if self.on_line is not None:
            self.on_line(_decode_line(line))


def _decode_line(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


# --- connecting -----------------------------------------------------------------------------------

Connect = Callable[[Host, SSHConfig], Session]
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


def connect(host: Host, ssh: SSHConfig, *, host_keys: HostKeys | None = None,
            keepalive: float = KEEPALIVE) -> Session:
    """Log in to `host` where its route says (ssh_config aliases, jump hosts), every hop's host key checked
    against the known hosts; one-line SSHError on any failure, naming the hop that failed.

    `host_keys` (loaded once, shared read-only) saves reading the known_hosts files per host; without it they
    are those of `[ssh] known_hosts` (or ssh_config's UserKnownHostsFile, or ~/.ssh/known_hosts) and
    GlobalKnownHostsFile (/etc/ssh/ssh_known_hosts). Keys offered as OpenSSH offers them (`authenticate`):
    ssh-agent's first, then key files (with their user certificates), those with a passphrase last, asked through
    `ssh.passphrase`.
    """
    path = route(host, ssh)
    transports: list[paramiko.Transport] = []
    try:
        sock: socket.socket | paramiko.Channel | None = None
        for index, hop in enumerate(path.hops):
            transports.append(_login(path, hop, sock, ssh, host_keys, keepalive))
            if index + 1 < len(path.hops):
                sock = tunnel(path, transports[-1], hop, path.hops[index + 1], ssh.connect_timeout)
    except BaseException:
        _close_all(transports)
        raise
    # The host as logged in: its user and port are what the route gave (ssh_config's User, say), which
    # decides whether privileged steps need sudo.
    logged_in = dataclasses.replace(host, user=path.target.user, port=path.target.port)
    return Session(logged_in, transports, route=path, channel_timeout=ssh.connect_timeout)


def host_keys_for(endpoint: Endpoint) -> HostKeys:
    """The known hosts that vouch for `endpoint`: its first user file (where keys are pinned), then the others."""
    user = endpoint.user_known_hosts
    return HostKeys(user[0] if user else None, also=(*user[1:], *endpoint.global_known_hosts))


def hop_name(path: Route, hop: Endpoint) -> str:
    """How a message names a hop: the route itself for the target, `HOST: jump host NAME (...)` for a jump."""
    if hop == path.target:
        return path.describe()
    return f"{path.host}: jump host {hop.name} ({hop.user}@{hop.hostname}{'' if hop.port == 22 else f':{hop.port}'})"


def hop_label(path: Route, hop: Endpoint) -> str:
    """How a host key message names a hop (it adds the address itself): the host, or `HOST: jump host NAME`."""
    return path.host if hop == path.target else f"{path.host}: jump host {hop.name}"


def open_transport(path: Route, hop: Endpoint, sock: socket.socket | paramiko.Channel | None,
                   timeout: float, keys: HostKeys | None = None) -> Transport:
    """An SSH transport to `hop` whose key exchange is done (not yet checked, not logged in): reached through its
    ProxyCommand, or `sock` (a jump host's channel), or a TCP connection; its ConnectTimeout wins over `timeout`;
    host key algorithms ordered by what `keys` pins or certifies for it, as OpenSSH orders them."""
    where = hop_name(path, hop)
    timeout = hop.connect_timeout or timeout
    keys = keys if keys is not None else host_keys_for(hop)
    if sock is None:
        sock = _dial(path, hop, timeout)
    order = keys.host_key_order(hop.key_name, HOST_KEY_ALGORITHMS)
    transport = Transport(sock, order)
    transport.banner_timeout = transport.auth_timeout = transport.handshake_timeout = timeout
    transport.channel_timeout = timeout
    start = time.monotonic()
    try:
        transport.start_client(timeout=timeout)
        if transport.host_key is None:  # start_client gives up silently at its timeout
            raise _handshake_failure(transport)
    except Exception as error:  # noqa: BLE001 - every failure becomes one line naming the hop
        transport.close()
        if time.monotonic() - start >= timeout * 0.95 and "banner" in str(error):
            error = TimeoutError("no SSH banner")  # paramiko says the same for a closed connection and a silent one
        raise SSHError(f"{where}: {_connect_failure(error, timeout, transport, sock)}") from None
    return transport


def _handshake_failure(transport: paramiko.Transport) -> BaseException:
    """Why a key exchange did not finish in time: the handshake thread's own error (no banner in time, say), which
    it raises just as start_client stops waiting, or else a timeout."""
    transport.join(1.0)
    saved = getattr(transport, "saved_exception", None)
    return saved if isinstance(saved, BaseException) else paramiko.SSHException("No existing session")


def _login(path: Route, hop: Endpoint, sock: socket.socket | paramiko.Channel | None, ssh: SSHConfig,
           host_keys: HostKeys | None, keepalive: float) -> paramiko.Transport:
    keys = host_keys if host_keys is not None else host_keys_for(hop)
    transport = open_transport(path, hop, sock, ssh.connect_timeout, keys)
    try:
        transport.trusted = keys.check(hop_label(path, hop), hop.hostname, hop.port, transport.get_remote_server_key(),
                                       hop.key_name, trust=path.host, certificate=transport.certificate())
        authenticate(path, hop, transport, ssh)
        transport.set_keepalive(max(1, int(keepalive)))
    except BaseException:
        transport.close()
        raise
    return transport


def _dial(path: Route, hop: Endpoint, timeout: float) -> socket.socket | paramiko.ProxyCommand:
    where = hop_name(path, hop)
    if hop.proxy_command:
        # as OpenSSH runs it: `sh -c "exec COMMAND"`, its stdin and stdout the connection
        try:
            proxy = paramiko.ProxyCommand(remote_command("/bin/sh", "-c", f"exec {hop.proxy_command}"))
        except Exception as error:  # noqa: BLE001
            raise SSHError(f"{where}: ProxyCommand {hop.proxy_command!r} could not start: {_one_line(error)}") from None
        proxy.settimeout(timeout)
        return proxy
    try:
        return socket.create_connection((hop.hostname, hop.port), timeout=timeout)
    except socket.gaierror as error:
        raise SSHError(f"{where}: {_unresolved(path, hop, error)}") from None
    except Exception as error:  # noqa: BLE001
        raise SSHError(f"{where}: {_connect_failure(error, timeout)}") from None


def _unresolved(path: Route, hop: Endpoint, error: socket.gaierror) -> str:
    if hop.aliased:
        return f"unreachable: cannot resolve {hop.hostname!r}, the HostName of {hop.name} ({error.strerror})"
    config = f"no Host block in {path.config} gives it a HostName" if path.config else "no ssh_config is read"
    return f"unknown host {hop.name!r}: not an IP address, not a name that resolves ({error.strerror}), and {config}"


def tunnel(path: Route, transport: paramiko.Transport, jump: Endpoint, hop: Endpoint,
           timeout: float) -> paramiko.Channel:
    """A channel from `jump` to `hop`'s SSH port (what `ssh -W` asks a jump host for)."""
    try:
        return transport.open_channel("direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout)
    except paramiko.ChannelException as error:
        reason = {1: "the jump host does not allow forwarding (AllowTcpForwarding?)", 2: "connection failed"}
        raise SSHError(f"{hop_name(path, hop)}: unreachable from jump host {jump.name}: "
                       f"{reason.get(error.code, error.text)}") from None
    except Exception as error:  # noqa: BLE001
        raise SSHError(f"{hop_name(path, hop)}: unreachable from jump host {jump.name}: "
                       f"{_connect_failure(error, timeout)}") from None


# --- logging in -------------------------------------------------------------------------------------


class AskOnce:
    """A `passphrase` callback that asks `ask` at most once per key file, one question at a time (hosts
    connect in parallel). `ask(path)` returns the passphrase or raises Cancelled."""

    def __init__(self, ask: Passphrase):
        self._ask = ask
        self._known: dict[Path, str | Cancelled] = {}  # a refusal is remembered too: not asked again per host
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        with self._lock:
            if path not in self._known:
                try:
                    self._known[path] = self._ask(path)
                except Cancelled as refused:
                    self._known[path] = refused
            answer = self._known[path]
        if isinstance(answer, Cancelled):
            raise Cancelled(str(answer))
        return answer


def authenticate(path: Route, hop: Endpoint, transport: paramiko.Transport, ssh: SSHConfig) -> None:
    """Offer keys as OpenSSH does: ssh-agent's first (with IdentitiesOnly, only those an IdentityFile names, by its
    private key's `.pub` or a `.pub` IdentityFile), then the key files not in the agent, those with a passphrase
    last; a key file with a user certificate (CertificateFile, or `KEY-cert.pub` beside it) is offered with it
    first."""
    where = hop_name(path, hop)
    files = _identity_files(hop, where)
    blobs = _public_blobs(files)
    tried: list[str] = []
    with contextlib.closing(paramiko.Agent()) as agent:
        held = {key.asbytes() for key in agent.get_keys()}
        for key in agent.get_keys():
            if hop.identities_only and key.asbytes() not in blobs.values():
                continue
            if _offer(transport, hop, key, where, tried, f"agent key {fingerprint(key)}"):
                return
    locked: list[Path] = []
    for file in files:
        if _is_public(file) or blobs.get(file) in held:  # a .pub names an agent's key; the agent offered it
            continue
        key = _load_key(file, None, where)
        if key is None:
            locked.append(file)
        elif _offer_file(transport, hop, key, file, where, tried):
            return
    for file in locked:
        if ssh.passphrase is None:
            raise SSHError(f"{where}: the key {file} is protected by a passphrase and there is no terminal to ask "
                           f"for it: load it into ssh-agent (ssh-add {file})")
        try:
            given = ssh.passphrase(file)
        except Cancelled as refused:  # this host fails; the others go on
            raise SSHError(f"{where}: {refused}") from None
        key = _load_key(file, given, where)
        if key is not None and _offer_file(transport, hop, key, file, where, tried):
            return
    if not tried:
        missing = [str(file) for file in files if _is_public(file)]
        raise SSHError(f"{where}: no key to log in with (" + (
            f"ssh-agent does not hold {', '.join(missing)}" if missing else
            "set ssh.identity or IdentityFile, or load a key into ssh-agent") + ")")
    raise SSHError(f"{where}: the server refused our keys ({', '.join(tried)})")


def _offer_file(transport: paramiko.Transport, hop: Endpoint, key: paramiko.PKey, file: Path, where: str,
                tried: list[str]) -> bool:
    """A key file's key: with each user certificate made for it first, then plain."""
    for certificate in dict.fromkeys((*hop.certificates, file.with_name(file.name + "-cert.pub"))):
        certified = copy.copy(key)
        try:
            certified.load_certificate(str(certificate))
        except (ValueError, OSError, paramiko.SSHException):
            continue  # missing, unreadable, or a certificate for another key
        if _offer(transport, hop, certified, where, tried, f"{file} with certificate {certificate}"):
            return True
    return _offer(transport, hop, key, where, tried, str(file))


def _is_public(file: Path) -> bool:
    """An IdentityFile that holds only a public key (its private half is in an agent or a token)."""
    try:
        with file.open("rb") as handle:
            start = handle.read(64)
    except OSError:
        return False
    return bool(re.match(rb"(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ ", start))


def _identity_files(hop: Endpoint, where: str) -> list[Path]:
    if hop.identities:
        for file in hop.identities:
            if not file.is_file():
                raise SSHError(f"{where}: identity file {file} not found")
        return list(hop.identities)
    return [file for file in (Path(name).expanduser() for name in DEFAULT_IDENTITIES) if file.is_file()]


def _public_blobs(files: Sequence[Path]) -> dict[Path, bytes]:
    """Each key file's public key: the file itself when it is a `.pub`, else `KEY.pub` beside it (where readable)."""
    blobs = {}
    for file in files:
        public = file if _is_public(file) else file.with_name(file.name + ".pub")
        try:
            key_type, data = public.read_text().split()[:2]
            blobs[file] = paramiko.PKey.from_type_string(key_type, base64.b64decode(data)).asbytes()
        except (OSError, ValueError, paramiko.SSHException):
            continue
    return blobs


def _load_key(file: Path, passphrase: str | None, where: str) -> paramiko.PKey | None:
    """The private key in `file`; None when it needs a passphrase that was not given."""
    try:
        return paramiko.PKey.from_path(file, passphrase.encode() if passphrase is not None else None)
    except (paramiko.PasswordRequiredException, TypeError):  # cryptography says TypeError for OpenSSH-format keys
        if passphrase is None:
            return None
        raise SSHError(f"{where}: the passphrase given for {file} is wrong") from None
    except (paramiko.SSHException, ValueError) as error:
        if passphrase is not None:
            raise SSHError(f"{where}: the passphrase given for {file} is wrong") from None
        raise SSHError(f"{where}: cannot use the key {file}: {_one_line(error)}") from None
    except OSError as error:
        raise SSHError(f"{where}: cannot read the key {file}: {error.strerror}") from None


def _offer(transport: paramiko.Transport, hop: Endpoint, key: paramiko.PKey, where: str, tried: list[str],
           label: str) -> bool:
    """Try one key; True once logged in."""
    tried.append(label)
    try:
        transport.auth_publickey(hop.user, key)
    except paramiko.BadAuthenticationType as error:
        raise SSHError(f"{where}: the server does not accept key logins (it allows: "
                       f"{', '.join(error.allowed_types)})") from None
    except paramiko.AuthenticationException:
        return False
    except Exception as error:  # noqa: BLE001
        raise SSHError(f"{where}: {_connect_failure(error, transport.auth_timeout or 10.0, transport)}") from None
    return transport.is_authenticated()


def _close_all(transports: Sequence[paramiko.Transport]) -> None:
    for transport in reversed(transports):
        transport.close()


def _connect_failure(error: BaseException, timeout: float, transport: paramiko.Transport | None = None,
                     sock: object = None) -> str:
    proxy = _proxy_failure(sock)
    if proxy:
        return proxy
    if getattr(transport, "disconnect_reason", ""):
        return _disconnected(str(getattr(transport, "disconnect_reason", "")))
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = {_socket_reason(e) for e in error.errors.values()}
        return "unreachable: " + ", ".join(sorted(reasons))
    if isinstance(error, (socket.timeout, TimeoutError)):
        if "banner" in str(error):
            return f"no SSH server answered (no SSH banner within {timeout:g} s)"
        return f"unreachable: no answer within {timeout:g} s"
    if isinstance(error, socket.gaierror):
        return f"unreachable: cannot resolve the address ({error.strerror})"
    if isinstance(error, OSError):
        return f"unreachable: {_socket_reason(error)}"
    if isinstance(error, EOFError):
        return "the server closed the connection during login"
    text = _one_line(error)
    if "No existing session" in text:
        return f"the SSH handshake did not finish within {timeout:g} s"
    if "protocol banner" in text:
        if "timed out" in text.lower() or "timeout" in text.lower():
            return f"no SSH server answered (no SSH banner within {timeout:g} s)"
        return ("the server closed the connection before its SSH banner (an OpenSSH server does this to a source "
                "it penalises, PerSourcePenalties, or when over MaxStartups)")
    if "Authentication timeout" in text:
        return f"login did not finish within {timeout:g} s"
    if "Negotiation timed out" in text or "timed out" in text.lower():
        return f"the SSH handshake did not finish within {timeout:g} s"
    if "Incompatible ssh" in text or "no acceptable" in text.lower():
        return f"no SSH algorithm in common with the server ({text})"
    return f"SSH failed: {text}"


def _disconnected(reason: str) -> str:
    if "too many authentication failures" in reason.lower():
        return ("the server refused further keys: too many authentication failures (its MaxAuthTries; each also "
                "counts toward OpenSSH's PerSourcePenalties)")
    if "penalty" in reason.lower():
        return f"the server refuses this source for now (OpenSSH PerSourcePenalties: {reason!r})"
    return f"the server closed the connection: {reason!r}"


def _proxy_failure(sock: object) -> str:
    """Why a ProxyCommand connection ended: its exit status and the last line it wrote on stderr."""
    if not isinstance(sock, paramiko.ProxyCommand):
        return ""
    process = sock.process
    try:
        status = process.wait(0.5)
    except Exception:  # noqa: BLE001 - still running: the failure was the server's
        return ""
    last = ""
    with contextlib.suppress(Exception):
        lines = process.stderr.read(65536).decode(errors="replace").strip().splitlines()
        last = " ".join(lines[-1].split())[:200] if lines else ""
    return f"ProxyCommand exited with status {status}" + (f": {last!r}" if last else " before the SSH banner")


def _socket_reason(error: OSError) -> str:
    names = {
        errno.ECONNREFUSED: "connection refused",
        errno.EHOSTUNREACH: "no route to host",
        errno.ENETUNREACH: "network unreachable",
        errno.ETIMEDOUT: "connection timed out",
        errno.ECONNRESET: "connection reset",
    }
    if error.errno in names:
        return names[error.errno]
    return (error.strerror or str(error) or type(error).__name__).lower()


def _where(host: Host) -> str:
    return f"{host.name} ({host.user}@{host.address}{'' if host.port == 22 else f':{host.port}'})"


def _where_host(name: str, address: str, port: int) -> str:
    return f"{name} ({address}{'' if port == 22 else f':{port}'})"


def _short_type(key: paramiko.PKey) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(name, "ecdsa" if "ecdsa" in name else name)


def _short(command: str, limit: int = 60) -> str:
    text = " ".join(command.split())
    return f"`{text if len(text) <= limit else text[: limit - 1] + '…'}`"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
