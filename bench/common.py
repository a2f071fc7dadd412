"""Shared pieces of the benchmarks: the Figure every benchmark returns, medians, the lab, the closures, the machine.

A benchmark module exposes `run(quick: bool = False) -> list[Figure]`. `shared_lab()` gives every benchmark of
one process the same lab (its own root under a temporary folder, hosts on 127.0.51.11 and up, the emulator on a
free port), started on first use and stopped by `close_shared_lab()` (and at exit).
"""

from __future__ import annotations

import atexit
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topdeck.lab.nixenv import LAB_NIX_CONFIG, lab_env

BENCH_DIR = Path(__file__).resolve().parent
BASE_ADDRESS = "127.0.51.11"  # the shared lab: 127.0.51.11 and up (never the demo's or the tests' addresses)
PACKAGES = 1000  # packages in the benchmark closure (about 1100 store paths with their extra outputs)
CLOSURE_SIZE = 200 * 1024 * 1024  # bytes of files in that closure, in all
CHANGED_SHARE = 100  # one package in CHANGED_SHARE is upgraded in the "changed" variant (1 %)


@dataclass
class Figure:
    """One row of the results table: topdeck's number, the baseline's (same run), the goal and whether it is met."""

    name: str
    topdeck: float
    baseline: float | None
    unit: str
    goal: str
    met: bool
    note: str = ""


# --- timing -------------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def timed(action: Callable[[], Any]) -> float:
    """Seconds `action()` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def times(action: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> list[float]:
    """`repeat` timings of `action()`, each after an untimed `setup()`."""
    result = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        result.append(timed(action))
    return result


def repeats(quick: bool, full: int = 5, fast: int = 1) -> int:
    return fast if quick else full


def log(message: str) -> None:
    """Progress lines go to stderr with the time since start, so the table on stdout stays clean."""
    import sys

    print(f"[bench {time.perf_counter() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


_STARTED = time.perf_counter()


# --- the lab ------------------------------------------------------------------------------------------------


def use_lab_nix() -> None:
    """Run Nix the way the lab does (no sandbox, no substituters) in this process and its children."""
    os.environ["NIX_CONFIG"] = LAB_NIX_CONFIG


class _Shared:
    lock = threading.RLock()
    root: Path | None = None
    lab: Any = None
    closures: Closures | None = None


def work_root() -> Path:
    """This process's temporary folder for the benchmarks (removed at exit)."""
    with _Shared.lock:
        if _Shared.root is None:
            _Shared.root = Path(tempfile.mkdtemp(prefix="topdeck-bench-"))
            os.environ["XDG_STATE_HOME"] = str(_Shared.root / "state")  # run records, with the benchmarks' inventories
            atexit.register(close_shared_lab)
        return _Shared.root


def shared_lab(hosts: int = 0):  # type: ignore[no-untyped-def]
    """The benchmarks' lab with at least `hosts` hosts (host-1, host-2, ...) running."""
    from topdeck.lab.errors import LabError
    from topdeck.lab.lab import Lab

    use_lab_nix()
    root = work_root()
    with _Shared.lock:
        if _Shared.lab is None:
            _Shared.lab = Lab(root / "lab", base_address=BASE_ADDRESS, emulator_port=0)
        lab = _Shared.lab
        if not lab.emulator_running() or len(lab.hosts) < hosts:
            log(f"starting the lab ({hosts} hosts on {BASE_ADDRESS} and up)")
            for attempt in range(3):  # up() keeps what runs and starts the rest: on a busy machine, a host may fail
                try:
                    lab.up(count=max(hosts, len(lab.hosts)), log=lambda *_: None)
                    break
                except LabError as error:
                    if attempt == 2:
                        raise
                    log(f"the lab did not start completely ({str(error)[:200]}); trying again")
    return lab


def close_shared_lab() -> None:
    with _Shared.lock:
        if _Shared.lab is not None:
            try:
                _Shared.lab.down(log=lambda *_: None)
            finally:
                _Shared.lab = None
        if _Shared.root is not None:
            shutil.rmtree(_Shared.root, ignore_errors=True)
            _Shared.root = None
            _Shared.closures = None


def b2_cache(lab, prefix: str):  # type: ignore[no-untyped-def]
    """A B2Cache on the lab's bucket under `prefix`, with the lab's restricted key."""
    from topdeck.core.cache.b2 import B2Cache
    from topdeck.lab.lab import BUCKET

    return B2Cache(BUCKET, prefix, lab.emulator.url, *lab.b2_key())


