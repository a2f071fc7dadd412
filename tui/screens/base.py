"""What every topdeck screen shares: each job runs in a thread worker of its own and reports to the callbacks it
was started with (typed, so a handler that does not fit its job's result is a type error, not a silent skip)."""

from __future__ import annotations

from functools import partial
from typing import Any, cast

from textual import work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Log, Static
from textual.worker import Worker, get_current_worker

from topdeck.core.errors import TopdeckError
from topdeck.core.events import Event
from topdeck.tui.jobs import EngineEvent, Job, JobDone, JobFailed
from topdeck.tui.state import Run, Shell
from topdeck.tui.text import shown
from topdeck.tui.widgets.table import SafeTable


def one_line(error: BaseException) -> str:
    """An error as one line: a TopdeckError's own text, anything else with its type (never a traceback)."""
    if isinstance(error, TopdeckError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return shown(" ".join(text.split())) or type(error).__name__


class TopdeckScreen(Screen[Any]):
    """A screen that runs engine jobs with `start(Job(...))`. Leaving the screen cancels the jobs it still runs
    (Textual cancels a screen's workers when it is removed, which sets each job's cancel event)."""

    @property
    def topdeck(self) -> Shell:
        return cast(Shell, self.app)

    def start(self, job: Job[Any]) -> Worker[None]:
        """Run `job`; `.cancel()` on the returned worker asks the engine to stop (the job still reports)."""
        return self._run_job(job)

    @work(thread=True, exit_on_error=False)
    def _run_job(self, job: Job[Any]) -> None:
        cancel = get_current_worker().cancelled_event

        def emit(event: Event) -> None:
            self.post_message(EngineEvent(job, event))

        try:
            result = job.work(emit, cancel)
        except Exception as error:  # every failure reaches the screen as one line
            self.post_message(JobFailed(job, one_line(error), error))
        else:
            self.post_message(JobDone(job, result))

    def on_engine_event(self, message: EngineEvent) -> None:
        message.stop()
        if message.job.progress is not None:
            message.job.progress(message.event)

    def on_job_done(self, message: JobDone) -> None:
        message.stop()
        message.job.done(message.result)

    def on_job_failed(self, message: JobFailed) -> None:
        message.stop()
        if message.job.failed is not None:
            message.job.failed(message.error, message.exception)
        else:
            self.notify(message.error, title=message.job.name, severity="error", timeout=10, markup=False)

    # --- host keys: check one host's key; an unknown one can be accepted, a changed one is refused ---------

    def check_host_key(self, host: str) -> None:
        backend = self.topdeck.backend
        self.notify(shown(f"connecting to {host} to read its host key…"), markup=False)
        self.start(Job(f"hostkey:{host}", lambda emit, cancel: backend.check_host_key(host),
                       partial(self.host_key_checked, host), self.host_key_failed))

    def host_key_checked(self, host: str, how: str) -> None:
        if how.startswith("certified"):
            self.notify(shown(f"{host}: the host key is {how}, which known_hosts trusts; nothing to pin, and the "
                              "login works"), markup=False)
            return
        self.notify(shown(f"{host}: the host key is pinned and the login works"), markup=False)

    def host_key_failed(self, error: str, exception: BaseException) -> None:
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


class RunScreen(TopdeckScreen):
    """A screen whose one job is a run on hosts (a deploy, a command): while it runs, the app's `q` asks first,
    `c` cancels it (the job still reports how far it got) and escape refuses to leave."""

    busy = "a run is in progress: c cancels it"
    # The rows' table: (key, label, width); `cells(host, row)` gives a row's values in this order.
    columns: tuple[tuple[str, str, int | None], ...] = ()
    lines_kept = 2000  # per host, in the log below the table
    rows: dict[str, Any]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        yield SafeTable.with_columns(self.columns, id="rows")
        yield Label(id="logtitle")
        yield Log(id="log", max_lines=self.lines_kept)
        yield Static(id="outcome")
        yield Footer()

    def fill_rows(self) -> None:
        table = self.query_one("#rows", SafeTable)
        for host, row in self.rows.items():
            table.add_row(*self.cells(host, row), key=host)
        table.focus()

    def cells(self, host: str, row: Any) -> list[Any]:
        raise NotImplementedError

    def __init__(self, running: bool) -> None:
        super().__init__()
        self.running = running
        self.worker: Worker[None] | None = None
        self.run: Run | None = None
        self.result: object = None
        self.cancel_asked = False

    def start_run(self, title: str, hosts: tuple[str, ...], job: Job[Any]) -> None:
        self.worker = self.start(job)
        self.run = Run(title, hosts, self.worker.cancel)
        self.topdeck.run_started(self.run)

    def end_run(self) -> None:
        self.running = False
        if self.run is not None:
            self.topdeck.run_finished(self.run)

    @property
    def cancelling(self) -> bool:
        return self.running and self.cancel_asked

    def action_cancel(self) -> None:
        if not self.running:
            self.notify("nothing is running", severity="warning", markup=False)
            return
        if self.worker is not None:
            self.worker.cancel()
        self.cancel_asked = True
        self.show_outcome()

    def show_outcome(self) -> None:
        """Draw how the run stands (running, cancelling, its end)."""

    def action_back(self) -> None:
        if self.running:
            self.notify(self.busy, severity="warning", markup=False)
            return
        self.dismiss(self.result)
