"""The B2 emulator's meter: transaction counters by class and call, and the fault plan with its seeded
picker that decides which requests get a 503, a timeout, a dropped connection or a daily-cap 403."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections import Counter
from enum import StrEnum
from typing import Any

TRANSACTION_CLASSES = ("A", "B", "C")


class FaultKind(StrEnum):
    SERVICE_UNAVAILABLE = "service_unavailable"
    TIMEOUT = "timeout"
    DROP = "drop"
    DOWNLOAD_CAP = "download_cap_exceeded"
    TRANSACTION_CAP = "transaction_cap_exceeded"


class Counters:
    """Thread-safe counts of answered B2 calls and of injected faults. A, B and C count billed
    transactions (a listing is billed per started thousand files it returns), `calls` counts
    requests per call name, `bytes_received` the request bodies' bytes (what clients uploaded) and `bytes_sent`
    the answers' bodies (what they downloaded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._classes: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()

    def count_call(self, call: str, transaction_class: str, transactions: int = 1) -> None:
        with self._lock:
            self._classes[transaction_class] += transactions
            self._calls[call] += 1

    def count_fault(self, kind: FaultKind) -> None:
        with self._lock:
            self._faults[kind.value] += 1

    def count_bytes(self, received: int, sent: int) -> None:
        with self._lock:
            self._bytes["received"] += received
            self._bytes["sent"] += sent

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                **{name: self._classes[name] for name in TRANSACTION_CLASSES},
                "calls": dict(self._calls),
                "faults": sum(self._faults.values()),
                "faults_by_kind": dict(self._faults),
                "bytes_received": self._bytes["received"],
                "bytes_sent": self._bytes["sent"],
            }

    def reset(self) -> None:
        with self._lock:
            self._classes.clear()
            self._calls.clear()
            self._faults.clear()
            self._bytes.clear()


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject. The shares are probabilities per request (their sum at most 1); the
    caps answer every request of their class (B for download_cap, C for transaction_cap).

    Every fault, caps included, only touches requests in scope: `classes`, `calls` (None: all)
    and `public_only` (only GET/HEAD on /file/<bucket>/<key>), `path_contains` (only requests whose path holds
    this text, say "/nar/"). `max_faults` stops the random
    faults (not the caps) after that many. `retry_after` is the Retry-After header of a 503
    (None: no header, so b2sdk backs off 1 s, 1.5 s, ...)."""

    service_unavailable: float = 0.0
    timeout: float = 0.0
    timeout_seconds: float = 5.0
    drop: float = 0.0
    download_cap: bool = False
    transaction_cap: bool = False
    classes: tuple[str, ...] = TRANSACTION_CLASSES
    calls: tuple[str, ...] | None = None
    public_only: bool = False
    path_contains: str | None = None
    max_faults: int | None = None
    retry_after: int | None = 0
    seed: int = 0

    def __post_init__(self) -> None:
        shares = (self.service_unavailable, self.timeout, self.drop)
        if any(share < 0 for share in shares) or sum(shares) > 1:
            raise ValueError("fault shares must be >= 0 and add up to at most 1")
        if not set(self.classes) <= set(TRANSACTION_CLASSES):
            raise ValueError(f"classes must be among {TRANSACTION_CLASSES}")
        if self.timeout_seconds < 0:
            raise ValueError("timeout_seconds must be >= 0")

    @classmethod
    def from_json(cls, settings: dict[str, Any]) -> FaultPlan:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        values = dict(settings)
        for name in ("classes", "calls"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def covers(self, call: str, transaction_class: str, public: bool, path: str = "") -> bool:
        return (
            transaction_class in self.classes
            and (self.calls is None or call in self.calls)
            and (public or not self.public_only)
            and (self.path_contains is None or self.path_contains in path)
        )


class FaultPicker:
    """Decides, request by request, which fault (if any) the current plan injects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan = FaultPlan()
        self._random = random.Random(self._plan.seed)
        self._random_faults = 0

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan
            self._random = random.Random(plan.seed)
            self._random_faults = 0

    def pick(self, call: str, transaction_class: str, public: bool, path: str = "") -> FaultKind | None:
        with self._lock:
            plan = self._plan
            if not plan.covers(call, transaction_class, public, path):
                return None
            if plan.download_cap and transaction_class == "B":
                return FaultKind.DOWNLOAD_CAP
            if plan.transaction_cap and transaction_class == "C":
                return FaultKind.TRANSACTION_CAP
            if plan.max_faults is not None and self._random_faults >= plan.max_faults:
                return None
            return self._draw(plan)

    def _draw(self, plan: FaultPlan) -> FaultKind | None:
        draw = self._random.random()
        for kind, share in (
            (FaultKind.SERVICE_UNAVAILABLE, plan.service_unavailable),
            (FaultKind.TIMEOUT, plan.timeout),
            (FaultKind.DROP, plan.drop),
        ):
            if draw < share:
                self._random_faults += 1
                return kind
            draw -= share
        return None
