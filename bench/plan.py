"""Benchmark: the plan for 10 hosts and a ~1000-path closure, and the closure diff against Nix's own.

    .venv/bin/python bench/plan.py [--hosts 10] [--packages 1000] [--repeat 5]

Figures (medians of --repeat runs, all measured in this run):
- plan of all hosts in parallel vs the same hosts planned one at a time (the baseline), and the SSH round
  trips per host (goal: 1);
- the diff of the same pair of closures by core.diff vs `nix store diff-closures` (the baseline).
Needs root (it starts its own lab on 127.0.9.x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from topdeck.core import localnix
from topdeck.core.b2cache import B2Cache
from topdeck.core.diff import diff_closures, render_diff_closures
from topdeck.core.inventory import Host, SSHConfig
from topdeck.core.manifest import manifest_name, parse_manifest
from topdeck.core.plan import plan
from topdeck.core.push import push
from topdeck.core.signing import load_secret_key
from topdeck.core.ssh import connect
from topdeck.lab import factory
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.nixenv import LAB_NIX_CONFIG, lab_env


class CountingConnect:
    """A `connect` that counts SSH logins and commands per host."""

    def __init__(self) -> None:
        self.logins: dict[str, int] = {}
        self.commands: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, host: Host, ssh: SSHConfig):  # type: ignore[no-untyped-def]
        with self.lock:
            self.logins[host.name] = self.logins.get(host.name, 0) + 1
        session = connect(host, ssh)
        run = session.run

        def counted_run(*args, **kwargs):  # type: ignore[no-untyped-def]
            with self.lock:
                self.commands[host.name] = self.commands.get(host.name, 0) + 1
            return run(*args, **kwargs)

        session.run = counted_run  # type: ignore[method-assign]
        return session


def median_seconds(action, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def row(figure: str, topdeck: str, baseline: str, ratio: float | None, goal: str, met: bool) -> str:
    ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
    return f"| {figure} | {topdeck} | {baseline} | {ratio_text} | {goal} | {'met' if met else 'NOT met'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--packages", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("NIX_CONFIG", LAB_NIX_CONFIG)
    with tempfile.TemporaryDirectory(prefix="topdeck-bench-plan-") as workdir:
        run(Path(workdir), args)


def run(workdir: Path, args: argparse.Namespace) -> None:
    lab = Lab(workdir / "lab", base_address="127.0.9.11", emulator_port=0)
    lab.up(count=args.hosts, log=lambda *_: None)
    try:
        base = factory.initial_system([lab.client_public_key()], host="bench", count=args.packages,
                                      total_size=100 * factory.MiB)
        changed = base
        for package in base.packages[len(base.packages) // 2::100]:
            changed = factory.upgrade(changed, package.pname, package.version + ".1")
        started = time.perf_counter()
        target = localnix.closure([factory.build(changed, workdir)])[-1].path
        current = localnix.closure([factory.build(base, workdir)])[-1].path
        print(f"built two {args.packages}-package systems in {time.perf_counter() - started:.1f} s")
        cache = B2Cache(BUCKET, "bench", lab.emulator.url, *lab.b2_key())
        push(target, cache, load_secret_key(lab.cache_secret_key))
        for host in lab.hosts.values():
            host.install(str(current), lab_env())
        manifest = parse_manifest(cache.get_bytes(manifest_name(target)), "manifest")
        hosts = tuple(Host(name=h.name, address=h.address, pointer="bench") for h in lab.hosts.values())
        ssh = SSHConfig(known_hosts=lab.known_hosts, identity=lab.client_key, connect_timeout=10)
        targets = {h.name: target for h in hosts}
        counter = CountingConnect()

        def parallel() -> None:
            plan(hosts, targets, {target: manifest}, ssh, connect=counter, parallel=args.hosts)

        def one_at_a_time() -> None:
            plan(hosts, targets, {target: manifest}, ssh, connect=connect, parallel=1)

        fleet = median_seconds(parallel, args.repeat)
        serial = median_seconds(one_at_a_time, args.repeat)
        round_trips = max(counter.commands.values()) / args.repeat
        logins = max(counter.logins.values()) / args.repeat

        before = {info.path: info.nar_size for info in localnix.closure([current])}
        after = {p.path: p.nar_size for p in manifest.paths}
        ours = median_seconds(lambda: render_diff_closures(diff_closures(before, after)), args.repeat)
        nix = median_seconds(lambda: subprocess.run(["nix", "store", "diff-closures", str(current), str(target)],
                                                    check=True, capture_output=True, env=lab_env()), args.repeat)
        print(f"\nplan of {args.hosts} hosts, {len(manifest.paths)}-path closure, median of {args.repeat}:\n")
        print("| figure | topdeck | baseline | ratio | goal | |")
        print("|---|---|---|---|---|---|")
        print(row(f"plan, {args.hosts} hosts", f"{fleet:.2f} s", f"{serial:.2f} s one at a time", fleet / serial,
                  "< 1.5 s", fleet < 1.5))
        print(row("SSH round trips per host", f"{round_trips:.0f} ({logins:.0f} login)", "-", None, "1",
                  round_trips == 1))
        print(row("diff alone", f"{ours * 1000:.1f} ms", f"{nix * 1000:.1f} ms nix store diff-closures",
                  ours / nix, "<= 1x", ours <= nix))
    finally:
        lab.down(log=lambda *_: None)


if __name__ == "__main__":
    main()
