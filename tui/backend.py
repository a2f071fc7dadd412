"""The TUI's one door into the engine (the harlequin boundary): every call the screens make into core.

Screens never import core's fleet or cache code themselves; they hold an `EngineBackend` (the real one below, over
core/facade.py's `Fleet`, or a fake with the same methods in tests and benchmarks) and call it from one thread
worker per job, passing an `emit` that posts Textual messages and a `threading.Event` to cancel. Every method may
raise a `TopdeckError`; the screens show its one line.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from topdeck.core.cache.pointers import Pointer, PointerVersion
from topdeck.core.errors import UnknownHostKey
from topdeck.core.events import DeployResult, Emit, PushResult, ignore
from topdeck.core.facade import Fleet
from topdeck.core.history import HistoryEntry
from topdeck.core.hostexec import ExecResult
from topdeck.core.inventory import Inventory
from topdeck.core.nix.diff import ClosureDiff
from topdeck.core.operations import DeployRequest, FleetPlan, HostStatus
from topdeck.core.remote.hostverbs import Generation
from topdeck.core.vocabulary import Mode


class EngineBackend(Protocol):
    """What the screens need from the engine, in core's own types."""

    inventory: Inventory

    def status(self, emit: Emit, cancel: threading.Event) -> tuple[HostStatus, ...]: ...
    def pointers(self) -> dict[str, PointerVersion]: ...
    def history(self, name: str) -> list[PointerVersion]: ...
    def read_pointer(self, name: str) -> Pointer: ...
    def rollback_pointer(self, name: str, to: str | None = None) -> Pointer: ...
    def publish_pointer(self, name: str, path: str) -> Pointer: ...
    def run_history(self) -> list[HistoryEntry]: ...
    def plan(self, hosts: Sequence[str], target: str | None, emit: Emit, cancel: threading.Event) -> FleetPlan: ...
    def in_cache(self, path: str) -> bool: ...
    def push(self, path: str, pointer: str | None, emit: Emit, cancel: threading.Event) -> PushResult: ...
    def release(self, hosts: Sequence[str], emit: Emit, cancel: threading.Event) -> PushResult: ...
    def deploy(self, fleet_plan: FleetPlan, mode: Mode, emit: Emit, cancel: threading.Event) -> DeployResult: ...
    def generations(self, host: str) -> tuple[Generation, ...]: ...
    def rollback(self, hosts: Sequence[str], to: int | None, emit: Emit, cancel: threading.Event) -> DeployResult: ...
    def generation_diff(self, host: str, path: str) -> ClosureDiff: ...
    def check_host_key(self, host: str) -> str: ...
    def pin_host_key(self, error: UnknownHostKey) -> str: ...

    def run_command(self, hosts: Sequence[str], argv: Sequence[str], emit: Emit,
                    cancel: threading.Event) -> ExecResult: ...


class Backend:
    """The real engine, for one inventory: the screens' calls, passed to the facade. Thread-safe."""

    def __init__(self, inventory: Inventory):
        self.fleet = Fleet(inventory)

    @property
    def inventory(self) -> Inventory:
        return self.fleet.inventory

    @inventory.setter
    def inventory(self, inventory: Inventory) -> None:
        self.fleet.inventory = inventory

    def status(self, emit: Emit = ignore, cancel: threading.Event | None = None) -> tuple[HostStatus, ...]:
        return self.fleet.status((), emit, cancel)

    def plan(self, hosts: Sequence[str], target: str | None, emit: Emit = ignore,
             cancel: threading.Event | None = None) -> FleetPlan:
        return self.fleet.plan(hosts, target, emit, cancel)

    def deploy(self, fleet_plan: FleetPlan, mode: Mode, emit: Emit = ignore,
               cancel: threading.Event | None = None) -> DeployResult:
        return self.fleet.deploy(fleet_plan, DeployRequest(mode), emit=emit, cancel=cancel)

    def generations(self, host: str) -> tuple[Generation, ...]:
        return self.fleet.generations(host)

    def rollback(self, hosts: Sequence[str], to: int | None, emit: Emit = ignore,
                 cancel: threading.Event | None = None) -> DeployResult:
        return self.fleet.rollback(hosts, to, emit, cancel)

    def generation_diff(self, host: str, path: str) -> ClosureDiff:
        return self.fleet.generation_diff(host, path)

    def pointers(self) -> dict[str, PointerVersion]:
        return self.fleet.pointers()

    def history(self, name: str) -> list[PointerVersion]:
        return self.fleet.history(name)

    def read_pointer(self, name: str) -> Pointer:
        return self.fleet.read_pointer(name)

    def rollback_pointer(self, name: str, to: str | None = None) -> Pointer:
        return self.fleet.rollback_pointer(self.fleet.pointer_rollback(name, to))

    def publish_pointer(self, name: str, path: str) -> Pointer:
        return self.fleet.publish_pointer(name, path)

    def run_history(self) -> list[HistoryEntry]:
        return self.fleet.run_history()

    def in_cache(self, path: str) -> bool:
        return self.fleet.in_cache(path)

    def push(self, path: str, pointer: str | None, emit: Emit = ignore,
             cancel: threading.Event | None = None) -> PushResult:
        return self.fleet.push(path, pointer, emit, cancel)

    def release(self, hosts: Sequence[str], emit: Emit = ignore, cancel: threading.Event | None = None) -> PushResult:
        """Build the hosts (one build), push what the cache lacks (one push) and publish their pointers."""
        return self.fleet.release(self.fleet.hosts(hosts), emit, cancel)

    def check_host_key(self, host: str) -> str:
        return self.fleet.check_host_key(host)

    def pin_host_key(self, error: UnknownHostKey) -> str:
        return self.fleet.pin_host_key(error)

    def run_command(self, hosts: Sequence[str], argv: Sequence[str], emit: Emit = ignore,
                    cancel: threading.Event | None = None) -> ExecResult:
        return self.fleet.run_command(hosts, argv, emit=emit, cancel=cancel)
