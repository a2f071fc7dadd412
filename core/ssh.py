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
import errno
import hashlib
import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from topdeck.core.errors import Cancelled, ChangedHostKey, HostKeyError, SSHError, TopdeckError, UnknownHostKey
from topdeck.core.inventory import Host, SSHConfig

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

LineCallback = Callable[[str], None]


# --- host keys ------------------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """`SHA256:<base64 without padding>`, as `ssh-keygen -lf` shows it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int = 22) -> str:
    """The name OpenSSH writes into known_hosts: the address, or `[address]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


class HostKeys:
    """A known_hosts file, read once and then only looked up (safe to share between threads).

    Plain and hashed (`|1|...`) host names are understood, as paramiko's `load_system_host_keys`
    does; wildcard patterns do not match. Unlike paramiko, one line it cannot use (a `@cert-authority`
    line, an unknown key type, bad base64) does not make the whole file fail: that line is skipped
    and noted in `problems`. Keys on `@revoked` lines are never trusted. A missing file holds no keys.
    """

    def __init__(self, path: Path | None = None):
        self.path = Path(path).expanduser() if path is not None else DEFAULT_KNOWN_HOSTS.expanduser()
        self.exists = self.path.exists()
        self.problems: list[str] = []
        self._keys = paramiko.HostKeys()
        self._revoked: set[bytes] = set()
        if self.exists:
            self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise HostKeyError(f"{self.path}: cannot read known_hosts: {error.strerror}") from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            revoked = False
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                if marker != "@revoked":
                    self.problems.append(f"{self.path}:{number}: {marker} lines are not supported; skipped")
                    continue
                revoked, line = True, line.strip()
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
            except Exception:  # InvalidHostKey is not an SSHException; anything here means a bad line
                entry = None
            if entry is None or entry.key is None:
                self.problems.append(f"{self.path}:{number}: not a usable known_hosts line; skipped")
                continue
            if revoked:
                self._revoked.add(entry.key.asbytes())
                continue
            for name in entry.hostnames:
                self._keys.add(name, entry.key.get_name(), entry.key)

    def lookup(self, address: str, port: int = 22) -> list[paramiko.PKey]:
        """The keys pinned for this address and port (revoked ones left out)."""
        found = self._keys.lookup(known_hosts_name(address, port))
        if found is None:
            return []
        return [key for key in found.values() if not self.revoked(key)]

    def revoked(self, key: paramiko.PKey) -> bool:
        return key.asbytes() in self._revoked

    def check(self, host: str, address: str, port: int, key: paramiko.PKey) -> None:
        """Raise UnknownHostKey or ChangedHostKey unless `key` is pinned for this address."""
        pinned = self.lookup(address, port)
        if any(known.asbytes() == key.asbytes() for known in pinned):
            return
        if pinned:
            same_type = [known for known in pinned if known.get_name() == key.get_name()]
            raise self.changed(host, address, port, key, (same_type or pinned)[0])
        raise self.unknown(host, address, port, key)

    def unknown(self, host: str, address: str, port: int, key: paramiko.PKey) -> UnknownHostKey:
        where = _where_host(host, address, port)
        if self.revoked(key):
            message = (f"{where}: host key {key.get_name()} {fingerprint(key)} is marked @revoked in "
                       f"{self.path}; refusing to connect")
        else:
            missing = "" if self.exists else " (the file does not exist yet)"
            message = (
                f"{where}: unknown host key {key.get_name()} {fingerprint(key)}, not in {self.path}{missing}; "
                f"check it on the host (ssh-keygen -lf /etc/ssh/ssh_host_{_short_type(key)}_key.pub) "
                f"and, if it matches, accept it into {self.path}"
            )
        return UnknownHostKey(message, host=host, address=address, port=port, key=key,
                              fingerprint=fingerprint(key), known_hosts=self.path)

    def changed(self, host: str, address: str, port: int, key: paramiko.PKey,
                expected: paramiko.PKey) -> ChangedHostKey:
        where = _where_host(host, address, port)
        message = (
            f"{where}: HOST KEY CHANGED (possible man-in-the-middle attack, or the host was reinstalled): "
            f"{self.path} pins {expected.get_name()} {fingerprint(expected)}, the host presented "
            f"{key.get_name()} {fingerprint(key)}; refusing to connect (if the change is expected, remove "
            f"the old line with: ssh-keygen -R {known_hosts_name(address, port)} -f {self.path})"
        )
        return ChangedHostKey(message, host=host, address=address, port=port, key=key,
                              fingerprint=fingerprint(key), expected=expected,
                              expected_fingerprint=fingerprint(expected), known_hosts=self.path)


def accept_host_key(known_hosts: Path | str, address: str, port: int, key: paramiko.PKey) -> str:
    """Pin `key` for `address:port` by appending one line to `known_hosts` (created if missing).

    Only for an explicit decision of the operator (after checking the fingerprint); `connect` never
    calls it. Returns the line. Refuses (HostKeyError) when the file already pins a different key for
    the address: a changed key is replaced by hand, not accepted next to the old one. Does nothing if
    the key is already pinned.
    """
    path = Path(known_hosts).expanduser()
    name = known_hosts_name(address, port)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    current = HostKeys(path)
    pinned = current.lookup(address, port)
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


class _PinnedKeysOnly(paramiko.RejectPolicy):
    """What paramiko calls for a host it finds no key for: refuse, with a message that helps."""

    def __init__(self, host_keys: HostKeys, host: Host):
        self.host_keys, self.host = host_keys, host

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise self.host_keys.unknown(self.host.name, self.host.address, self.host.port, key)


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

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Session:
    """One logged-in SSH client for one host. Use as a context manager; `close` is idempotent."""

    def __init__(self, host: Host, client: paramiko.SSHClient, *, channel_timeout: float = 10.0):
        self.host = host
        self.where = _where(host)
        self._client = client
        self._channel_timeout = channel_timeout

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @property
    def active(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

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
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
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
        return Result(status, bytes(self.out.data), bytes(self.err.data))

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
        if not newline and not end:
            return
        self._head = None
        marker = PID_MARKER.encode()
        if newline and line.startswith(marker) and line[len(marker):].isdigit():
            self.pid = int(line[len(marker):])
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
    """One output stream: all its bytes, and its complete lines handed to a callback as they come."""

    def __init__(self, on_line: LineCallback | None):
        self.data = bytearray()
        self.on_line = on_line
        self._partial = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if self.on_line is None or not chunk:
            return
        self._partial += chunk
        if b"\n" not in chunk:  # a long line: keep collecting, without splitting it all again
            return
        *lines, rest = bytes(self._partial).split(b"\n")
        self._partial = bytearray(rest)
        for line in lines:
            self.on_line(_decode_line(line))

    def finish(self) -> None:
        if self.on_line is not None and self._partial:
            self.on_line(_decode_line(bytes(self._partial)))
            self._partial.clear()



def _decode_line(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


# --- connecting -----------------------------------------------------------------------------------

Connect = Callable[[Host, SSHConfig], Session]


def connect(host: Host, ssh: SSHConfig, *, host_keys: HostKeys | None = None,
            keepalive: float = KEEPALIVE) -> Session:
    """Log in to `host` as `host.user` with pinned host keys; one-line SSHError on any failure.

    `host_keys` (loaded once from `ssh.known_hosts`, shared read-only) saves reading the file per host.
    With `ssh.identity` only that key is offered; without it, the agent and ~/.ssh/id_* are tried.
    """
    host_keys = host_keys if host_keys is not None else HostKeys(ssh.known_hosts)
    where = _where(host)
    timeout = ssh.connect_timeout
    if ssh.identity is not None and not Path(ssh.identity).expanduser().is_file():
        raise SSHError(f"{where}: identity file {ssh.identity} not found")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_PinnedKeysOnly(host_keys, host))
    # Only this host's pinned keys go into the client: paramiko then prefers their key type in the
    # key exchange and raises BadHostKeyException for a different key of that type.
    pinned = client.get_host_keys()
    for key in host_keys.lookup(host.address, host.port):
        pinned.add(known_hosts_name(host.address, host.port), key.get_name(), key)
    identity = str(Path(ssh.identity).expanduser()) if ssh.identity is not None else None
    try:
        client.connect(
            host.address,
            port=host.port,
            username=host.user,
            key_filename=identity,
            look_for_keys=identity is None,
            allow_agent=identity is None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"{where}: the connection closed during login")
        # Same check again on the key actually presented, including the revoked list (paramiko only
        # compares against keys of the presented type).
        host_keys.check(host.name, host.address, host.port, transport.get_remote_server_key())
        transport.set_keepalive(max(1, int(keepalive)))
    except paramiko.BadHostKeyException as error:
        client.close()
        raise host_keys.changed(host.name, host.address, host.port, error.key, error.expected_key) from None
    except SSHError:
        client.close()
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes one line naming the host
        cause = _handshake_failure(client, error)
        client.close()
        raise SSHError(f"{where}: {_connect_failure(cause, timeout, identity)}") from None
    return Session(host, client, channel_timeout=timeout)


def _handshake_failure(client: paramiko.SSHClient, error: BaseException) -> BaseException:
    """What really went wrong when paramiko says only "No existing session": its handshake thread gave up
    (no banner in time, say) just as `connect` stopped waiting for it. The thread's own error says more."""
    transport = client.get_transport()
    if transport is None or "No existing session" not in str(error):
        return error
    transport.join(1.0)
    saved = getattr(transport, "saved_exception", None)
    return saved if isinstance(saved, BaseException) else error


def _connect_failure(error: BaseException, timeout: float, identity: str | None) -> str:
    if isinstance(error, paramiko.PasswordRequiredException):
        return (f"the identity {identity or 'key'} is protected by a passphrase; load it into ssh-agent "
                "and leave ssh.identity unset")
    if isinstance(error, paramiko.BadAuthenticationType):
        return f"the server does not accept key logins (it allows: {', '.join(error.allowed_types)})"
    if isinstance(error, paramiko.AuthenticationException):
        return "the server refused our key" + (f" ({identity})" if identity else "")
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = {_socket_reason(e) for e in error.errors.values()}
        return "unreachable: " + ", ".join(sorted(reasons))
    if isinstance(error, (socket.timeout, TimeoutError)):
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
    if "No authentication methods available" in text:
        return "no key to log in with (set ssh.identity, or load a key into ssh-agent)"
    if "protocol banner" in text:
        return f"no SSH server answered (no SSH banner within {timeout:g} s)"
    if "Authentication timeout" in text:
        return f"login did not finish within {timeout:g} s"
    return f"SSH failed: {text}"


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
