"""The host script's verbs (core/remote/host.sh, sent over SSH on stdin): the remote command that runs one, and what it
prints read into records.

The wire protocol is host.sh's and does not change (hosts may run an older copy): tab-separated lines, the first
field naming the line's kind; a verb that fails prints `result failed REASON`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from topdeck.core.errors import DeployError
from topdeck.core.inventory import Host
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.remote.ssh import Result, Session, remote_command
from topdeck.core.strict import parse_uint
from topdeck.core.vocabulary import Outcome

WRAPPER = ('umask 077; d=/run/topdeck; [ "$(id -u)" = 0 ] || d=${TMPDIR:-/tmp}; '
           'mkdir -p "$d" && f=$(mktemp "$d/topdeck-host.XXXXXX") || exit 1; '
           'cat > "$f"; sh "$f" "$@"; status=$?; rm -f "$f"; exit $status')
VERB_TIMEOUT = 60.0


@functools.cache
def host_script() -> bytes:
    return resources.files("topdeck.core.remote").joinpath("host.sh").read_bytes()


def sudo_argv(host: Host) -> list[str]:
    """What goes before a privileged command on the host: `sudo -n` where host.toml asks for sudo, else nothing."""
    return ["sudo", "-n"] if host.sudo and host.user != "root" else []


def host_command(host: Host, verb: str, *args: str | int) -> str:
    """The remote command that runs host.sh (sent on stdin) with `verb` and `args`, through sudo if asked."""
    return remote_command(*sudo_argv(host), "sh", "-c", WRAPPER, "topdeck-host", verb, *args)


def run_verb(session: Session, verb: str, *args: str | int, timeout: float | None = VERB_TIMEOUT,
             on_line: Callable[[str], None] | None = None, on_stderr_line: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> Result:
    """Run one verb of the host script on the session's host; every argument is quoted for the remote shell."""
    return session.run(host_command(session.host, verb, *args), stdin=host_script(), on_stdout_line=on_line,
                       on_stderr_line=on_stderr_line, timeout=timeout, cancel=cancel)


def _lines(result: Result, host: Host, verb: str) -> list[list[str]]:
    return [line.split("\t") for line in result.whole_stdout(f"{host.name}: {verb}").splitlines()]


def _failed(host: Host, fields: list[str], verb: str) -> DeployError:
    return DeployError(f"{host.name}: {fields[-1] if len(fields) > 1 and fields[-1] else f'{verb} failed'}")


# --- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LastRun:
    """The last run the host recorded (its `last-run` line)."""

    run: str
    time: str
    outcome: str
    target: str = ""


@dataclass(frozen=True)
class StatusReport:
    """What `status` prints: the host's systems, its generation and boot, its last run, its lock."""

    current: str = ""
    booted: str = ""
    profile: str = ""
    generation: int = 0
    boot_id: str = ""
    last_run: LastRun | None = None
    specialisation: str = ""  # the specialisation of `system` that runs ("" for none)
    system: str = ""  # the system whose specialisation runs ("" when none does)
    needs_reboot: str = ""  # the link (kernel, initrd, ...) that differs from the booted system ("" for none)
    deploying: str | None = None  # the lock's owner, while a run holds the host's lock
    failure: str = ""  # why the script failed, when it did
    agent: str = ""  # the pull agent's last outcome on the host ("agent: switched to web #7 at …"), "" for none


def status(session: Session) -> StatusReport:
    return parse_status(run_verb(session, "status").whole_stdout(f"{session.host.name}: status"))


