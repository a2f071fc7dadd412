"""Benchmark: 100 hosts in one lab run (100 native hosts and one Debian sid and one Debian 13 image host, booted with
systemd), on 127.0.50.11 and up.

- plan of all of them, and a no-change deploy (plan + deploy), with the inventory's default `parallel` (8) and with
  every host at once; baseline: the plain OpenSSH client logging in to every host at once and reading
  /run/current-system (the SSH fan-out floor);
- SSH logins and sessions (round trips) per host, counted from the hosts' own sshd logs;
- topdeck's own CPU time (this process, every thread), per host;
- B2 transactions per host per deploy, from the emulator's server-side counters (no change; and, not --quick, a
  small change on every host);
- the TUI on them: a fresh process to the first frame with every host's row, and to the full fleet table (every
  host's status read over SSH), against `topdeck status` of the same inventory (the same engine, no TUI).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

from bench.common import BENCH_DIR, Figure, b2_cache, counters, log, median, repeats, signing_key, work_root
from bench.fleetlab import SshdCount, measure, own_lab, ssh_all, write_inventory
from topdeck.core.cache.push import push
from topdeck.core.nix.store import parse_store_path
from topdeck.core.operations import deploy_fleet, plan_fleet
from topdeck.lab import factory

BASE_ADDRESS = "127.0.50.11"
NATIVE_HOSTS = 100
IMAGES = ("sid", "trixie")
DEFAULT_PARALLEL = 8  # the inventory's default `deploy.parallel` (core/inventory.py)
POINTER = "scale"
FREE_CLASS_B = 2500  # B2's free class B transactions per day (FACTS.md)
CLASS_B_PRICE = 0.004 / 10_000  # dollars per class B transaction past the free ones (B2's price list)
AGENT_INTERVAL = 300  # the pull agent's default timer (hosts/modules/topdeck-agent: 5min, plus up to 1min at random)
AGENT_JITTER = 60
FLEETS = (1_000, 10_000)
# The paper figures of the last run (class B at 1,000 and 10,000 hosts, where the pull agent takes over), derived
# from the measured ones; `python -m bench` prints them under "On paper".
PAPER: list[str] = []

TUI_SCRIPT = r"""
import time, sys
started = time.perf_counter()
import asyncio
from topdeck.core.inventory import load_inventory
from topdeck.tui.app import TopdeckApp
from topdeck.tui.backend import Backend

async def main():
    app = TopdeckApp(Backend(load_inventory(sys.argv[1])))
    async with app.run_test(size=(160, 50)) as pilot:
        screen = app.screen
        while screen.query_one("#hosts").row_count < len(app.inventory.hosts):
            await pilot.pause(0.01)
        first = time.perf_counter() - started
        while screen.refreshing or len(app.fleet.statuses) < len(app.inventory.hosts):
            await pilot.pause(0.01)
        await pilot.pause()
        full = time.perf_counter() - started
        states = sorted({getattr(s, "status", "") for s in app.fleet.statuses.values()})
        print(first, full, ",".join(states), flush=True)

