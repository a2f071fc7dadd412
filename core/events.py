"""The events the engine emits while it works. Front ends (TUI, CLI, JSON lines) only ever see these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from topdeck.core.vocabulary import Mode, Outcome, Phase, Step


@dataclass(frozen=True)
class Progress:
    """How far a step of a job is: paths and bytes done of their totals."""

    phase: Step
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
class PublishedPointer:
    """A pointer a push left naming its toplevel; `changed` when this push published it."""

    name: str
    path: str
    serial: int
    changed: bool
    delta_bytes: int = 0  # the delta object from the pointer's previous target this push wrote (0: none)


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
    toplevels: tuple[str, ...] = ()  # every toplevel pushed (`toplevel` is the first)
    pointers: tuple[PublishedPointer, ...] = ()  # every pointer (`pointer` is the first)


@dataclass(frozen=True)
class HostPhase:
    """A host entered a phase of a deploy or rollback.

    Phases in order: queued, connect, lock, verify, fetch, profile, activate, confirm, check; switch-lock (detail:
    "waiting for the switch lock held by …") while a switch that waits for its lock waits, then activate again
    (or failed, once deploy.lock_wait has passed and the host stopped it and put its profile back); a run that reboots
    has reboot, booted and confirm (or rollback, returning) after the activation; then one final phase: done,
    failed, rolled-back, skipped (not started: an earlier wave failed) or cancelled."""

    host: str
    phase: Phase
    detail: str = ""


@dataclass(frozen=True)
class WaveStarted:
    index: int  # from 1
    count: int
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class HostOutcome:
    """How a host ended a deploy or rollback. `after` is what /run/current-system named at the end."""

    host: str
    outcome: Outcome
    target: str
    before: str = ""
    after: str = ""
    generation: int = 0
    reason: str = ""
    fetched_paths: int = 0
    fetched_bytes: int = 0
    started: float = 0.0
    finished: float = 0.0
    switch_code: int | None = None  # switch-to-configuration's exit status, when it ran
    switch_meaning: str = ""  # what that status means (switch_meaning)
    booted: str = ""  # what /run/booted-system named at the end of a run that rebooted the host

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.DONE


@dataclass(frozen=True)
class DeployResult:
    run_id: str
    mode: Mode
    outcomes: tuple[HostOutcome, ...]
    waves: tuple[tuple[str, ...], ...] = ()
    started: float = 0.0
    finished: float = 0.0
    stopped: str = ""  # why later waves were not started, if they were not

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(outcome.ok for outcome in self.outcomes)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(outcome.host for outcome in self.outcomes if not outcome.ok)


Event = Progress | LogLine | PushResult | HostPhase | WaveStarted | HostOutcome | DeployResult
Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """An emit that drops every event."""


# What switch-to-configuration's exit status means, as NixOS's switch-to-configuration-ng returns it.
SWITCH_CODES = {
    0: "activated",
    1: "failed (a usage error, a failed pre-switch check or bootloader installation)",
    2: "the activation script failed",
    4: "units failed to start or restart",
    11: "another switch held /run/nixos/switch-to-configuration.lock: nothing was done",
    100: "the new init is incompatible: installed as the boot default, takes effect after a reboot",
}


def switch_meaning(code: int | None) -> str:
    if code is None:
        return ""
    return SWITCH_CODES.get(code, f"failed (exit {code})")
