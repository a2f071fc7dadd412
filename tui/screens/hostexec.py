"""`x` on the fleet: a command on the selected hosts. One row per host with how the command ended there, the output
of the highlighted host below, and at the end the hosts grouped by exit code and output. Host output is data: drawn
through SafeTable and `shown`, never as markup."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Label, Log, Static

from topdeck.core.events import Emit, Event, LogLine
from topdeck.core.hostexec import ExecResult, HostExit
from topdeck.tui.jobs import Job
from topdeck.tui.screens.base import RunScreen
from topdeck.tui.text import plain, shown
from topdeck.tui.widgets.table import SafeTable

EXEC_COLUMNS = (("host", "host", None), ("result", "result", 18), ("lines", "lines", 6), ("last", "last line", 60))
LINES_KEPT = 2000

Runner = Callable[[Emit, threading.Event], ExecResult]


@dataclass
class ExecRow:
    lines: list[str] = field(default_factory=list)
    run: HostExit | None = None

    def result(self, running: bool) -> Text:
        if self.run is None:
            return plain("running…" if running else "not run", style="cyan" if running else "dim")
        return plain("failed" if self.run.error else self.run.ending, style="green" if self.run.ok else "bold red")


class ExecScreen(RunScreen):
    busy = "the command still runs: c cancels it"
    help_title = "exec"
    DEFAULT_CSS = """
    ExecScreen #summary { height: auto; padding: 0 1; background: $boost; }
    ExecScreen #rows { height: 1fr; min-height: 4; }
    ExecScreen #logtitle { height: 1; width: 100%; background: $panel; padding: 0 1; }
    ExecScreen #log { height: 1fr; }
    ExecScreen #outcome { height: auto; max-height: 6; padding: 0 1; background: $panel; }
    """
    columns = EXEC_COLUMNS
    lines_kept = LINES_KEPT
    BINDINGS = [
        Binding("c", "cancel", "Cancel", id="exec.cancel"),
        Binding("escape", "back", "Back", id="exec.back"),
    ]

    def __init__(self, hosts: Sequence[str], argv: Sequence[str], runner: Runner | None = None) -> None:
        super().__init__(running=runner is not None)
        self.argv, self.runner = tuple(argv), runner
        self.rows: dict[str, ExecRow] = {host: ExecRow() for host in hosts}
        self.result: ExecResult | None = None
        self.error = ""
        self.shown_host = next(iter(self.rows), "")

    @property
    def command_text(self) -> str:
        import shlex

        return shlex.join(self.argv)

    def on_mount(self) -> None:
        self.fill_rows()
        self.show_summary()
        self.show_output()
        if self.runner is not None:
            self.start_run("command", tuple(self.rows),
                           Job("exec", self.runner, self.exec_done, self.exec_failed, self.apply))

    # --- the model ---------------------------------------------------------------------------------------

    def apply(self, event: Event | ExecResult) -> None:
        """Take one engine event (or the result) into the rows (also used by tests to show a fixed state)."""
        if isinstance(event, LogLine) and event.host in self.rows:
            row = self.rows[event.host]
            row.lines.append(shown(event.text))
            del row.lines[:-LINES_KEPT]
            self.update_row(event.host)
            if event.host == self.shown_host and self.is_mounted:
                self.query_one("#log", Log).write_line(shown(event.text))
        elif isinstance(event, ExecResult):
            self.result = event
            for run in event.runs:
                row = self.rows.setdefault(run.host, ExecRow())
                row.run = run
                if not row.lines:
                    row.lines = [shown(line) for line in run.output]
                self.update_row(run.host)
            if self.is_mounted:
                self.show_output()

    def cells(self, host: str, row: ExecRow) -> list[Any]:
        last = row.run.error if row.run is not None and row.run.error else row.lines[-1] if row.lines else ""
        return [plain(host, style="bold"), row.result(self.running), str(len(row.lines)), last]

    def update_row(self, host: str) -> None:
        if not self.is_mounted:
            return
        table = self.query_one("#rows", SafeTable)
        for (key, _, width), value in zip(EXEC_COLUMNS, self.cells(host, self.rows[host]), strict=True):
            table.update_cell(host, key, value, update_width=width is None)

    # --- the view ----------------------------------------------------------------------------------------

    def show_summary(self) -> None:
        text = Text()
        text.append("Command", style="bold")
        text.append(shown(f": {self.command_text}   on {len(self.rows)} host(s)"))
        self.query_one("#summary", Static).update(text)
        self.show_outcome()

    def show_outcome(self) -> None:
        text = Text()
        if self.cancelling:
            text.append("cancelling…", style="cyan")
        elif self.running:
            text.append("running… c cancels", style="cyan")
        elif self.error:
            text.append(shown(f"failed: {self.error}"), style="bold red")
        elif self.result is not None:
            ok = sum(1 for run in self.result.runs if run.ok)
            text.append(shown(f"{ok} of {len(self.result.runs)} host(s) exited 0"),
                        style="bold green" if self.result.ok else "bold red")
            for group in self.result.groups():
                first = f": {group.output[0]}" if group.output else ""
                more = f" (+{len(group.output) - 1} lines)" if len(group.output) > 1 else ""
                hosts = ", ".join(group.hosts)
                line = f"{hosts}: {group.ending}" if group.exit_code is None else \
                    f"{group.ending}: {hosts}{first}{more}"
                text.append("\n" + shown(line), style="green" if group.ok else "red")
            text.append("   escape: back", style="dim")
        self.query_one("#outcome", Static).update(text)

    def on_data_table_row_highlighted(self, event: SafeTable.RowHighlighted) -> None:
        if event.row_key.value and event.row_key.value != self.shown_host:
            self.shown_host = str(event.row_key.value)
            self.show_output()

    def show_output(self) -> None:
        row = self.rows.get(self.shown_host)
        ending = f" ({row.run.ending})" if row is not None and row.run is not None else ""
        self.query_one("#logtitle", Label).update(plain(f"output: {self.shown_host}{ending}", style="bold"))
        log = self.query_one("#log", Log)
        log.clear()
        if row and row.lines:
            log.write_lines(shown(line) for line in row.lines)

    # --- the end -----------------------------------------------------------------------------------------

    def exec_done(self, result: ExecResult) -> None:
        self.running = False
        self.apply(result)
        self.finish()

    def exec_failed(self, error: str, exception: BaseException) -> None:
        self.running = False
        self.error = error
        self.notify(error, title="exec", severity="error", timeout=10, markup=False)
        self.finish()

    def finish(self) -> None:
        self.end_run()
        for host in self.rows:
            self.update_row(host)
        self.show_outcome()
