"""Benchmark 5: the plan of 10 hosts for the ~1000-path closure: SSH round trips per host (goal: 1) and time (goal:
< 1.5 s), against the same hosts planned one at a time (the baseline).

    .venv/bin/python bench/plan.py [--quick]          (or: .venv/bin/python -m bench plan)

The hosts run the base closure; the target is the 1 %-changed one, pushed to the emulator first. Needs root.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Figure,
    b2_cache,
    close_shared_lab,
    closures,
    log,
    median,
    repeats,
    shared_lab,
    signing_key,
    table,
    times,
)
from topdeck.core.cache.manifest import manifest_name, parse_manifest  # noqa: E402
from topdeck.core.cache.push import push  # noqa: E402
from topdeck.core.inventory import Host, SSHConfig  # noqa: E402
from topdeck.core.nix.store import parse_store_path  # noqa: E402
from topdeck.core.plan import plan  # noqa: E402
from topdeck.core.remote.ssh import connect  # noqa: E402
from topdeck.lab.nixenv import lab_env  # noqa: E402

HOSTS = 10


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


def run(quick: bool = False) -> list[Figure]:
    lab = shared_lab(hosts=HOSTS)
    built = closures()
    target = parse_store_path(built.changed)
    cache = b2_cache(lab, f"plan-{secrets.token_hex(4)}")
    log("plan: pushing the target")
    push(target, cache, signing_key(lab))
    lab_hosts = [lab.host(f"host-{i}") for i in range(1, HOSTS + 1)]
    log(f"plan: installing the base closure on {HOSTS} hosts")
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda host: host.install(built.base, lab_env()), lab_hosts))
    manifest = parse_manifest(cache.get_bytes(manifest_name(target)), "manifest")
    hosts = tuple(Host(name=h.name, address=h.address, pointer="bench") for h in lab_hosts)
    ssh = SSHConfig(known_hosts=lab.known_hosts, identity=lab.client_key, connect_timeout=10)
    targets = {h.name: target for h in hosts}
    counter = CountingConnect()
    results = []

    def parallel() -> None:
        results.append(plan(hosts, targets, {target: manifest}, ssh, connect=counter, parallel=HOSTS))

    def one_at_a_time() -> None:
        plan(hosts, targets, {target: manifest}, ssh, connect=connect, parallel=1)

    count = repeats(quick, 5)
    log("plan: all hosts at once, then one at a time")
    fleet = median(times(parallel, count))
    serial = median(times(one_at_a_time, count))
    if not all(p.planned for r in results for p in r.hosts):
        raise RuntimeError(f"some hosts were not planned: {results[-1]}")
    round_trips = max(counter.commands.values()) / count
    logins = max(counter.logins.values()) / count
    missing = results[-1].hosts[0]
    return [
        Figure(f"plan, {HOSTS} hosts, {len(manifest.paths)}-path closure", fleet, serial, "s", "< 1.5 s",
               fleet < 1.5, f"baseline: the same hosts one at a time; median of {count}; "
               f"{missing.fetch_paths} paths to fetch per host"),
        Figure("plan: SSH round trips per host", round_trips, None, "", "1", round_trips == 1,
               f"{logins:.0f} login and {round_trips:.0f} command per host"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    try:
        print(table(run(args.quick)))
    finally:
        close_shared_lab()


if __name__ == "__main__":
    main()
