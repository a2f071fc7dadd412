"""The TUI's one door into the engine (the harlequin boundary): every call the screens make into core.

Screens never import core's fleet or cache code themselves; they hold a `Backend` (the real one below, or a
fake with the same methods in tests and benchmarks) and call it from one thread worker per job, passing an
`emit` that posts Textual messages and a `threading.Event` to cancel. Every method may raise a
`TopdeckError`; the screens show its one line.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from topdeck.core import fleet, pointers
from topdeck.core.cache import Cache, open_cache
from topdeck.core.diff import ClosureDiff
from topdeck.core.errors import CacheError, UnknownHostKey
from topdeck.core.events import DeployResult, Emit, PushResult, ignore
from topdeck.core.inventory import Host, Inventory
from topdeck.core.manifest import manifest_name
from topdeck.core.pointers import Pointer, PointerVersion
from topdeck.core.store import parse_store_path


class EngineBackend(Protocol):
    """What the screens need from the engine. `Any` where core's own dataclasses are passed through."""

    inventory: Inventory

    def status(self, emit: Emit, cancel: threading.Event) -> tuple[Any, ...]: ...
    def pointers(self) -> dict[str, PointerVersion]: ...
    def history(self, name: str) -> list[PointerVersion]: ...
    def rollback_pointer(self, name: str, to: str | None = None) -> Pointer: ...
    def publish_pointer(self, name: str, path: str) -> Pointer: ...
    def plan(self, hosts: Sequence[str], target: str | None, emit: Emit, cancel: threading.Event) -> Any: ...
    def in_cache(self, path: str) -> bool: ...
    def push(self, path: str, pointer: str | None, emit: Emit, cancel: threading.Event) -> PushResult: ...
    def release(self, hosts: Sequence[str], emit: Emit, cancel: threading.Event) -> PushResult: ...
    def deploy(self, fleet_plan: Any, mode: str, emit: Emit, cancel: threading.Event) -> DeployResult: ...
    def generations(self, host: str) -> tuple[Any, ...]: ...
    def rollback(self, hosts: Sequence[str], to: int | None, emit: Emit, cancel: threading.Event) -> DeployResult: ...
    def generation_diff(self, host: str, path: str) -> ClosureDiff: ...
    def check_host_key(self, host: str) -> None: ...
    def accept_host_key(self, error: UnknownHostKey) -> str: ...


class Backend:
    """The real engine, for one inventory. Thread-safe: each job runs in its own worker thread."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self._cache: Cache | None = None
        self._lock = threading.Lock()

    @property
    def cache(self) -> Cache:
        with self._lock:
            if self._cache is None:
                self._cache = open_cache(self.inventory.cache)
            return self._cache

    # --- fleet ------------------------------------------------------------------------------------

    def status(self, emit: Emit = ignore, cancel: threading.Event | None = None) -> tuple[Any, ...]:
        return fleet.status_fleet(self.inventory, (), cache=self.cache, emit=emit, cancel=cancel)

    def plan(self, hosts: Sequence[str], target: str | None, emit: Emit = ignore,
             cancel: threading.Event | None = None) -> fleet.FleetPlan:
        return fleet.plan_fleet(self.inventory, list(hosts), target, cache=self.cache, emit=emit, cancel=cancel)

    def deploy(self, fleet_plan: fleet.FleetPlan, mode: str, emit: Emit = ignore,
               cancel: threading.Event | None = None) -> DeployResult:
        return fleet.deploy_fleet(self.inventory, fleet_plan, mode=mode, cache=self.cache, emit=emit, cancel=cancel)

    def generations(self, host: str) -> tuple[Any, ...]:
        return fleet.generations(self.inventory, host)

    def rollback(self, hosts: Sequence[str], to: int | None, emit: Emit = ignore,
                 cancel: threading.Event | None = None) -> DeployResult:
        return fleet.rollback_fleet(self.inventory, list(hosts), to, emit=emit, cancel=cancel)

    def generation_diff(self, host: str, path: str) -> ClosureDiff:
        return fleet.generation_diff(self.inventory, host, path)

    # --- pointers and the cache ---------------------------------------------------------------------

    def pointers(self) -> dict[str, PointerVersion]:
        return pointers.current(self.cache.listing())

    def history(self, name: str) -> list[PointerVersion]:
        return pointers.history(self.cache, name)

    def rollback_pointer(self, name: str, to: str | None = None) -> Pointer:
        from topdeck.tui.cli_push import signing_key

        target = pointers.rollback_target(pointers.history(self.cache, name), to)
        return pointers.publish(self.cache, name, target, signing_key(self.inventory), self.cache.listing())

    def publish_pointer(self, name: str, path: str) -> Pointer:
        from topdeck.tui.cli_push import signing_key

        store_path = parse_store_path(path)
        if not self.in_cache(path):
            raise CacheError(f"{path} is not in the cache: push it first")
        return pointers.publish(self.cache, name, store_path, signing_key(self.inventory), self.cache.listing())

    def in_cache(self, path: str) -> bool:
        return manifest_name(parse_store_path(path)) in self.cache.listing()

    def push(self, path: str, pointer: str | None, emit: Emit = ignore,
             cancel: threading.Event | None = None) -> PushResult:
        from topdeck.core.push import push
        from topdeck.tui.cli_push import signing_key

        return push(parse_store_path(path), self.cache, signing_key(self.inventory), pointer=pointer, emit=emit,
                    cancel=cancel)

    def release(self, hosts: Sequence[str], emit: Emit = ignore, cancel: threading.Event | None = None) -> PushResult:
        """Build the hosts (one build), push what the cache lacks (one push) and publish their pointers."""
        from topdeck.core.inventory import select_hosts
        from topdeck.core.release import release
        from topdeck.tui.cli_push import signing_key

        chosen = select_hosts(self.inventory, hosts)
        return release(chosen, lambda: self.cache, signing_key(self.inventory), emit=emit, cancel=cancel)

    # --- host keys --------------------------------------------------------------------------------

    def check_host_key(self, host: str) -> None:
        """Connect once: raises UnknownHostKey / ChangedHostKey (or another SSHError) if the key is not pinned."""
        from topdeck.core.ssh import connect

        with connect(self._host(host), self.inventory.ssh):
            pass

    def accept_host_key(self, error: UnknownHostKey) -> str:
        """Pin the key the operator accepted, through the same core function as `topdeck trust`."""
        from topdeck.core.trust import from_error, pin

        pinned = pin(from_error(error))
        return f"{pinned.key_name} {pinned.key_type} {pinned.key.get_base64()}\n"

    def _host(self, name: str) -> Host:
        return self.inventory.host(name)
