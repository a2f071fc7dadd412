"""Benchmarks 7 and 8: deploys on the lab, each against the same hosts deployed one at a time.

- no-change deploy of 10 hosts already on their target (plan + deploy, end to end) [goal: < 2 s in all];
- small-change deploy of 20 hosts (one package upgraded) against the slowest of the same hosts deployed alone
  [goal: at most 1.5x], and against all of them one at a time.
Every deploy is the real thing: SSH logins, the host script, Nix fetching from the emulator, activation and the
confirming login. The inventory's `parallel` is 20, so all hosts of a run go at once.
"""

from __future__ import annotations

import secrets

from bench.common import Figure, b2_cache, log, median, repeats, shared_lab, signing_key, timed, work_root
from bench.fleetlab import ChangingSystem, write_inventory
from topdeck.core.cache import pointers
from topdeck.core.operations import deploy_fleet, plan_fleet, trusted_key

HOSTS = 20
NO_CHANGE_HOSTS = 10


class Fleet:
    def __init__(self, quick: bool):
        self.lab = shared_lab(hosts=HOSTS)
        self.prefix = f"deploy-{secrets.token_hex(4)}"
        names = [f"host-{index}" for index in range(1, HOSTS + 1)]
        self.inventory = write_inventory(self.lab, work_root() / self.prefix, names, self.prefix, "bench", HOSTS)
        self.cache = b2_cache(self.lab, self.prefix)
        self.system = ChangingSystem(self.lab, "bench", work_root() / f"{self.prefix}-systems", self.cache,
                                     signing_key(self.lab), "bench")
        self.publish_change = self.system.publish_change

    def deploy(self, hosts: list[str]) -> float:
        """Seconds to plan and deploy `hosts`; every host must end on the target."""
        result = {}

        def run() -> None:
            result["r"] = deploy_fleet(self.inventory, plan_fleet(self.inventory, hosts), cache=self.cache)

        seconds = timed(run)
        if not result["r"].ok:
            raise RuntimeError(f"bench deploy failed: {[(o.host, o.reason) for o in result['r'].outcomes]}")
        return seconds


def run(quick: bool = False) -> list[Figure]:
    fleet = Fleet(quick)
    names = [f"host-{i}" for i in range(1, HOSTS + 1)]
    log(f"deploy: installing a first system on {HOSTS} hosts")
    fleet.publish_change()
    fleet.deploy(names)

    log("deploy: a small change, one host at a time")
    fleet.publish_change()
    alone = [fleet.deploy([name]) for name in names]
    small = []
    for _ in range(repeats(quick, 3)):
        fleet.publish_change()
        log(f"deploy: a small change on {HOSTS} hosts at once")
        small.append(fleet.deploy(names))

    subset = names[:NO_CHANGE_HOSTS]
    log(f"deploy: no change on {NO_CHANGE_HOSTS} hosts, at once and one at a time")
    together = [fleet.deploy(subset) for _ in range(repeats(quick, 5))]
    serial = [sum(fleet.deploy([name]) for name in subset) for _ in range(repeats(quick, 2))]
    versions = len(pointers.history(fleet.cache, "bench", [trusted_key(fleet.inventory)]))
    return [
        Figure(f"no-change deploy, {NO_CHANGE_HOSTS} hosts (plan + deploy)", median(together), median(serial), "s",
               "< 2 s in all", median(together) < 2.0, "baseline: the same hosts one at a time"),
        Figure(f"small-change deploy, {HOSTS} hosts", median(small), max(alone), "s", "<= 1.5x the slowest host alone",
               median(small) <= 1.5 * max(alone),
               f"one at a time: {sum(alone):.1f} s in all; {versions} pointer versions published"),
    ]