asyncio.run(main())
"""


def run(quick: bool = False, natives: int = NATIVE_HOSTS, images: tuple[str, ...] = IMAGES,
        base_address: str = BASE_ADDRESS) -> list[Figure]:
    kinds = {f"host-{natives + i + 1}": kind for i, kind in enumerate(images)}
    count = natives + len(images)
    with own_lab("scale-lab", base_address, count, kinds) as lab:
        return Scale(lab, count, quick).figures()


class Scale:
    def __init__(self, lab, count: int, quick: bool):  # type: ignore[no-untyped-def]
        self.lab, self.count, self.quick = lab, count, quick
        self.names = [f"host-{i}" for i in range(1, count + 1)]
        self.prefix = f"scale-{secrets.token_hex(4)}"
        self.cache = b2_cache(lab, self.prefix)
        self.inventories = {parallel: write_inventory(lab, work_root() / f"{self.prefix}-{parallel}", self.names,
                                                      self.prefix, POINTER, parallel)
                            for parallel in (DEFAULT_PARALLEL, count)}
        self.all_at_once = self.inventories[count]

    def figures(self) -> list[Figure]:
        # The hosts run the lab's first toplevel (the same build on every host): published, a deploy changes nothing.
        first = self.lab.build_initial_toplevel()
        push(parse_store_path(first), self.cache, signing_key(self.lab), pointer=POINTER)
        floor = self._ssh_floor()
        rounds = repeats(self.quick, 3)
        plans = {p: self._plan(p, rounds) for p in self.inventories}
        deploys = {p: self._no_change(p, rounds) for p in self.inventories}
        figures = self._fleet_figures(floor, plans, deploys)
        small = None
        if not self.quick:
            try:
                small = self._small_change()
                figures.append(small[0])
            except RuntimeError as error:  # the other figures stand; this one says why it is missing
                log(f"scale: the small-change deploy failed: {error}")
                figures.append(Figure(f"small-change deploy, {self.count} hosts: B2 class B per host", 0, None, "",
                                      "measured", False, f"not measured: {str(error)[:300]}"))
        figures += self._tui()
        PAPER[:] = paper(deploys[self.count], small[1] if small else None, self.count)
        return figures

    # --- plan and deploy ----------------------------------------------------------------------------

    def _ssh_floor(self) -> float:
        log(f"scale: the plain ssh client on {self.count} hosts at once")
        return median(ssh_all(self.lab, {n: "readlink /run/current-system" for n in self.names})
                      for _ in range(repeats(self.quick, 3)))

    def _plan(self, parallel: int, rounds: int) -> dict[str, float]:
        log(f"scale: plan of {self.count} hosts, {parallel} at a time")
        inventory, runs = self.inventories[parallel], []
        count = SshdCount(self.lab, self.names)
        for _ in range(rounds):
            runs.append(measure(lambda: plan_fleet(inventory, [], cache=self.cache)))
            unplanned = [h.host for h in runs[-1].result.plan.hosts if not h.planned]
            if unplanned:
                raise RuntimeError(f"plan: {len(unplanned)} hosts not planned (first {unplanned[0]})")
        logins, sessions, most_logins, most_sessions = count.per_host()
        return {"seconds": median(r.seconds for r in runs), "cpu": median(r.cpu for r in runs) / self.count,
                "logins": logins / rounds, "sessions": sessions / rounds, "most_logins": most_logins / rounds,
                "most_sessions": most_sessions / rounds}

    def _no_change(self, parallel: int, rounds: int) -> dict[str, float]:
        log(f"scale: no-change deploy of {self.count} hosts, {parallel} at a time")
        inventory, runs = self.inventories[parallel], []
        count, before = SshdCount(self.lab, self.names), counters(self.lab)
        for _ in range(rounds):
            runs.append(measure(lambda: deploy_fleet(inventory, plan_fleet(inventory, [], cache=self.cache),
                                                     cache=self.cache)))
            bad = [(o.host, o.reason) for o in runs[-1].result.outcomes if not o.ok]
            if bad:
                raise RuntimeError(f"no-change deploy: {len(bad)} hosts failed (first {bad[0]})")
        after = counters(self.lab)
        logins, sessions, most_logins, most_sessions = count.per_host()
        per_deploy = rounds * self.count
        return {"seconds": median(r.seconds for r in runs), "cpu": median(r.cpu for r in runs) / self.count,
                "logins": logins / rounds, "sessions": sessions / rounds, "most_logins": most_logins / rounds,
                "most_sessions": most_sessions / rounds,
                **{f"class_{c}": (after[c] - before[c]) / per_deploy for c in ("A", "B", "C")}}

    def _fleet_figures(self, floor: float, plans: dict[int, dict[str, float]],
                       deploys: dict[int, dict[str, float]]) -> list[Figure]:
        n, wide, narrow = self.count, plans[self.count], plans[DEFAULT_PARALLEL]
        deploy, deploy_8 = deploys[self.count], deploys[DEFAULT_PARALLEL]
        where = f"{n} hosts ({n - len(IMAGES)} native, sid and trixie images)" if n > len(IMAGES) else f"{n} hosts"
        return [
            Figure(f"plan, {where}, all at once", wide["seconds"], floor, "s", "≤ 3x the ssh fan-out floor",
                   wide["seconds"] <= 3 * floor,
                   f"baseline: `ssh host readlink /run/current-system` to every host at once; {DEFAULT_PARALLEL} at a "
                   f"time (the default `parallel`): {narrow['seconds']:.2f} s; topdeck CPU "
                   f"{wide['cpu'] * 1000:.0f} ms per host"),
            Figure(f"plan, {n} hosts: SSH logins / round trips per host (sshd logs)", wide["sessions"], None, "",
                   "1 login, 1 round trip", wide["logins"] == 1 and wide["most_sessions"] == 1,
                   f"{wide['logins']:.2f} logins and {wide['sessions']:.2f} sessions per host on average, at most "
                   f"{wide['most_logins']:.0f} / {wide['most_sessions']:.0f}"),
            Figure(f"no-change deploy, {n} hosts (plan + deploy), all at once", deploy["seconds"], floor, "s",
                   "≤ 4x the ssh fan-out floor", deploy["seconds"] <= 4 * floor,
                   f"baseline: one plain ssh login per host, all at once; {DEFAULT_PARALLEL} at a time (the default "
                   f"`parallel`): {deploy_8['seconds']:.2f} s"),
            Figure(f"no-change deploy, {n} hosts: SSH logins / round trips per host (sshd logs)", deploy["sessions"],
                   None, "", "2 logins, 2 round trips (plan, deploy)",
                   deploy["most_logins"] <= 2 and deploy["most_sessions"] <= 2,
                   f"{deploy['logins']:.2f} logins and {deploy['sessions']:.2f} sessions per host on average, at "
                   f"most {deploy['most_logins']:.0f} / {deploy['most_sessions']:.0f}"),
            Figure(f"no-change deploy, {n} hosts: topdeck CPU per host", deploy["cpu"], None, "s", "measured",
                   True, f"this process's user + system time ÷ {n}; plan alone {wide['cpu'] * 1000:.0f} ms per host; "
                   f"{DEFAULT_PARALLEL} at a time {deploy_8['cpu'] * 1000:.0f} ms per host"),
            Figure(f"no-change deploy, {n} hosts: B2 class B per host", deploy["class_B"], None, "", "measured",
                   True, f"emulator counters; class C {deploy['class_C']:.2f} and class A {deploy['class_A']:.2f} "
                   "per host per deploy (the operator's listing and pointer reads, shared by the hosts)"),
        ]

    def _small_change(self) -> tuple[Figure, dict[str, float]]:
        """One package upgraded, deployed to every host at once: class B per host from the emulator's counters."""
        spec = factory.upgrade(factory.initial_system([self.lab.client_public_key()]), "zlib", "1.3.999",
                               size=400_000)
        path = factory.build(spec, work_root() / f"{self.prefix}-systems")
        push(parse_store_path(path), self.cache, signing_key(self.lab), pointer=POINTER)
        log(f"scale: a small change on {self.count} hosts at once")
        inventory, before = self.all_at_once, counters(self.lab)
        fleet_plan = plan_fleet(inventory, [], cache=self.cache)
        fetched = max(h.fetch_paths for h in fleet_plan.plan.hosts)
        done = measure(lambda: deploy_fleet(inventory, fleet_plan, cache=self.cache))
        bad = [(o.host, o.reason) for o in done.result.outcomes if not o.ok]
        if bad:
            raise RuntimeError(f"small-change deploy: {len(bad)} hosts failed (first {bad[0]})")
        after = counters(self.lab)
        per_host = {c: (after[c] - before[c]) / self.count for c in ("A", "B", "C")}
        measured = {"class_B": per_host["B"], "cpu": done.cpu / self.count, "seconds": done.seconds,
                    "paths": fetched}
        return Figure(f"small-change deploy, {self.count} hosts: B2 class B per host", per_host["B"], None, "",
                      "measured", True,
                      f"{fetched} paths fetched per host (a narinfo and a NAR each, plus the pointer and its "
                      f"sidecar); class C {per_host['C']:.2f} per host; the deploy took {done.seconds:.1f} s, topdeck "
                      f"CPU {done.cpu / self.count * 1000:.0f} ms per host"), measured

    # --- the TUI ------------------------------------------------------------------------------------

    def _tui(self) -> list[Figure]:
        log(f"scale: the TUI on {self.count} hosts")
        inventory = str(self.all_at_once.root)
        runs = []
        for _ in range(repeats(self.quick, 3)):
            result = subprocess.run([sys.executable, "-c", TUI_SCRIPT, inventory], capture_output=True, text=True,
                                    check=True, cwd=BENCH_DIR.parent, timeout=300)
            first, full, states = result.stdout.split()
            if not set(states.split(",")) <= {"up-to-date", "behind"}:  # behind: a host the small change missed
                raise RuntimeError(f"the TUI's fleet table shows {states}: some hosts' statuses were not read")
            runs.append((float(first), float(full)))
        status = []
        for _ in range(repeats(self.quick, 3)):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", inventory, "status", "--json"],
                           capture_output=True, check=True, cwd=BENCH_DIR.parent, timeout=300)
            status.append(time.perf_counter() - started)
        first, full = median(r[0] for r in runs), median(r[1] for r in runs)
        return [
            Figure(f"TUI: start to first frame with all {self.count} hosts' rows", first, None, "s", "< 1 s",
                   first < 1.0, "a fresh process, imports included; the real engine on the lab"),
            Figure(f"TUI: start to the full fleet table, {self.count} hosts (every status read over SSH)", full,
                   median(status), "s", "≤ 1.5x `topdeck status`", full <= 1.5 * median(status),
                   "baseline: `topdeck status --json` of the same inventory (a fresh process, the same engine); the "
                   f"TUI reads the hosts {self.all_at_once.deploy.parallel} at a time"),
        ]


