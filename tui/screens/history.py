"""The fleet's shared run history: every operator's deploys, rollbacks, reboots and pointer publishes, newest first,
from the signed records in the bucket; the highlighted run's hosts below. `/` filters by host; a record that does not
verify is shown as unverified with why, never as history."""

from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Input, Label, Static

from topdeck.core.history import HistoryEntry, RunRecord
from topdeck.tui.jobs import Job
from topdeck.tui.present import short_system, when
from topdeck.tui.screens.base import TopdeckScreen
from topdeck.tui.text import plain, shown
from topdeck.tui.widgets.table import SafeTable

RUN_COLUMNS = (("time", "when"), ("who", "who"), ("kind", "what"), ("target", "target"), ("hosts", "hosts"))
HOST_COLUMNS = (("host", "host"), ("outcome", "outcome"), ("time", "finished"), ("reason", "reason"))
OUTCOME_STYLES = {"done": "green", "failed": "bold red", "rolled-back": "yellow"}


class HistoryScreen(TopdeckScreen):
    help_title = "history"
    DEFAULT_CSS = """
    HistoryScreen #hostfilter { dock: top; display: none; height: 3; }
    HistoryScreen #hostfilter.shown { display: block; }
    HistoryScreen #runs { height: 1fr; }
    HistoryScreen #runtitle { height: 1; width: 100%; background: $panel; padding: 0 1; }
    HistoryScreen #runhosts { height: auto; max-height: 40%; }
    HistoryScreen #statusline { height: auto; background: $panel; color: $text-muted; padding: 0 1; }
    """
    BINDINGS = [
        Binding("slash", "filter", "Host filter", key_display="/", id="history.filter"),
        Binding("enter", "open", "Open run", id="history.open"),
        Binding("r", "reload", "Reload", id="history.reload"),
        Binding("escape", "back", "Back", id="history.back"),
    ]

    def __init__(self, host: str = "") -> None:
        super().__init__()
        self.entries: list[HistoryEntry] | None = None
        self.host = host
        self.run_name = ""
        self.message = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="host name (empty: every host)", id="hostfilter")
        yield SafeTable.with_columns(RUN_COLUMNS, id="runs")
        yield Label(id="runtitle")
        yield SafeTable.with_columns(HOST_COLUMNS, id="runhosts")
        yield Static(id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs", SafeTable).focus()
        self.action_reload()

    # --- loading -------------------------------------------------------------------------------------

    def action_reload(self) -> None:
        backend = self.topdeck.backend
        self.message = "reading the history from the bucket…"
        self.show_status()
        self.start(Job("runs", lambda emit, cancel: backend.run_history(), self.runs_done, self.runs_failed))

    def runs_done(self, result: list[HistoryEntry]) -> None:
        self.entries = list(result)
        self.message = ""
        self.show()

    def runs_failed(self, error: str, exception: BaseException) -> None:
        self.message = ""
        self.entries = self.entries or []
        self.notify(error, title="history", severity="error", timeout=10, markup=False)
        self.show_status(plain(error, style="red"))

    # --- showing -------------------------------------------------------------------------------------

    def shown_entries(self) -> list[HistoryEntry]:
        """The runs on the filtered host (and the publishes of its pointer); unverified records always."""
        if not self.host:
            return list(self.entries or [])
        pointer = next((h.pointer for h in self.topdeck.inventory.hosts if h.name == self.host), None)
        return [entry for entry in self.entries or [] if entry.record is None
                or any(h.host == self.host for h in entry.record.hosts)
                or (not entry.record.hosts and entry.record.pointer == pointer)]

    def show(self) -> None:
        table = self.query_one("#runs", SafeTable)
        keep = self.run_name
        table.clear()
        for entry in self.shown_entries():
            if entry.record is None or not entry.verified:
                table.add_row(when(entry.uploaded_ms / 1000, self.topdeck.clock), plain("—", style="red"),
                              plain("unverified", style="bold red"), plain(entry.problem, style="bold red"),
                              plain(entry.name, style="dim"), key=entry.name)
                continue
            record = entry.record
            table.add_row(when(record.started, self.topdeck.clock), plain(record.who), self.kind_cell(record),
                          self.target_cell(record), self.hosts_cell(record), key=entry.name)
        if keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep), animate=False)
        elif table.row_count:
            self.run_name = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        else:
            self.run_name = ""
        self.show_run()
        self.show_status()

    def kind_cell(self, record: RunRecord) -> Text:
        return plain(f"{record.kind} {record.mode}".strip(), style="bold")

    def target_cell(self, record: RunRecord) -> Text:
        cell = plain(f"{record.pointer} #{record.serial} " if record.serial else
                     f"{record.pointer} " if record.pointer else "")
        cell.append_text(plain(short_system(record.path) if record.path else ""))
        return cell

    def hosts_cell(self, record: RunRecord) -> Text:
        if not record.hosts:
            return plain("-", style="dim")
        counts = Counter(host.outcome for host in record.hosts)
        return plain(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())),
                     style="green" if record.ok else "bold red")

    def on_data_table_row_highlighted(self, event: SafeTable.RowHighlighted) -> None:
        if event.data_table.id == "runs" and event.row_key.value and event.row_key.value != self.run_name:
            self.run_name = str(event.row_key.value)
            self.show_run()

    def show_run(self) -> None:
        title = self.query_one("#runtitle", Label)
        hosts = self.query_one("#runhosts", SafeTable)
        hosts.clear()
        entry = next((e for e in self.entries or [] if e.name == self.run_name), None)
        if entry is None:
            title.update(plain("no runs recorded in the bucket yet" if self.entries is not None else "",
                               style="dim"))
            return
        if entry.record is None or not entry.verified:
            title.update(plain(f"{entry.name}: {entry.problem}", style="bold red"))
            return
        record = entry.record
        title.update(plain(f"{record.run_id} · {record.kind} by {record.who} · "
                           f"{len(record.hosts)} host(s){' · ' + record.path if record.path else ''}", style="bold"))
        for host in record.hosts:
            hosts.add_row(plain(host.host, style="bold"), plain(host.outcome, style=OUTCOME_STYLES.get(host.outcome,
                                                                                                      "")),
                          when(host.finished, self.topdeck.clock), plain(host.reason), key=host.host)

    def show_status(self, line: Text | None = None) -> None:
        if line is None:
            entries = self.entries or []
            unverified = sum(not e.verified for e in entries)
            line = plain(self.message or f"{len(self.shown_entries())} of {len(entries)} run(s)"
                         f"{f' on {self.host}' if self.host else ''}"
                         f"{f' · {unverified} unverified' if unverified else ''}"
                         " · / filters by host · enter opens the highlighted run")
        self.query_one("#statusline", Static).update(line)

    # --- actions -------------------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#hostfilter", Input)
        box.add_class("shown")
        box.value = self.host
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "hostfilter":
            return
        self.host = event.value.strip()
        event.input.remove_class("shown")
        self.query_one("#runs", SafeTable).focus()
        if self.host and self.host not in {h.name for h in self.topdeck.inventory.hosts}:
            self.notify(shown(f"no host named {self.host} in the inventory"), severity="warning", markup=False)
        self.show()

    def on_data_table_row_selected(self, event: SafeTable.RowSelected) -> None:
        if event.data_table.id == "runs":
            self.action_open()

    def action_open(self) -> None:
        hosts = self.query_one("#runhosts", SafeTable)
        if hosts.row_count:
            hosts.focus()

    def action_back(self) -> None:
        filter_box = self.query_one("#hostfilter", Input)
        if filter_box.has_class("shown"):
            filter_box.remove_class("shown")
            self.query_one("#runs", SafeTable).focus()
            return
        if self.query_one("#runhosts", SafeTable).has_focus:
            self.query_one("#runs", SafeTable).focus()
            return
        self.dismiss(None)
