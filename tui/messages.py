"""The Textual messages a job's worker thread posts back to its screen (with `post_message`, thread-safe)."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from topdeck.core.events import Event


class EngineEvent(Message):
    """One event of core/events.py, emitted by the engine while a job runs."""

    def __init__(self, job: str, event: Event) -> None:
        super().__init__()
        self.job, self.event = job, event


class JobDone(Message):
    """A job returned `result`."""

    def __init__(self, job: str, result: Any) -> None:
        super().__init__()
        self.job, self.result = job, result


class JobFailed(Message):
    """A job raised: `error` is the one line to show, `exception` the error itself (e.g. a host key error)."""

    def __init__(self, job: str, error: str, exception: BaseException) -> None:
        super().__init__()
        self.job, self.error, self.exception = job, error, exception