if __name__ == "__main__":
    from bench.common import close_shared_lab, table

    try:
        print(table(run(quick="--quick" in sys.argv)))
    finally:
        close_shared_lab()


def paper(no_change: dict[str, float], small: dict[str, float] | None, hosts: int) -> list[str]:
    """Class B per deploy at 1,000 and 10,000 hosts against B2's free allowance, and the fleet size from which the
    pull agent should take over from SSH fan-out, from the measured per-host figures."""
    lines = []
    kinds = [("no-change deploy", no_change)] + ([("small-change deploy", small)] if small else [])
    for what, measured in kinds:
        per_host = measured["class_B"]
        for fleet in FLEETS:
            total = per_host * fleet
            free = FREE_CLASS_B / total
            lines.append(f"- {what} of {fleet:,} hosts: {per_host:.2f} class B per host (measured on {hosts}) = "
                         f"{total:,.0f} class B, {total / FREE_CLASS_B:.1f}x the daily free {FREE_CLASS_B:,}: "
                         f"{free:.2f} such deploys a day free, then ${total * CLASS_B_PRICE:.4f} a deploy")
    polls = 86_400 / AGENT_INTERVAL
    for fleet in FLEETS:
        total = polls * fleet * no_change["class_B"]
        lines.append(f"- pull agent on {fleet:,} hosts, polling every {AGENT_INTERVAL // 60} min: {polls:.0f} polls a "
                     f"host a day x {no_change['class_B']:.2f} class B (the same pointer read as a no-change deploy) "
                     f"= {total:,.0f} class B a day, ${max(0, total - FREE_CLASS_B) * CLASS_B_PRICE:.2f} a day past "
                     "the free allowance; the agent is never cheaper in class B than fan-out, which reads only "
                     "when it deploys")
    cpu = (small or no_change)["cpu"]
    latency = AGENT_INTERVAL / 2 + AGENT_JITTER / 2
    cores = os.cpu_count() or 1
    crossover = latency * cores / cpu
    lines.append(f"- where the pull agent takes over: a fan-out costs the operator's machine {cpu * 1000:.0f} ms of "
                 f"CPU per host ({'small change' if small else 'no change'}, measured on {hosts} hosts), so with "
                 f"{cores} cores it cannot finish N hosts in less than N x {cpu * 1000:.0f} ms / {cores}; the agent "
                 f"applies a new pointer {latency / 60:.0f} min after it is published on average (half its "
                 f"{AGENT_INTERVAL // 60} min interval plus half its {AGENT_JITTER} s random delay), whatever the "
                 f"fleet's size. Fan-out is slower than the agent from about {crossover:,.0f} hosts on (at 1,000 "
                 f"hosts it takes at least {1000 * cpu / cores:.0f} s; at 10,000, {10_000 * cpu / cores / 60:.1f} "
                 "min), and before that wherever hosts are often unreachable (a fan-out skips them, the agent "
                 "catches up when they return). Below it, fan-out is faster and shows every host's progress")
    return lines
