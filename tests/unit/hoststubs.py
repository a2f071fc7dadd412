"""core/remote/host.sh run in the unit tier: a host's / in a folder (the script's TOPDECK_HOST_TEST_ROOT), with stub
tools first on the script's PATH that record their arguments and answer from a table.

The stubs stand where Nix's tools are on a host that is not NixOS (ROOT/nix/var/nix/profiles/default/bin); what is
not stubbed is the machine's own (sed, awk, readlink, setsid, ...). `flock` records and then runs the machine's
flock, so the host's lock is a real lock: a test that holds it (`StubHost.hold_lock`) is another deploy. Systems are
folders under ROOT/nix/store, and what host.sh prints is read with ROOT taken out (`StubHost.run`), so that it names
them as a host names its store paths.

The unit tier refuses to start processes (tests/unit/conftest.py); `StubHost.run` is the one exception: it starts
`sh core/remote/host.sh` alone, with the root's stubs, and no network (curl is a stub).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from topdeck.core.nix import nixbase32

HOST_SH = Path(__file__).resolve().parents[2] / "core" / "remote" / "host.sh"
STUBBED = ("nix-store", "nix-env", "systemctl", "systemd-run", "curl", "ssh-keygen", "id")

# Captured when this module is imported (while tests are collected), before the unit tier's guard replaces it for
# each test: StubHost.run puts it back while host.sh runs.
_POPEN_INIT = subprocess.Popen.__init__


@contextmanager
def host_script_may_run() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", _POPEN_INIT)
        yield


@dataclass(frozen=True)
class Answer:
    """What a stub does when its arguments (joined by spaces) match `pattern`, a sh glob: runs `then` (sh, with
    ROOT set), prints `out`, exits `code`."""

    pattern: str
    out: str = ""
    code: int = 0
    then: str = ""


@dataclass(frozen=True)
class Ran:
    code: int
    lines: list[str]
    stderr: str

    def fields(self) -> list[list[str]]:
        return [line.split("\t") for line in self.lines]

    def result(self) -> list[str]:
        return next(fields for fields in reversed(self.fields()) if fields[0] == "result")


# The shells hosts run it with: dash (Debian's sh), bash (NixOS's sh), busybox sh; those on this machine.
SHELLS = tuple(shell for shell in ("dash", "bash", "busybox") if shutil.which(shell))


@dataclass
class StubHost:
    root: Path
    shell: str = "sh"  # one of SHELLS, or the machine's sh
    answers: dict[str, list[Answer]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bin = self.root / "nix/var/nix/profiles/default/bin"
        for folder in (self.bin, self.root / "nix/store", self.root / "run", self.root / "calls",
                       self.root / "nix/var/nix/profiles"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.root / "topdeck-test-root").touch()
        for tool in STUBBED:
            self.answers.setdefault(tool, [])
            self._write_stub(tool)
        self.answer("id", "-u", "0")
        self.answer("id", "-un", "root")
        real_flock = shlex.quote(_real("flock"))
        self._write(self.bin / "flock", f'#!/bin/sh\n{self._record("flock")}\nexec {real_flock} "$@"\n')

    # -- the stubs

    def answer(self, tool: str, pattern: str, out: str = "", code: int = 0, then: str = "") -> None:
        """Add an answer to `tool`'s table; the first that matches answers (the ones added last come first)."""
        self.answers[tool].insert(0, Answer(pattern, out, code, then))
        self._write_stub(tool)

    def calls(self, tool: str) -> list[list[str]]:
        log = self.root / "calls" / tool
        if not log.exists():
            return []
        return [call.split("\x1f")[:-1] for call in log.read_text().split("\x1e")[:-1]]

    def _record(self, tool: str) -> str:
        log = shlex.quote(str(self.root / "calls" / tool))
        # one write for the whole call, so that stubs running at once cannot interleave their calls
        return f"call=''; for a in \"$@\"; do call=\"$call$a\x1f\"; done; printf '%s\x1e' \"$call\" >> {log}"

    def _write_stub(self, tool: str) -> None:
        cases = "".join(
            f"    {_glob(a.pattern)}) {a.then or ':'}\n"
            f"        printf '%s' {shlex.quote(_lines(a.out))}; exit {a.code} ;;\n"
            for a in self.answers[tool])
        self._write(self.bin / tool, f'#!/bin/sh\n{self._record(tool)}\nROOT={shlex.quote(str(self.root))}\n'
                                     f'case "$*" in\n{cases}esac\nexit 0\n')

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    # -- the host's systems, profile and runs

    def system(self, name: str, version: str = "24.11", switch_code: int = 0, path: str | None = None,
               says: str = "switching") -> str:
        """A NixOS system in the root's store (nixos-version, and a switch-to-configuration stub that prints `says`,
        points the root's /run/current-system at the system for switch and test when it activates (exit 0 or 4),
        and exits `switch_code`); its path as the host names it (/nix/store/..., system_path(name) unless given)."""
        path = path or system_path(name)
        top = self.path(path)
        (top / "bin").mkdir(parents=True, exist_ok=True)
        (top / "nixos-version").write_text(f"{version}\n")
        current = shlex.quote(str(self.path("/run/current-system")))
        activates = f'case $2 in switch | test) ln -sfn "${{0%/bin/switch-to-configuration}}" {current} ;; esac\n'
        self._write(top / "bin/switch-to-configuration",
                    f'#!/bin/sh\nset -- "$0" "$@"\n{self._record("switch-to-configuration")}\n'
                    f'{activates if switch_code in (0, 4) else ""}'
                    f'{f"echo {shlex.quote(says)}" if says else ":"}\nexit {switch_code}\n')
        return path

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def link(self, host_link: str, host_target: str) -> None:
        link = self.path(host_link)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        target = host_target if not host_target.startswith("/") else str(self.path(host_target))
        link.symlink_to(target)

    def generation(self, number: int, system: str) -> None:
        """System generation `number` of the profile, which then names it."""
        self.link(f"/nix/var/nix/profiles/system-{number}-link", system)
        self.link("/nix/var/nix/profiles/system", f"system-{number}-link")

    def runs(self, system: str, booted: str | None = None) -> None:
        self.link("/run/current-system", system)
        self.link("/run/booted-system", booted or system)

    @contextmanager
    def hold_lock(self) -> Iterator[IO[str]]:
        """The host's lock held, as another deploy holds it."""
        lock = self.path("/run/topdeck/lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            yield held

    # -- running the script

    def run(self, *args: str, timeout: float = 60) -> Ran:
        """`SHELL core/remote/host.sh ARGS` on this root: its stdout lines with the root taken out of them."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TOPDECK_HOST_TEST_ROOT": str(self.root),
               "LC_ALL": "C"}
        with host_script_may_run():
            shell = [self.shell, "sh"] if self.shell == "busybox" else [self.shell]
            done = subprocess.run([*shell, str(HOST_SH), *args], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout, check=False)
        return Ran(done.returncode, done.stdout.replace(str(self.root), "").splitlines(), done.stderr)

    def wait_for(self, host_path: str, timeout: float = 20) -> Path:
        path = self.path(host_path)
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"{host_path} did not appear"
            time.sleep(0.05)
        return path


def system_path(name: str) -> str:
    """The store path of `StubHost.system(name)`."""
    return f"/nix/store/{nixbase32.encode(hashlib.sha256(name.encode()).digest()[:20])}-nixos-system-{name}"


def _glob(pattern: str) -> str:
    """A sh case pattern matching `pattern`, whose `*` and `?` stay globs and everything else is literal."""
    return "".join(c if c in "*?" else shlex.quote(c) for c in pattern) or "''"


def _lines(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _real(tool: str) -> str:
    for folder in ("/usr/bin", "/bin", "/run/current-system/sw/bin"):
        if os.access(f"{folder}/{tool}", os.X_OK):
            return f"{folder}/{tool}"
    raise AssertionError(f"{tool} is not on this machine")