def parse_status(output: str) -> StatusReport:
    fields = dict((line.split("\t", 1) + [""])[:2] for line in output.splitlines())
    last = fields.get("last-run", "").split("\t")
    reboot = fields.get("needs-reboot", "").split("\t")
    result = fields.get("result")
    return StatusReport(
        current=fields.get("current", ""),
        booted=fields.get("booted", ""),
        profile=fields.get("profile", ""),
        generation=parse_uint(fields.get("generation", "")) or 0,
        boot_id=fields.get("boot-id", "").strip(),
        last_run=LastRun(*last[:4]) if len(last) >= 3 else None,
        specialisation=fields.get("specialisation", ""),
        system=fields.get("system", ""),
        needs_reboot=reboot[1] if reboot[0] == "yes" and len(reboot) > 1 else "",
        deploying=fields.get("deploying"),
        failure="" if result is None else result.split("\t")[-1] or "the host script failed",
        agent=fields.get("agent", ""),
    )


# --- generations and closures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    number: int
    date: str
    path: str
    version: str
    current: bool = False


def generations(session: Session) -> tuple[Generation, ...]:
    """The host's system generations, oldest first."""
    found = []
    for kind, *fields in _lines(run_verb(session, "generations"), session.host, "generations"):
        if kind == "result":
            raise _failed(session.host, fields, "generations")
        number = parse_uint(fields[0]) if kind == "generation" and len(fields) >= 5 else None
        if number is not None:
            found.append(Generation(number, fields[1], fields[2], fields[3], fields[4] == "current"))
    return tuple(found)


Closure = dict[StorePath, int]  # a closure's paths with their NAR sizes


def closures(session: Session, path: StorePath) -> tuple[Closure, Closure]:
    """The closures of the host's current system and of `path`, as the host's own store has them."""
    found: tuple[Closure, Closure] = ({}, {})
    for kind, *fields in _lines(run_verb(session, "closures", str(path), timeout=120), session.host, "closures"):
        if kind == "result":
            raise _failed(session.host, fields, "reading the closures")
        size = parse_uint(fields[2]) if kind == "closure" and len(fields) == 3 else None
        if size is not None and fields[0] in ("0", "1"):
            found[int(fields[0])][parse_store_path(fields[1])] = size
    return found


# --- the lines of a run (deploy, reboot, follow) and of confirm ----------------------------------------


@dataclass(frozen=True)
class PhaseLine:
    name: str
    detail: str = ""


@dataclass(frozen=True)
class ProgressLine:
    paths_done: int
    paths_total: int
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class CurrentLine:
    """The path the fetch is at."""

    path: str


@dataclass(frozen=True)
class LogText:
    text: str


@dataclass(frozen=True)
class StateLine:
    key: str  # target, before, current, booted, generation, switch-code
    value: str


@dataclass(frozen=True)
class ResultLine:
    outcome: Outcome  # done, failed or rolled-back; any other word the host printed is failed
    reason: str = ""


@dataclass(frozen=True)
class ConfirmLine:
    answer: str  # ok, rejected or late
    detail: str = ""


@dataclass(frozen=True)
class OtherLine:
    """A line of no kind the protocol knows (a newer script's, or noise): shown as it is."""

    text: str


ScriptLine = PhaseLine | ProgressLine | CurrentLine | LogText | StateLine | ResultLine | ConfirmLine | OtherLine


def _script_outcome(word: str) -> Outcome:
    return Outcome(word) if word in (Outcome.DONE, Outcome.ROLLED_BACK) else Outcome.FAILED


def parse_line(text: str) -> ScriptLine:
    kind, *fields = text.split("\t")
    padded = [*fields, "", ""]
    if kind == "phase":
        return PhaseLine(padded[0], padded[1])
    numbers = [n for n in map(parse_uint, fields[:4]) if n is not None] if kind == "progress" else []
    if len(numbers) == 4:
        return ProgressLine(*numbers)
    if kind == "current":
        return CurrentLine(padded[0])
    if kind == "log":
        return LogText(" ".join(fields))
    if kind == "state":
        return StateLine(padded[0], padded[1])
    if kind == "result":
        return ResultLine(_script_outcome(padded[0]), padded[1])
    if kind == "confirm":
        return ConfirmLine(padded[0], padded[1])
    return OtherLine(text)
