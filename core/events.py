"""The events the engine emits while it works. Front ends (TUI, CLI, JSON lines) only ever see these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """How far a phase of a job is: paths and bytes done of their totals."""

    phase: str
    paths_done: int = 0
    paths_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    current: str = ""
    rate: float = 0.0
    host: str = ""


@dataclass(frozen=True)
class LogLine:
    text: str
    host: str = ""


@dataclass(frozen=True)
class Transactions:
    """B2 transactions by class (A, B, C) and by call name."""

    a: int = 0
    b: int = 0
    c: int = 0
    calls: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PushResult:
    toplevel: str
    paths_total: int
    paths_uploaded: int
    paths_skipped: int
    nar_bytes_uploaded: int
    file_bytes_uploaded: int
    nar_bytes_skipped: int
    seconds: float
    transactions: Transactions
    pointer: str = ""
    pointer_serial: int = 0
    pointer_changed: bool = False


Event = Progress | LogLine | PushResult
Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """An emit that drops every event."""
