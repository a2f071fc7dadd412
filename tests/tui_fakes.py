"""A fake engine for the TUI's snapshot tests and benchmarks: fixed, deterministic data of the same types the
real backend returns (core's own Plan, PointerVersion, DeployResult; statuses and generations with the
fields core.operations gives them), and a deploy that emits real core events from its worker thread."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from topdeck.core.cache.manifest import Manifest, ManifestPath
from topdeck.core.cache.pointers import Pointer, PointerVersion
from topdeck.core.errors import PointerError, TopdeckError
from topdeck.core.events import (
    DeployResult,
    Emit,
    HostOutcome,
    HostPhase,
    LogLine,
    Progress,
    PushResult,
    Transactions,
    WaveStarted,
    ignore,
)
from topdeck.core.history import UNVERIFIED, HistoryEntry, HostRun, RunRecord
from topdeck.core.inventory import CacheConfig, Host, Inventory
from topdeck.core.nix import nixbase32
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.operations import FleetPlan, HostStatus
from topdeck.core.plan import Plan, ProbeState, group, host_plan
from topdeck.core.remote.hostverbs import Generation
from topdeck.core.vocabulary import Step

NOW = 1_795_000_000.0  # a fixed "now" for the clock of every fake app (November 2026)
KiB, MiB, GiB = 1024, 1024**2, 1024**3


def store_path(name: str) -> StorePath:
    digest = hashlib.sha256(name.encode()).digest()[:20]
    return StorePath(nixbase32.encode(digest), name)


PACKAGES_V1 = {"glibc": ("2.39-52", 30 * MiB), "openssl": ("3.0.13", 6 * MiB), "nginx": ("1.24.0", 2 * MiB),
               "systemd": ("255.4", 25 * MiB), "bash": ("5.2p26", 2 * MiB), "legacy-tool": ("0.9", 150 * KiB),
               "zlib": ("1.3.1", 300 * KiB)}
PACKAGES_V2 = {**{k: v for k, v in PACKAGES_V1.items() if k != "legacy-tool"},
               "openssl": ("3.0.14", 6 * MiB + 12 * KiB), "nginx": ("1.26.1", 2 * MiB + 40 * KiB),
               "systemd": ("254.10", 25 * MiB - 200 * KiB), "web-app": ("1.0", 200 * KiB)}


def system(role: str, version: str, packages: dict[str, tuple[str, int]]) -> dict[StorePath, int]:
    closure = {store_path(f"{pname}-{pver}"): nbytes for pname, (pver, nbytes) in packages.items()}
    closure[store_path(f"nixos-system-{role}-{version}")] = 20 * KiB
    return closure


def toplevel(closure: dict[StorePath, int]) -> StorePath:
    return next(p for p in closure if p.name.startswith("nixos-system-"))


WEB_OLD = system("web", "24.05.20240601", PACKAGES_V1)
WEB_NEW = system("web", "24.05.20240715", PACKAGES_V2)
DB = system("db", "24.05.20240601", PACKAGES_V1)


def fake_inventory(count: int = 3, root: Path = Path("hosts")) -> Inventory:
    if count == 3:
        hosts = (Host("db-1", "127.0.0.13", "db", tags=("db",)),
                 Host("web-1", "127.0.0.11", "web", tags=("web", "frontend")),
                 Host("web-2", "127.0.0.12", "web", tags=("web", "frontend")))
    else:
        hosts = tuple(Host(f"node-{i:03d}", f"10.0.{i // 250}.{i % 250 + 1}", "web" if i % 5 else "db",
                           tags=("web",) if i % 5 else ("db",)) for i in range(count))
    return Inventory(root=root, hosts=hosts, cache=CacheConfig(kind="dir", path=Path("/srv/cache"), url="http://x"))


class FakeBackend:
    """Deterministic data; `delay` slows the fake deploy's phases (seconds per phase); with `stopping`, a cancelled
    deploy ends only once that event is set (as an engine finishes the step it is in), whatever the machine's load."""

    def __init__(self, inventory: Inventory | None = None, *, delay: float = 0.0, fetch_steps: int = 4,
                 status_delay: float = 0.0, stopping: threading.Event | None = None) -> None:
        self.inventory = inventory or fake_inventory()
        self.delay, self.fetch_steps, self.status_delay = delay, fetch_steps, status_delay
        self.stopping = stopping
        self.calls: list[tuple[Any, ...]] = []
        self.accepted: list[str] = []
        self.refused: dict[str, str] = {}  # pointer name -> why hosts refuse its sidecar (read_pointer raises)
        self.deltas: dict[str, Any] = {}  # host name -> the delta object its pointer names (core.delta.Delta)

    # --- fleet ---
    def statuses(self) -> tuple[HostStatus, ...]:
        web_new, web_old, db = (str(toplevel(c)) for c in (WEB_NEW, WEB_OLD, DB))
        if len(self.inventory.hosts) == 3:
            return (HostStatus("db-1", "up-to-date", db, db, db, 3, "2026-11-24 10:00 done"),
                    HostStatus("web-1", "behind", web_old, web_old, web_new, 4, "2026-11-20 09:12 done"),
                    HostStatus("web-2", "unreachable", "", "", web_new, 0, "",
                               "web-2 (127.0.0.12:22): connection refused"))
        kinds = ("up-to-date", "behind", "drifted", "up-to-date", "rolled-back")
        return tuple(HostStatus(h.name, kinds[i % 5], web_old, web_old, web_new, 2 + i % 7, "2026-11-24 10:00 done")
                     for i, h in enumerate(self.inventory.hosts))

    def status(self, emit: Emit = ignore, cancel: threading.Event | None = None) -> tuple[Any, ...]:
        self.calls.append(("status",))
        if self.status_delay:
            time.sleep(self.status_delay)
        return self.statuses()

    def pointers(self) -> dict[str, PointerVersion]:
        return {"db": PointerVersion(str(toplevel(DB)), 1, int((NOW - 86400 * 3) * 1000)),
                "web": PointerVersion(str(toplevel(WEB_NEW)), 3, int((NOW - 600) * 1000))}

    def history(self, name: str) -> list[PointerVersion]:
        if name == "web":
            return [PointerVersion(str(toplevel(WEB_NEW)), 3, int((NOW - 600) * 1000)),
                    PointerVersion(str(toplevel(WEB_OLD)), 2, int((NOW - 86400 * 4) * 1000)),
                    PointerVersion(str(toplevel(WEB_OLD)), 1, int((NOW - 86400 * 9) * 1000))]
        return [PointerVersion(str(toplevel(DB)), 1, int((NOW - 86400 * 3) * 1000))]

    def read_pointer(self, name: str) -> Pointer:
        """The pointer as hosts read it; a `refused` pointer fails as a forged sidecar does."""
        if name in self.refused:
            raise PointerError(self.refused[name])
        version = self.pointers()[name]
        return Pointer(name, parse_store_path(version.path), version.serial, version.uploaded_ms // 1000)

    def rollback_pointer(self, name: str, to: str | None = None) -> Pointer:
        self.calls.append(("rollback_pointer", name, to))
        return Pointer(name, toplevel(WEB_OLD), 4, int(NOW))

    def publish_pointer(self, name: str, path: str) -> Pointer:
        self.calls.append(("publish_pointer", name, path))
        return Pointer(name, toplevel(WEB_OLD), 4, int(NOW))

    def run_history(self) -> list[HistoryEntry]:
        """Bob's deploy of web (web-2 rolled back), Alice's publish of web, a forged record, Alice's reboot of db-1."""
        self.calls.append(("run_history",))
        web_new, db = str(toplevel(WEB_NEW)), str(toplevel(DB))
        deploy = RunRecord("20261124-100000-b0b0b0", "deploy", "bob", NOW - 300, NOW - 240, "switch", "web", 0,
                           web_new, (HostRun("web-1", "done", web_new, NOW - 250),
                                     HostRun("web-2", "rolled-back", web_new, NOW - 240, "check failed: curl exit 7")))
        publish = RunRecord("20261124-095000-a1a1a1", "publish", "alice", NOW - 600, NOW - 600, pointer="web",
                            serial=3, path=web_new)
        reboot = RunRecord("20261123-080000-a2a2a2", "reboot", "alice", NOW - 86400, NOW - 86300, "reboot",
                           hosts=(HostRun("db-1", "done", db, NOW - 86300),))
        return [HistoryEntry("runs/20261124-100000-b0b0b0.json", int((NOW - 240) * 1000), deploy),
                HistoryEntry("runs/20261124-095000-a1a1a1.json", int((NOW - 600) * 1000), publish),
                HistoryEntry("runs/20261124-090000-f0f0f0.json", int((NOW - 900) * 1000), problem=UNVERIFIED),
                HistoryEntry("runs/20261123-080000-a2a2a2.json", int((NOW - 86300) * 1000), reboot)]

    def fleet_plan(self, hosts: Sequence[str]) -> FleetPlan:
        plans = []
        targets: dict[str, StorePath | str] = {}
        for name in hosts:
            if name == "web-2":
                from topdeck.core.plan import HostPlan

                plans.append(HostPlan(name, "unreachable", "web-2 (127.0.0.12:22): connection refused",
                                      toplevel(WEB_NEW)))
                targets[name] = toplevel(WEB_NEW)
                continue
            before, after = (DB, DB) if name.startswith("db") else (WEB_OLD, WEB_NEW)
            target = toplevel(after)
            manifest = Manifest(target, tuple(ManifestPath(p, s, s // 3, ()) for p, s in sorted(after.items())))
            missing = frozenset(p for p in after if p not in before)
            state = ProbeState(toplevel(before), toplevel(before), 4, 12 * GiB, missing, before)
            plans.append(host_plan(name, target, manifest, state, self.deltas.get(name)))
            targets[name] = target
        host_plans = tuple(plans)
        return FleetPlan(tuple(self.inventory.host(n) for n in hosts), targets, {}, Plan(host_plans, group(host_plans)),
                         True)

    def plan(self, hosts: Sequence[str], target: str | None, emit: Emit = ignore,
             cancel: threading.Event | None = None) -> FleetPlan:
        self.calls.append(("plan", tuple(hosts), target))
        if target and "missing" in target:
            from topdeck.core.errors import CacheError

            raise CacheError(f"{target} is not in the cache (no manifest): push it first")
        return self.fleet_plan(hosts)

    def in_cache(self, path: str) -> bool:
        return "missing" not in path

    def push(self, path: str, pointer: str | None, emit: Emit = ignore,
             cancel: threading.Event | None = None) -> PushResult:
        total = 12
        for i in range(total + 1):
            emit(Progress(Step.UPLOAD, i, total, i * 3 * MiB, total * 3 * MiB, f"{path}", 6 * MiB))
            time.sleep(self.delay / 4)
        return PushResult(path, 40, total, 28, total * 3 * MiB, total * MiB, 50 * MiB, 2.5,
                          Transactions(a=2 * total + 1, b=0, c=2), pointer or "", 0, False)

    def release(self, hosts: Sequence[str], emit: Emit = ignore,
                cancel: threading.Event | None = None) -> PushResult:
        self.calls.append(("release", tuple(hosts)))
        emit(LogLine("building '/nix/store/" + "2" * 32 + "-nixos-system-web-2.drv'...", "flake"))
        if cancel is not None and cancel.wait(self.delay):
            from topdeck.core.errors import Cancelled

            raise Cancelled("flake: build cancelled")
        return self.push(str(toplevel(WEB_NEW)), "web", emit, cancel)

    def deploy(self, fleet_plan: Any, mode: str, emit: Emit = ignore,
               cancel: threading.Event | None = None) -> DeployResult:
        hosts = tuple(h.host for h in fleet_plan.plan.hosts if h.planned)
        self.calls.append(("deploy", hosts, mode))
        return self._run(hosts, mode, emit, cancel or threading.Event())

    def rollback(self, hosts: Sequence[str], to: int | None, emit: Emit = ignore,
                 cancel: threading.Event | None = None) -> DeployResult:
        self.calls.append(("rollback", tuple(hosts), to))
        return self._run(tuple(hosts), "switch", emit, cancel or threading.Event(), fetch=False)

    def _run(self, hosts: tuple[str, ...], mode: str, emit: Emit, cancel: threading.Event,
             fetch: bool = True) -> DeployResult:
        started = NOW
        emit(WaveStarted(1, 1, hosts))
        outcomes = []
        for name in hosts:
            emit(HostPhase(name, "queued"))
        for phase in ("connect", "lock", "verify", "fetch", "profile", "activate", "confirm", "check"):
            if cancel.is_set():
                break
            for name in hosts:
                emit(HostPhase(name, phase))
                emit(LogLine(f"{phase}: ok", name))
                if phase == "fetch" and fetch:
                    for step in range(1, self.fetch_steps + 1):
                        emit(Progress(Step.FETCH, step * 3, self.fetch_steps * 3, step * 2 * MiB,
                                      self.fetch_steps * 2 * MiB, host=name))
                        if self.delay:
                            time.sleep(self.delay / self.fetch_steps / max(1, len(hosts)))
            if self.delay:
                time.sleep(self.delay)
        final = "cancelled" if cancel.is_set() else "done"
        if final == "cancelled" and self.stopping is not None:
            self.stopping.wait(30)
        for name in hosts:
            outcome = HostOutcome(name, final, str(toplevel(WEB_NEW)), str(toplevel(WEB_OLD)),
                                  str(toplevel(WEB_NEW)) if final == "done" else str(toplevel(WEB_OLD)), 5,
                                  "cancelled by the operator" if final == "cancelled" else "",
                                  12 if fetch else 0, 8 * MiB if fetch else 0, started, started + 7)
            outcomes.append(outcome)
            emit(outcome)
        result = DeployResult("run-1", mode, tuple(outcomes), (hosts,), started, started + 7.5)
        emit(result)
        return result

    def generations(self, host: str) -> tuple[Generation, ...]:
        if host == "web-2":
            raise TopdeckError("web-2 (127.0.0.12:22): connection refused")
        return (Generation(2, "2026-10-02 08:00:11", str(toplevel(WEB_OLD)), "24.05.20240601"),
                Generation(3, "2026-11-01 14:30:40", str(toplevel(WEB_OLD)), "24.05.20240601"),
                Generation(4, "2026-11-20 09:12:05", str(toplevel(WEB_NEW)), "24.05.20240715", True))

    def generation_diff(self, host: str, path: str) -> Any:
        from topdeck.core.nix.diff import diff_closures

        return diff_closures(WEB_NEW, WEB_OLD)

    def check_host_key(self, host: str) -> str:
        raise TopdeckError(f"{host}: fake host")

    def pin_host_key(self, error: Any) -> str:
        self.accepted.append(error.host)
        return f"{error.address} ssh-ed25519 AAAA\n"

    # --- exec ---
    exec_outputs: dict[str, tuple[int | None, tuple[str, ...], str]] = {
        "db-1": (3, ("inactive", "Unit nginx.service could not be found."), ""),
        "web-2": (None, (), "web-2 (127.0.0.12:22): connection refused"),
    }

    def run_command(self, hosts: Sequence[str], argv: Sequence[str], emit: Emit = ignore,
                    cancel: threading.Event | None = None) -> Any:
        """Every host answers `active` and exits 0, but for those exec_outputs names."""
        from topdeck.core.hostexec import ExecResult, HostExit, check_command

        self.calls.append(("exec", tuple(hosts), tuple(check_command(argv))))
        runs = []
        for name in hosts:
            code, lines, error = self.exec_outputs.get(name, (0, ("active",), ""))
            for line in lines:
                emit(LogLine(line, name))
            if self.delay:
                time.sleep(self.delay)
            runs.append(HostExit(name, code, lines, error, 0.2))
        return ExecResult(tuple(argv), tuple(runs))
