"""core.remote.hostverbs: the verbs' command lines and how their answers are read, against a scripted session (the
host script itself answers in the lab tier)."""

from __future__ import annotations

import shlex

import pytest

from topdeck.core.errors import DeployError, SSHError
from topdeck.core.inventory import Host
from topdeck.core.nix.store import parse_store_path
from topdeck.core.remote.hostverbs import (
    Generation,
    LastRun,
    closures,
    generations,
    host_command,
    host_script,
    parse_status,
    run_verb,
)
from topdeck.core.remote.ssh import Result

HOST = Host("web-1", "10.0.0.1", "web")
OLD = "/nix/store/" + "1" * 32 + "-nixos-system-web-1-old"
NEW = "/nix/store/" + "2" * 32 + "-nixos-system-web-1-new"


class ScriptedSession:
    """Answers each command with the next scripted stdout; remembers what it was asked."""

    def __init__(self, *answers: str, exit_status: int = 0, truncated: bool = False):
        self.host = HOST
        self.answers = list(answers)
        self.asked: list[tuple[str, bytes | None, float | None]] = []
        self.exit_status, self.truncated = exit_status, truncated

    def run(self, command: str, stdin: bytes | None = None, *, timeout: float | None = None, **_: object) -> Result:
        self.asked.append((command, stdin, timeout))
        return Result(self.exit_status, self.answers.pop(0).encode(), b"", truncated=self.truncated)


def test_the_script_goes_on_stdin_and_each_argument_comes_back_as_one_word() -> None:
    session = ScriptedSession("")
    run_verb(session, "closures", "a b;$(touch x)", 7, timeout=3)  # type: ignore[arg-type]
    command, stdin, timeout = session.asked[0]
    assert stdin == host_script() and b"topdeck" in stdin  # the script itself, sent on stdin
    assert shlex.split(command)[3:] == ["topdeck-host", "closures", "a b;$(touch x)", "7"] and timeout == 3


def test_sudo_only_for_a_user_other_than_root_that_asks_for_it() -> None:
    assert shlex.split(host_command(Host("a", "h", "p", user="deploy", sudo=True), "status"))[:2] == ["sudo", "-n"]
    assert shlex.split(host_command(Host("a", "h", "p", user="root", sudo=True), "status"))[0] == "sh"
    assert shlex.split(host_command(Host("a", "h", "p", user="deploy"), "status"))[0] == "sh"


def test_a_full_status_answer() -> None:
    report = parse_status("\n".join([
        f"current\t{NEW}", f"booted\t{OLD}", f"profile\t{NEW}", "generation\t12", "boot-id\t abc \t",
        f"last-run\t20260101T0000Z-1\t2026-01-01T00:00:00Z\tdone\t{NEW}", "specialisation\tgpu", f"system\t{NEW}",
        "needs-reboot\tyes\tkernel", "deploying\t20260102T0000Z-2",
    ]))
    assert (report.current, report.booted, report.profile, report.generation) == (NEW, OLD, NEW, 12)
    assert report.boot_id == "abc" and report.specialisation == "gpu" and report.system == NEW
    assert report.last_run == LastRun("20260101T0000Z-1", "2026-01-01T00:00:00Z", "done", NEW)
    assert report.needs_reboot == "kernel" and report.deploying == "20260102T0000Z-2" and report.failure == ""


@pytest.mark.parametrize(("output", "field", "value"), [
    ("generation\t-3", "generation", 0),
    ("generation\t٣", "generation", 0),
    ("needs-reboot\tno\tkernel", "needs_reboot", ""),
    ("last-run\tonly-two\tfields", "last_run", None),
    ("last-run\trun\ttime\tdone", "last_run", LastRun("run", "time", "done")),  # an older host: no target
    ("result\tfailed\t", "failure", "the host script failed"),
    ("result\tfailed\tno profile", "failure", "no profile"),
    ("", "deploying", None),
])
def test_odd_status_fields_read_as_empty_or_as_the_failure(output: str, field: str, value: object) -> None:
    assert getattr(parse_status(output), field) == value


def test_generations_are_read_in_order_and_junk_lines_skipped() -> None:
    session = ScriptedSession("\n".join([
        "generation\t1\t2026-01-01 00:00:00\t" + OLD + "\t24.05\t", "noise from a login script",
        "generation\tx\t2026-01-02\t" + NEW + "\t24.11\tcurrent",
        "generation\t2\t2026-01-02\t" + NEW + "\t24.11\tcurrent",
        "generation\t3\ttoo\tfew",
    ]))
    assert generations(session) == (Generation(1, "2026-01-01 00:00:00", OLD, "24.05", False),  # type: ignore[arg-type]
                                     Generation(2, "2026-01-02", NEW, "24.11", True))


def test_a_failed_verb_is_the_hosts_one_line() -> None:
    with pytest.raises(DeployError, match="^web-1: no system profile$"):
        generations(ScriptedSession("result\tfailed\tno system profile"))  # type: ignore[arg-type]
    with pytest.raises(DeployError, match="^web-1: reading the closures failed$"):
        closures(ScriptedSession("result\tfailed"), parse_store_path(NEW))  # type: ignore[arg-type]


def test_closures_of_the_current_system_and_of_the_target() -> None:
    lib = "/nix/store/" + "3" * 32 + "-glibc-2.40"
    session = ScriptedSession("\n".join([
        f"closure\t0\t{OLD}\t100", f"closure\t0\t{lib}\t900", f"closure\t1\t{NEW}\t200", f"closure\t1\t{lib}\t900",
        f"closure\t2\t{lib}\t1", f"closure\t1\t{lib}\tmany",  # neither closure 0 nor 1; not a size: skipped
    ]))
    current, target = closures(session, parse_store_path(NEW))  # type: ignore[arg-type]
    assert current == {parse_store_path(OLD): 100, parse_store_path(lib): 900}
    assert target == {parse_store_path(NEW): 200, parse_store_path(lib): 900}
    assert shlex.split(session.asked[0][0])[-2:] == ["closures", NEW] and session.asked[0][2] == 120


def test_a_truncated_answer_is_not_read_in_part() -> None:
    with pytest.raises(SSHError, match="^web-1: generations: the answer is over"):
        generations(ScriptedSession("generation\t1", truncated=True))  # type: ignore[arg-type]
