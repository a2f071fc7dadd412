"""What the screens share through the app: the fleet's last refresh, the runs in progress, and the app's face
towards its screens (`Shell`), so that screens never import the app itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from topdeck.core.cache.pointers import PointerVersion
from topdeck.core.inventory import Inventory
from topdeck.core.operations import HostStatus
from topdeck.tui.backend import EngineBackend
from topdeck.tui.present import Clock


@dataclass
class Run:
    """A deploy or rollback in progress: what `q` must ask about and cancel."""

    title: str
    hosts: tuple[str, ...]
    cancel: Callable[[], None]


@dataclass
class FleetState:
    """What the fleet screen shows and other screens read: refreshed in the background."""

    statuses: dict[str, HostStatus] = field(default_factory=dict)
    pointers: dict[str, PointerVersion] = field(default_factory=dict)
    selected: set[str] = field(default_factory=set)
    refreshed: float = 0.0
    errors: tuple[str, ...] = ()


class Shell(Protocol):
    """What a screen may use of the app (tui/app.py's TopdeckApp is one)."""

    backend: EngineBackend
    clock: Clock
    refresh_on_start: bool
    fleet: FleetState

    @property
    def inventory(self) -> Inventory: ...
    @property
    def deploying(self) -> set[str]: ...
    def run_started(self, run: Run) -> None: ...
    def run_finished(self, run: Run) -> None: ...