def signing_key(lab):  # type: ignore[no-untyped-def]
    from topdeck.core.nix.signing import load_secret_key

    return load_secret_key(lab.cache_secret_key)


def counters(lab) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The emulator's server-side transaction counters (A, B, C and calls)."""
    return lab.emulator_control("GET", "counters")


def counted(lab, action: Callable[[], Any]) -> tuple[Any, dict[str, int]]:  # type: ignore[no-untyped-def]
    """`action()`'s result and the B2 transactions by class the emulator billed while it ran."""
    before = counters(lab)
    result = action()
    after = counters(lab)
    return result, {c: after[c] - before[c] for c in ("A", "B", "C")}


def timed_and_counted(lab, action: Callable[[], Any]) -> tuple[float, dict[str, int]]:  # type: ignore[no-untyped-def]
    """Seconds `action()` took and the B2 transactions by class the emulator billed while it ran."""
    return counted(lab, lambda: timed(action))


# --- the closures -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Closures:
    """The benchmark toplevels, built once per process: `base` (PACKAGES packages, CLOSURE_SIZE bytes) and
    `changed` (one package in CHANGED_SHARE upgraded); `changed_packages` names the upgraded ones."""

    base: str
    changed: str
    base_paths: int
    changed_paths: int
    changed_packages: tuple[str, ...]
    seconds: float


def closures() -> Closures:
    """The two toplevels, with the lab's operator key authorized (hosts can activate them and stay reachable)."""
    from topdeck.core.nix import localnix
    from topdeck.core.nix.store import parse_store_path
    from topdeck.lab import factory

    lab = shared_lab()
    with _Shared.lock:
        if _Shared.closures is not None:
            return _Shared.closures
        log(f"building a {PACKAGES}-package closure and its 1 % variant")
        started = time.perf_counter()
        base = factory.initial_system([lab.client_public_key()], host="bench", count=PACKAGES,
                                      total_size=CLOSURE_SIZE)
        changed = base
        upgraded = []
        # skip the fixed set (glibc & co, which nearly everything depends on): the synthesized packages from 55 on
        for package in base.packages[55::CHANGED_SHARE]:
            changed = factory.upgrade(changed, package.pname, package.version + ".1")
            upgraded.append(package.name)
        workdir = work_root() / "closures"
        base_path = factory.build(base, workdir)
        changed_path = factory.build(changed, workdir)
        _Shared.closures = Closures(
            base=base_path, changed=changed_path,
            base_paths=len(localnix.closure([parse_store_path(base_path)])),
            changed_paths=len(localnix.closure([parse_store_path(changed_path)])),
            changed_packages=tuple(upgraded), seconds=time.perf_counter() - started,
        )
        log(f"built them in {_Shared.closures.seconds:.1f} s: {_Shared.closures.base_paths} paths")
        return _Shared.closures


# --- the machine --------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "unknown"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    try:
        nix = subprocess.run(["nix", "--version"], capture_output=True, text=True, env=lab_env()).stdout.strip()
    except OSError:
        nix = "not found"
    load = os.getloadavg()
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "Nix": nix,
        "Python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load average": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- the table ----------------------------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 1024 / 1024:.2f} MiB" if value >= 1024 * 1024 else f"{value / 1024:.1f} KiB"
    if unit == "MB":
        return f"{value:.0f} MB"
    if float(value).is_integer():
        return f"{value:.0f} {unit}".rstrip()
    return f"{value:.2f} {unit}".rstrip()


def ratio(figure: Figure) -> str:
    if figure.baseline is None or figure.baseline == 0:
        return "-"
    return f"{figure.topdeck / figure.baseline:.2f}x"


def table(figures: list[Figure]) -> str:
    """The results as a Markdown table; ratio is topdeck ÷ baseline."""
    lines = ["| figure | topdeck | baseline | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for f in figures:
        baseline = format_value(f.baseline, f.unit)
        lines.append(f"| {f.name} | {format_value(f.topdeck, f.unit)} | {baseline} | {ratio(f)} | {f.goal} | "
                     f"{'met' if f.met else '**NOT met**'} |")
    return "\n".join(lines)


def notes(figures: list[Figure]) -> str:
    return "\n".join(f"- {f.name}: {f.note}" for f in figures if f.note)
