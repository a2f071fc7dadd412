"""What every topdeck screen shares: its jobs run in one thread worker each and report with post_message."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

from textual import work
from textual.screen import Screen

from topdeck.core.errors import TopdeckError
from topdeck.core.events import Emit, Event
from topdeck.tui.messages import EngineEvent, JobDone, JobFailed
from topdeck.tui.state import Shell
from topdeck.tui.text import shown

Job = Callable[[Emit, threading.Event], Any]


def one_line(error: BaseException) -> str:
    """An error as one line: a TopdeckError's own text, anything else with its type (never a traceback)."""
    if isinstance(error, TopdeckError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return shown(" ".join(text.split())) or type(error).__name__


class TopdeckScreen(Screen[Any]):
    """A screen that runs engine jobs: `start(name, job)` runs `job(emit, cancel)` in a thread worker; the
    screen gets `EngineEvent`s while it runs and one `JobDone` or `JobFailed` at the end. Leaving the screen
    cancels the jobs it still runs: a thread worker cannot be stopped, so each job's cancel event is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running_jobs: dict[str, threading.Event] = {}

    @property
    def topdeck(self) -> Shell:
        return cast(Shell, self.app)

    def start(self, name: str, job: Job, cancel: threading.Event | None = None) -> threading.Event:
        cancel = cancel or threading.Event()
        self.running_jobs[name] = cancel
        self._run_job(name, job, cancel)
        return cancel

    def on_unmount(self) -> None:
        for cancel in self.running_jobs.values():
            cancel.set()

    @work(thread=True, exit_on_error=False)
    def _run_job(self, name: str, job: Job, cancel: threading.Event) -> None:
        def emit(event: Event) -> None:
            self.post_message(EngineEvent(name, event))

        try:
            result = job(emit, cancel)
        except Exception as error:  # every failure reaches the screen as one line
            self.post_message(JobFailed(name, one_line(error), error))
        else:
            self.post_message(JobDone(name, result))
        finally:
            if self.running_jobs.get(name) is cancel:
                del self.running_jobs[name]

    # --- what jobs report: handlers named after the job (`done_<job>`, `failed_<job>`, `engine_event`) ---

    def on_engine_event(self, message: EngineEvent) -> None:
        message.stop()
        self.engine_event(message.job, message.event)

    def engine_event(self, job: str, event: Event) -> None:
        """One engine event of a running job; screens that show progress override this."""

    def on_job_done(self, message: JobDone) -> None:
        message.stop()
        handler = getattr(self, f"done_{message.job.split(':')[0]}", None)
        if handler is not None:
            handler(message.job, message.result)

    def on_job_failed(self, message: JobFailed) -> None:
        message.stop()
        handler = getattr(self, f"failed_{message.job.split(':')[0]}", None)
        if handler is not None:
            handler(message.job, message.error, message.exception)
        else:
            self.notify(message.error, title=message.job.split(":")[0], severity="error", timeout=10, markup=False)

    # --- host keys: check one host's key; an unknown one can be accepted, a changed one is refused ---------

    def check_host_key(self, host: str) -> None:
        backend = self.topdeck.backend
        self.notify(shown(f"connecting to {host} to read its host key…"), markup=False)
        self.start(f"hostkey:{host}", lambda emit, cancel: backend.check_host_key(host))

    def done_hostkey(self, job: str, result: object) -> None:
        how = str(result or "pinned")
        if how.startswith("certified"):
            self.notify(shown(f"{job.split(':', 1)[1]}: the host key is {how}, which known_hosts trusts; nothing to "
                              "pin, and the login works"), markup=False)
            return
        self.notify(shown(f"{job.split(':', 1)[1]}: the host key is pinned and the login works"), markup=False)

    def failed_hostkey(self, job: str, error: str, exception: BaseException) -> None:
        from topdeck.core.errors import ChangedHostKey, UnknownHostKey
        from topdeck.tui.screens.hostkey import HostKeyScreen

        if not isinstance(exception, UnknownHostKey | ChangedHostKey):
            self.notify(error, title="host key", severity="error", timeout=10, markup=False)
            return

        def answered(accept: bool | None) -> None:
            if not accept or not isinstance(exception, UnknownHostKey):
                self.notify(shown(f"{exception.host}: host key refused"), severity="warning", markup=False)
                return
            try:
                line = self.topdeck.backend.pin_host_key(exception)
            except TopdeckError as failure:
                self.notify(one_line(failure), title="host key", severity="error", timeout=10, markup=False)
                return
            self.notify(shown(f"{exception.host}: key pinned in {exception.known_hosts}: {line.split()[0]} "
                        f"{line.split()[1]}"), markup=False)
            self.host_key_accepted(exception.host)

        self.app.push_screen(HostKeyScreen(exception), answered)

    def host_key_accepted(self, host: str) -> None:
        """After the operator pinned `host`'s key; screens re-read what failed because of it."""
