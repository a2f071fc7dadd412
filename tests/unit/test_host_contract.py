"""One transcript of the host protocol replayed against core/remote/host.sh (with stub tools, tests/unit/hoststubs.py)
and against FakeHost (tests/unit/test_engine_units.py), which the engine's unit tests trust to speak as host.sh does: a
host on generation 2 asked for its status, its generations and closures, rolled back to generation 1, asked again, then
asked to confirm and follow runs that are not waiting. Both must print the same lines and exit the same way, so the fake
cannot drift from the script. `{ANY}` stands for a field that differs by nature (a boot id, a time)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hoststubs import SHELLS, StubHost
from test_engine_units import NEW, NEW_CLOSURE, OLD, OLD_CLOSURE, FakeHost, FakeSession

from topdeck.core.inventory import Host
from topdeck.core.remote import hostverbs

TRANSCRIPT: list[tuple[list[str], int, list[str]]] = [
    (["status"], 0, [
        f"current\t{NEW}", f"booted\t{NEW}", f"profile\t{NEW}", "generation\t2", "boot-id\t{ANY}", "last-run\t",
        "agent\t", "needs-reboot\tno"]),
    (["generations"], 0, [
        f"generation\t1\t2026-11-01 10:00:00\t{OLD}\t24.11.1\t",
        f"generation\t2\t2026-11-02 10:00:00\t{NEW}\t24.11.2\tcurrent"]),
    (["closures", str(OLD)], 0, [
        *[f"closure\t0\t{path}\t{size}" for path, size in sorted(NEW_CLOSURE.items())],
        *[f"closure\t1\t{path}\t{size}" for path, size in sorted(OLD_CLOSURE.items())]]),
    (["closures", "/nix/store/00000000000000000000000000000000-gone"], 1, [
        *[f"closure\t0\t{path}\t{size}" for path, size in sorted(NEW_CLOSURE.items())],
        "result\tfailed\t/nix/store/00000000000000000000000000000000-gone is not in this host's store"]),
    (["deploy", "r2", "switch", "-", "--generation", "1"], 0, [
        "phase\tlock", f"state\ttarget\t{OLD}", f"state\tfetched\t{OLD}", f"state\tbefore\t{NEW}", "phase\tprofile",
        "state\tgeneration\t1", "phase\tactivate\tswitch", "state\tswitch-code\t0", f"state\tcurrent\t{OLD}",
        "state\tgeneration\t1", f"result\tdone\tswitch of {OLD}"]),
    (["status"], 0, [
        f"current\t{OLD}", f"booted\t{NEW}", f"profile\t{OLD}", "generation\t1", "boot-id\t{ANY}",
        f"last-run\tr2\t{{ANY}}\tdone\t{OLD}", "agent\t", "needs-reboot\tno"]),
    (["confirm", "r2"], 1, ["confirm\tlate\tthe run is no longer waiting for confirmation"]),
    (["follow", "r9"], 1, ["result\tfailed\tthis host has no run r9 (rebooted since?)"]),
]

Replay = Callable[[list[str]], tuple[int, list[str]]]


def replay(run: Replay) -> None:
    for argv, code, lines in TRANSCRIPT:
        got_code, got = run(argv)
        assert len(got) == len(lines), f"{argv}: {got}"
        assert all(re.fullmatch(_pattern(want), line) for want, line in zip(lines, got, strict=True)), f"{argv}: {got}"
        assert got_code == code, argv


def _pattern(line: str) -> str:
    return "[^\t]*".join(re.escape(part) for part in line.split("{ANY}"))


@pytest.mark.parametrize("shell", SHELLS)
def test_host_sh_speaks_the_transcript(tmp_path: Path, shell: str) -> None:
    host = StubHost(tmp_path / "root", shell=shell)
    for path in {*OLD_CLOSURE, *NEW_CLOSURE} - {OLD, NEW}:
        host.path(str(path)).mkdir(parents=True)
    host.system("old", "24.11.1", path=str(OLD), says="")
    host.system("new", "24.11.2", path=str(NEW), says="")
    host.generation(1, str(OLD))
    host.generation(2, str(NEW))
    host.runs(str(NEW))
    host.answer("nix-store", "--query --requisites *", code=1)  # answers added later come first
    for top, closure in ((OLD, OLD_CLOSURE), (NEW, NEW_CLOSURE)):
        members = "".join(f"{path}\n" for path in sorted(closure))
        for name in (str(top), str(host.path(str(top)))):  # as the argument names it, and /run/current-system
            host.answer("nix-store", f"--query --requisites {name}", members)
        host.answer("nix-store", f"--query --size {' '.join(str(p) for p in sorted(closure))}",
                    "".join(f"{closure[path]}\n" for path in sorted(closure)))
    host.answer("nix-env", "-p * --list-generations",
                "   1   2026-11-01 10:00:00   \n   2   2026-11-02 10:00:00   (current)\n")
    host.answer("nix-env", "-p * --switch-generation *",
                then='ln -sfn "system-$4-link" "$ROOT/nix/var/nix/profiles/system"')

    def run(argv: list[str]) -> tuple[int, list[str]]:
        ran = host.run(*argv)
        return ran.code, ran.lines

    replay(run)


def test_fake_host_speaks_the_transcript() -> None:
    fake = FakeHost("web-1", {OLD: OLD_CLOSURE, NEW: NEW_CLOSURE})
    fake.store.update(NEW_CLOSURE)
    fake.generation_paths = {1: str(OLD), 2: str(NEW)}
    fake.generation = 2
    fake.current = fake.booted = fake.profile = str(NEW)
    session = FakeSession(Host("web-1", "10.0.0.1", "web"), fake)

    def run(argv: list[str]) -> tuple[int, list[str]]:
        result = hostverbs.run_verb(session, argv[0], *argv[1:])  # type: ignore[arg-type]
        return result.exit_status, result.stdout.decode().splitlines()

    replay(run)
