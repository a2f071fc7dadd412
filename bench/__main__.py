"""Run topdeck's benchmarks, each against a baseline measured in the same run, and write bench/RESULTS.md.

    .venv/bin/python -m bench                 every benchmark, then bench/RESULTS.md
    .venv/bin/python -m bench NAME...         some of them (the table is printed, RESULTS.md left alone)
    .venv/bin/python -m bench --quick         fewer repeats

Needs root: the benchmarks start their own labs under a temporary folder (the shared one on 127.0.51.11 and up,
the 100-host one on 127.0.50.11 and up, the baselines' on 127.0.52.11 and up).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from bench.common import BENCH_DIR, Figure, close_shared_lab, log, machine, notes, table, use_lab_nix

# name: (module, what it measures)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "push": ("bench.push", "cold push of the ~1000-path closure vs `nix copy` (xz, zstd) to a folder"),
    "noop": ("bench.noop", "no-op push: B2 transactions and time vs a per-path existence check (`nix copy`)"),
    "change": ("bench.change", "push of the 1 %-changed closure: bytes uploaded vs the changed paths' size"),
    "memory": ("bench.push_memory", "peak RSS pushing one ~1 GiB path"),
    "plan": ("bench.plan", "plan of 10 hosts: SSH round trips, time vs one host at a time"),
    "diff": ("bench.diff", "closure diff vs `nix store diff-closures`"),
    "deploy": ("bench.deploy", "no-change deploy of 10 hosts, small-change deploy of 20 hosts"),
    "tui": ("bench.tui", "TUI start-up and refresh"),
    "baselines": ("bench.baselines", "topdeck vs `nix copy --to ssh://` to 10 hosts; 20 hosts vs plain ssh"),
    "distance": ("bench.distance", "cold fetch and 1 % change at 0-200 ms from the cache, each host kind: topdeck's "
                 "fetch ahead vs nix-store -r vs curl vs the physical floor"),
    "wanfleet": ("bench.wanfleet", "changed closure to 10 hosts vs `nix copy --to ssh://`, 40 ms to the hosts and a "
                 "20 Mbit uplink"),
    "scale": ("bench.scale", "100 native + 2 image hosts: plan, no-change deploy, SSH logins, CPU, B2 per host, TUI"),
}


def available() -> dict[str, str]:
    """The benchmarks whose module exists (deploy and tui may not yet)."""
    return {name: module for name, (module, _) in BENCHMARKS.items()
            if (BENCH_DIR / f"{module.rsplit('.', 1)[1]}.py").exists()}


def main(argv: list[str] | None = None) -> int:
    listing = "\n".join(f"  {name:8} {what}" + ("" if name in available() else "  (not written yet)")
                        for name, (_, what) in BENCHMARKS.items())
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                     epilog=f"benchmarks:\n{listing}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (medians of fewer runs)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the results here (default: bench/RESULTS.md when running all of them)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    missing = [name for name in args.names if name not in available()]
    if missing:
        parser.error(f"not written yet: {', '.join(missing)}")
    names = args.names or list(available())
    output = args.output or (BENCH_DIR / "RESULTS.md" if not args.names else None)
    use_lab_nix()
    described = machine()
    started = time.monotonic()
    figures: list[Figure] = []
    paper: list[str] = []
    failed: dict[str, str] = {}
    try:
        for name in names:
            log(f"--- {name}")
            try:
                module = importlib.import_module(available()[name])
                if not hasattr(module, "run"):
                    raise RuntimeError(f"{module.__name__} has no run(quick) yet")
                figures += module.run(quick=args.quick)
                paper += getattr(module, "PAPER", [])
            except Exception as error:  # one benchmark failing must not lose the others' figures
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
                traceback.print_exc()
    finally:
        close_shared_lab()
    report = render(figures, described, names, failed, args.quick, time.monotonic() - started, paper)
    print(report)
    if output is not None:
        output.write_text(report)
        log(f"wrote {output}")
    return 1 if failed else 0


def render(figures: list[Figure], described: dict[str, str], names: list[str], failed: dict[str, str], quick: bool,
           seconds: float, paper: list[str] | None = None) -> str:
    import os

    end_load = os.getloadavg()
    described = {**described, "load average": f"{described['load average']} at the start, "
                 f"{end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f} at the end"}
    load = max(float(described["load average"].split()[0]), end_load[0], end_load[2])
    cores = int(described["cores"] or 1)
    busy = load > 0.5 * cores
    lines = [
        "# Benchmark results",
        "",
        "Made by `make bench` (`.venv/bin/python -m bench`). Each figure is topdeck against a baseline measured in "
        "the same run (ratio = topdeck ÷ baseline), or a count that does not depend on speed. Times are medians.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in described.items()],
        f"- run: {', '.join(names)}{' (--quick: fewer repeats)' if quick else ''}, {seconds / 60:.1f} min",
    ]
    if busy:
        lines.append(f"- **busy machine**: load average up to {load:.1f} on {cores} cores (other work shared the "
                     "CPU): absolute times are noisy; each ratio comes from the same run, side by side")
    lines += ["", "## Results", "", table(figures), ""]
    if notes(figures):
        lines += ["## Notes", "", notes(figures), ""]
    if paper:
        lines += ["## On paper, from the figures above", "", *paper, ""]
    if failed:
        lines += ["## Not measured", "", *[f"- {name}: {failed[name]}" for name in failed], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
