"""A deploy or rollback as it runs: one row per host (phase, paths and bytes, a bar), the log of the
highlighted host, the waves, the outcome. `c` cancels: "cancelling…" until the engine has stopped.

Engine events only update the model (cheap, whatever their rate); a timer redraws what changed ten times a
second, so many hosts fetching at once do not flood the table."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Label, Log, Static

from topdeck.core.events import (
    DeployResult,
    Emit,
    Event,
    HostOutcome,
    HostPhase,
    LogLine,
    Progress,
    WaveStarted,
)
from topdeck.core.vocabulary import FINAL_PHASES, Mode, Phase
from topdeck.tui.jobs import Job
from topdeck.tui.present import bar, phase_text, short_system, size_pair
from topdeck.tui.screens.base import RunScreen
from topdeck.tui.text import plain, shown
from topdeck.tui.widgets.table import SafeTable

DEPLOY_COLUMNS = (("host", "host", None), ("phase", "phase", 11), ("paths", "paths", 7), ("bytes", "bytes", 17),
                  ("bar", "progress", 15), ("detail", "detail", 60))
LOG_LINES_KEPT = 2000
REDRAW_INTERVAL = 0.1

Runner = Callable[[Emit, threading.Event], DeployResult]


@dataclass
class HostRow:
    phase: str = Phase.QUEUED
    detail: str = ""
    paths_done: int = 0
    paths_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES


class DeployScreen(RunScreen):
    help_title = "deploy"
    DEFAULT_CSS = """
    DeployScreen #summary { height: auto; padding: 0 1; background: $boost; }
    DeployScreen #rows { height: 1fr; min-height: 4; }
    DeployScreen #logtitle { height: 1; width: 100%; background: $panel; padding: 0 1; }
    DeployScreen #log { height: 1fr; max-height: 12; }
    DeployScreen #outcome { height: auto; max-height: 4; padding: 0 1; background: $panel; }
    """
    columns = DEPLOY_COLUMNS
    lines_kept = LOG_LINES_KEPT
    BINDINGS = [
        Binding("c", "cancel", "Cancel run", id="deploy.cancel"),
        Binding("escape", "back", "Back", id="deploy.back"),
    ]

    def __init__(self, title: str, hosts: Sequence[str], runner: Runner | None = None, *, mode: str = Mode.SWITCH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(running=runner is not None)
        self.title_text, self.mode, self.runner, self.clock = title, mode, runner, clock
        self.rows: dict[str, HostRow] = {host: HostRow() for host in hosts}
        self.waves: list[WaveStarted] = []
        self.result: DeployResult | None = None
        self.error = ""
        self.started = clock()
        self.dirty: set[str] = set()
        self.summary_dirty = False
        self.log_host = next(iter(self.rows), "")

    def on_mount(self) -> None:
        self.fill_rows()
        self.show_summary()
        self.show_log()
        self.show_outcome()
        self.set_interval(REDRAW_INTERVAL, self.redraw)
        if self.runner is not None:
            self.start_run(self.title_text, tuple(self.rows),
                           Job("deploy", self.runner, self.deploy_done, self.deploy_failed, self.apply))

    # --- the model: events only change it ----------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Take one engine event into the model (also used by tests to show a fixed state)."""
        if isinstance(event, HostPhase):
            row = self.row(event.host)
            row.phase, row.detail = event.phase, event.detail
            self.dirty.add(event.host)
        elif isinstance(event, Progress) and event.host:
            row = self.row(event.host)
            row.paths_done, row.paths_total = event.paths_done, event.paths_total
            row.bytes_done, row.bytes_total = event.bytes_done, event.bytes_total
            if event.current:
                row.detail = event.current
            self.dirty.add(event.host)
        elif isinstance(event, LogLine):
            host = event.host or self.log_host
            row = self.row(host)
            row.log.append(shown(event.text))
            if len(row.log) > LOG_LINES_KEPT:
                del row.log[: len(row.log) - LOG_LINES_KEPT]
            if host == self.log_host and self.is_mounted:
                self.query_one("#log", Log).write_line(shown(event.text))
        elif isinstance(event, WaveStarted):
            self.waves.append(event)
            self.summary_dirty = True
        elif isinstance(event, HostOutcome):
            row = self.row(event.host)
            row.phase = event.outcome
            row.detail = event.reason or (short_system(event.after) if event.after else "")
            if event.fetched_paths:
                row.paths_done = row.paths_total = event.fetched_paths
            if event.fetched_bytes:
                row.bytes_done = row.bytes_total = event.fetched_bytes
            self.dirty.add(event.host)
        elif isinstance(event, DeployResult):
            self.result = event
            self.summary_dirty = True

    def row(self, host: str) -> HostRow:
        if host not in self.rows:
            self.rows[host] = HostRow()
            if self.is_mounted:
                table = self.query_one("#rows", SafeTable)
                table.add_row(*self.cells(host, self.rows[host]), key=host)
        return self.rows[host]

    def cells(self, host: str, row: HostRow) -> list[Any]:
        paths = f"{row.paths_done}/{row.paths_total}" if row.paths_total else "-"
        nbytes = size_pair(row.bytes_done, row.bytes_total) if row.bytes_total else "-"
        if row.phase == Phase.DONE:
            progress = bar(1, 1, width=10)
        elif row.paths_total or row.bytes_total:
            progress = (bar(row.bytes_done, row.bytes_total, width=10) if row.bytes_total
                        else bar(row.paths_done, row.paths_total, width=10))
        else:
            progress = Text("")
        return [plain(host, style="bold"), phase_text(row.phase), paths, nbytes, progress, row.detail]

    # --- the view: redrawn on a timer ----------------------------------------------------------------------

    def redraw(self) -> None:
        if self.dirty:
            table = self.query_one("#rows", SafeTable)
            for host in sorted(self.dirty):
                for (key, _, width), value in zip(DEPLOY_COLUMNS, self.cells(host, self.rows[host]), strict=True):
                    table.update_cell(host, key, value, update_width=width is None)
            self.dirty.clear()
            self.summary_dirty = True
        if self.summary_dirty:
            self.summary_dirty = False
            self.show_summary()
            self.show_outcome()

    def show_summary(self) -> None:
        text = Text()
        text.append(shown(self.title_text.capitalize()), style="bold")
        text.append(shown(f": {len(self.rows)} host(s)"))
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.phase] = counts.get(row.phase, 0) + 1
        text.append(shown("   " + ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items()))), style="dim")
        if self.waves:
            wave = self.waves[-1]
            text.append("\n" + shown(f"wave {wave.index} of {wave.count}: {', '.join(wave.hosts)}"))
        self.query_one("#summary", Static).update(text)

    def show_outcome(self) -> None:
        text = Text()
        if self.cancelling and self.running:
            text.append("cancelling… (waiting for the engine to stop; hosts mid-switch finish or roll back)",
                        style="bold yellow")
        elif self.running:
            text.append(shown(f"running… c cancels   elapsed {self.clock() - self.started:.0f} s"), style="cyan")
        elif self.error:
            text.append(shown(f"failed: {self.error}"), style="bold red")
        elif self.result is not None:
            result = self.result
            ok = sum(1 for outcome in result.outcomes if outcome.ok)
            seconds = max(0.0, result.finished - result.started)
            style = "bold green" if result.ok else "bold red"
            text.append(shown(f"{'done' if result.ok else 'finished'}: {ok} of {len(result.outcomes)} host(s) ok"),
                        style=style)
            if seconds:
                text.append(shown(f" in {seconds:.1f} s"))
            for outcome in result.outcomes:
                if not outcome.ok:
                    reason = f": {outcome.reason}" if outcome.reason else ""
                    text.append("\n" + shown(f"{outcome.host}: {outcome.outcome}{reason}"), style="red")
            if result.stopped:
                text.append("\n" + shown(f"stopped: {result.stopped}"), style="yellow")
            text.append("   escape: back", style="dim")
        self.query_one("#outcome", Static).update(text)

    def on_data_table_row_highlighted(self, event: SafeTable.RowHighlighted) -> None:
        if event.row_key.value and event.row_key.value != self.log_host:
            self.log_host = str(event.row_key.value)
            self.show_log()

    def show_log(self) -> None:
        self.query_one("#logtitle", Label).update(plain(f"log: {self.log_host}", style="bold"))
        log = self.query_one("#log", Log)
        log.clear()
        row = self.rows.get(self.log_host)
        if row and row.log:
            log.write_lines(shown(line) for line in row.log)

    # --- the end -------------------------------------------------------------------------------------------

    def deploy_done(self, result: DeployResult) -> None:
        self.apply(result)
        self.finish()

    def deploy_failed(self, error: str, exception: BaseException) -> None:
        self.error = error
        self.notify(error, title=self.title_text, severity="error", timeout=10, markup=False)
        self.finish()

    def finish(self) -> None:
        self.end_run()
        self.summary_dirty = True
        self.redraw()

