"""What the command line and the TUI do with an inventory: open its cache, find targets, plan, deploy."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from topdeck.core.cache import Cache, open_cache
from topdeck.core.events import Emit, ignore
from topdeck.core.inventory import Host, Inventory, select_hosts
from topdeck.core.manifest import Manifest
from topdeck.core.plan import Plan, load_manifests, plan, targets_from_pointers
from topdeck.core.store import StorePath, parse_store_path


@dataclass(frozen=True)
class FleetPlan:
    """A plan with what it was made from, so that a deploy can follow it without asking the cache again."""

    hosts: tuple[Host, ...]
    targets: dict[str, StorePath | str]  # a host's target, or why it has none
    manifests: dict[StorePath, Manifest]
    plan: Plan
    from_pointers: bool


def fleet_targets(hosts: tuple[Host, ...], cache: Cache, target: str | None) -> dict[str, StorePath | str]:
    """Every host's target: `target` (a store path) for all, or each host's pointer."""
    if target:
        path = parse_store_path(target)
        return {host.name: path for host in hosts}
    return targets_from_pointers(hosts, cache)


def plan_fleet(inventory: Inventory, selectors: list[str] | tuple[str, ...], target: str | None = None, *,
               cache: Cache | None = None, emit: Emit = ignore, cancel: threading.Event | None = None) -> FleetPlan:
    """Plan the selected hosts (every host if there are no selectors) towards `target` or their pointers."""
    hosts = select_hosts(inventory, selectors)
    cache = cache or open_cache(inventory.cache)
    targets = fleet_targets(hosts, cache, target)
    manifests = load_manifests({t for t in targets.values() if isinstance(t, StorePath)}, cache)
    result = plan(hosts, targets, manifests, inventory.ssh, parallel=inventory.deploy.parallel, emit=emit,
                  cancel=cancel)
    return FleetPlan(hosts, targets, manifests, result, from_pointers=not target)
