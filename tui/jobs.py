"""A TUI job: one engine call run in a thread worker, and the Textual messages its worker posts back to the
screen that started it (with `post_message`, thread-safe)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from textual.message import Message

from topdeck.core.events import Emit, Event

R = TypeVar("R")
Work = Callable[[Emit, threading.Event], R]


@dataclass(frozen=True)
class Job(Generic[R]):
    """One engine call for a screen: `work(emit, cancel)` runs in a thread worker, whose own cancel event is its
    `cancel`; `done(result)` or `failed(line, error)` runs on the screen afterwards, `progress(event)` for each
    engine event meanwhile. Without `failed`, the line is shown as a notification titled `name`."""

    name: str
    work: Work[R]
    done: Callable[[R], None]
    failed: Callable[[str, BaseException], None] | None = None
    progress: Callable[[Event], None] | None = None


class EngineEvent(Message):
    """One event of core/events.py, emitted by the engine while `job` runs."""

    def __init__(self, job: Job[Any], event: Event) -> None:
        super().__init__()
        self.job, self.event = job, event


class JobDone(Message):
    """`job` returned `result`."""

    def __init__(self, job: Job[Any], result: Any) -> None:
        super().__init__()
        self.job, self.result = job, result


class JobFailed(Message):
    """`job` raised: `error` is the one line to show, `exception` the error itself (e.g. a host key error)."""

    def __init__(self, job: Job[Any], error: str, exception: BaseException) -> None:
        super().__init__()
        self.job, self.error, self.exception = job, error, exception
