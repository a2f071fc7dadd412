"""Benchmark 4: peak memory of `push` for a closure holding one ~1 GiB path (goal: at most 300 MB RSS).

    .venv/bin/python bench/push_memory.py [--size-mib 1024]      (or: .venv/bin/python -m bench memory)

Starts its own B2 emulator (a separate process, so its storage does not count), builds the closure with the
lab's toplevel factory, pushes it from a fresh process and reads that process's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, log, median, repeats, work_root  # noqa: E402
from topdeck.lab import factory  # noqa: E402
from topdeck.lab.nixenv import LAB_NIX_CONFIG, lab_env  # noqa: E402

HERE = Path(__file__).resolve().parent
GOAL_BYTES = 300 * 1000 * 1000


def start_emulator(key_id: str, key: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "topdeck.lab.b2emu", "--port", "0", "--key-id", key_id, "--key-env", "BENCH_KEY",
         "--bucket", "topdeck-bench"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "BENCH_KEY": key},
    )
    assert process.stdout is not None
    return process, process.stdout.readline().split("listening on", 1)[1].strip()


def measure(size_mib: int, workdir: Path, toplevel: str | None = None) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    if toplevel is None:
        toplevel = build(size_mib, workdir)
    sec, pub = workdir / "key.sec", workdir / "key.pub"
    subprocess.run(["nix-store", "--generate-binary-cache-key", "bench-1", str(sec), str(pub)], check=True,
                   env=lab_env())
    key_id, key = "bench", secrets.token_urlsafe(16)
    emulator, url = start_emulator(key_id, key)
    try:
        probe = subprocess.run(
            [sys.executable, str(HERE / "memory_probe.py"), url, "topdeck-bench", "cache", key_id, str(sec), toplevel],
            input=key + "\n", capture_output=True, text=True, check=True,
        )
    finally:
        emulator.terminate()
        emulator.wait()
    return json.loads(probe.stdout)


def build(size_mib: int, workdir: Path) -> str:
    spec = factory.SystemSpec(host="bench-memory", version=factory.DEFAULT_VERSION,
                              packages=(factory.Package("bigdata", "1.0", size=size_mib * factory.MiB),),
                              authorized_keys=())
    return factory.build(spec, workdir)


def run(quick: bool = False) -> list[Figure]:
    workdir = work_root() / "memory"
    log("memory: building one 1 GiB path")
    toplevel = build(1024, workdir)
    runs = []
    for _ in range(repeats(quick, 3)):
        log("memory: a push of it in a fresh process")
        runs.append(measure(1024, workdir / f"run-{len(runs)}", toplevel))
    peak = median(r["peak_rss"] for r in runs) / 1e6
    nar = runs[-1]["nar_bytes"]
    return [Figure(f"push of one {nar / 2**20:.0f} MiB path: peak RSS", peak, None, "MB", "≤ 300 MB", peak <= 300,
                   f"before the push {runs[-1]['rss_before_push'] / 1e6:.0f} MB; highest of the runs "
                   f"{max(r['peak_rss'] for r in runs) / 1e6:.0f} MB; push "
                   f"{median(r['seconds'] for r in runs):.1f} s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    os.environ.setdefault("NIX_CONFIG", LAB_NIX_CONFIG)
    with tempfile.TemporaryDirectory(prefix="topdeck-bench-") as workdir:
        figures = measure(args.size_mib, Path(workdir))
    peak, nar = figures["peak_rss"], figures["nar_bytes"]
    met = "met" if peak <= GOAL_BYTES else "NOT met"
    print(f"push of one {nar / 2**20:.0f} MiB path: peak RSS {peak / 1e6:.0f} MB "
          f"(before the push {figures['rss_before_push'] / 1e6:.0f} MB), {peak / nar:.3f} of the NAR size, "
          f"{figures['seconds']:.1f} s; goal <= 300 MB: {met}")


if __name__ == "__main__":
    main()
