"""`topdeck exec`: one command on many hosts over the deploy's SSH path, each host's output live, then a summary
that groups the hosts whose exit code and output are the same.

The command is an argv: each word is quoted once for the remote shell (`remote_command`) and never split again,
so `exec -- sh -c 'a | b'` is how a pipeline is asked for. Where host.toml says `sudo = true`, it runs through
`sudo -n`, as every privileged step of a deploy does.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from topdeck.core.errors import DeployError, TopdeckError
from topdeck.core.events import Emit, LogLine, ignore
from topdeck.core.inventory import LARGEST_SETTING, Host, SSHConfig
from topdeck.core.remote.hostpool import each_host
from topdeck.core.remote.hostverbs import sudo_argv
from topdeck.core.remote.ssh import Connect, remote_command

MAX_KEPT = 256 * 1024  # of each host's output, kept for the summary (the live lines show it all)
CUT = "[topdeck: output cut for the summary]"


@dataclass(frozen=True)
class HostExit:
    """How the command ended on one host. `exit_code` is None when it did not run to its end (`error` says why:
    unreachable, timed out, cancelled); -1 when the host sent no exit status (killed by a signal)."""

    host: str
    exit_code: int | None
    output: tuple[str, ...] = ()  # stdout and stderr lines, in the order they arrived
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error

    @property
    def ending(self) -> str:
        """How it ended, in words: `exit 0`, `exit 3`, `killed by a signal` or the error."""
        if self.error:
            return self.error
        return "killed by a signal" if self.exit_code == -1 else f"exit {self.exit_code}"


@dataclass(frozen=True)
class ExecGroup:
    """Hosts whose command ended the same way with the same output."""

    hosts: tuple[str, ...]
    exit_code: int | None
    output: tuple[str, ...]
    ending: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.ending == "exit 0"


@dataclass(frozen=True)
class ExecResult:
    command: tuple[str, ...]
    runs: tuple[HostExit, ...]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(run.ok for run in self.runs)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(run.host for run in self.runs if not run.ok)

    def groups(self) -> tuple[ExecGroup, ...]:
        """The hosts grouped by exit code, error and output; groups in the order of their first host."""
        grouped: dict[tuple[int | None, str, tuple[str, ...]], list[str]] = {}
        for run in self.runs:
            grouped.setdefault((run.exit_code, run.ending, run.output), []).append(run.host)
        return tuple(ExecGroup(tuple(hosts), code, output, ending)
                     for (code, ending, output), hosts in grouped.items())


def check_command(argv: Sequence[str]) -> tuple[str, ...]:
    """The command as the hosts will run it: at least a program, no NUL byte (it cannot pass through a shell)."""
    if not argv:
        raise DeployError("exec needs a command after `--` (as: topdeck exec --on web-1 -- uptime)")
    if not argv[0]:
        raise DeployError("exec: the program (the first word after `--`) is empty")
    bad = next((index for index, word in enumerate(argv) if "\0" in word), None)
    if bad is not None:
        raise DeployError(f"exec: word {bad + 1} of the command holds a NUL byte, which no remote shell can pass")
    return tuple(argv)


def split_command_line(line: str) -> tuple[str, ...]:
    """A command typed as one line (the TUI's prompt) split once, as a POSIX shell splits it, into the argv that
    is then quoted once for the host: `systemctl status 'my unit'` is three words."""
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise DeployError(f"exec: cannot read the command ({error}): close its quotes") from None
    return check_command(words)


def check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not 0 < timeout <= LARGEST_SETTING:
        raise DeployError(f"timeout {timeout:g}: must be more than 0 seconds and at most {LARGEST_SETTING}",
                          setting="timeout")
    return timeout


def exec_command(host: Host, argv: Sequence[str]) -> str:
    """The remote command line: the argv quoted once, behind `sudo -n` where the host asks for it."""
    return remote_command(*sudo_argv(host), *check_command(argv))


def exec_hosts(hosts: Sequence[Host], argv: Sequence[str], ssh: SSHConfig, *, connect: Connect,
               parallel: int = 8, timeout: float | None = None, emit: Emit = ignore,
               cancel: threading.Event | None = None, clock: Callable[[], float] = time.monotonic) -> ExecResult:
    """Run the command on every host, `parallel` at a time; each output line is emitted as it comes, as a
    LogLine naming its host. A host that cannot be reached or times out has its reason as its result."""
    command = check_command(argv)
    check_timeout(timeout)
    lock = threading.Lock()

    def one(host: Host) -> HostExit:
        started = clock()
        kept = _Kept()

        def line(text: str) -> None:
            kept.add(text)
            with lock:
                emit(LogLine(text, host.name))

        try:
            with connect(host, ssh) as session:
                result = session.run(exec_command(session.host, command), on_stdout_line=line,
                                     on_stderr_line=line, timeout=timeout, cancel=cancel)
        except TopdeckError as error:
            return HostExit(host.name, None, kept.lines(), str(error), clock() - started)
        return HostExit(host.name, result.exit_status, kept.lines(), "", clock() - started)

    results = each_host(hosts, one, parallel=parallel, cancel=cancel, cancelled="cancelled before it started",
                        thread_name="topdeck-exec")
    runs = tuple(result if isinstance(result, HostExit) else HostExit(host.name, None, (), str(result))
                 for host, result in zip(hosts, results, strict=True))
    return ExecResult(command, runs)


class _Kept:
    """A host's output lines for the summary, up to MAX_KEPT characters."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._cut = False

    def add(self, text: str) -> None:
        if self._size + len(text) > MAX_KEPT:
            self._cut = True
            return
        self._size += len(text) + 1
        self._lines.append(text)

    def lines(self) -> tuple[str, ...]:
        return (*self._lines, CUT) if self._cut else tuple(self._lines)
