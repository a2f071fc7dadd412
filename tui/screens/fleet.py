"""The fleet: every host with its pointer, current and desired system, generation and status; a detail pane
follows the cursor. Filter, select, refresh in the background, and go on to plan, generations or pointers."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Input, Static

from topdeck.core.cache.pointers import PointerVersion, is_expired
from topdeck.core.errors import TopdeckError
from topdeck.core.events import Emit, Event, Progress
from topdeck.core.inventory import Host
from topdeck.core.operations import HostStatus
from topdeck.core.remote.sshroute import endpoint_label
from topdeck.core.vocabulary import HostState
from topdeck.tui.backend import EngineBackend
from topdeck.tui.jobs import Job, Work
from topdeck.tui.present import STATUS_STYLES, short_path, short_system, status_text, store_name, until, when
from topdeck.tui.screens.base import TopdeckScreen
from topdeck.tui.text import plain, shown
from topdeck.tui.widgets.table import SafeTable

STATUSES = tuple(HostState)
COLUMNS = (("mark", " "), ("host", "host"), ("status", "status"), ("current", "current"), ("desired", "desired"),
           ("gen", "gen"), ("pointer", "pointer"), ("tags", "tags"), ("last", "last deploy"))
MARK = Text("●", style="bold yellow")


@dataclass(frozen=True)
class Refreshed:
    """What a background refresh read: the hosts' statuses and the pointers (each may have failed)."""

    statuses: tuple[HostStatus, ...]
    pointers: dict[str, PointerVersion]
    errors: tuple[str, ...]
    seconds: float


def refresh_job(backend: EngineBackend) -> Work[Refreshed]:
    def job(emit: Emit, cancel: threading.Event) -> Refreshed:
        started = time.monotonic()
        errors = []
        try:
            found = backend.pointers()
        except TopdeckError as error:
            found, errors = {}, [f"pointers: {error}"]
        try:
            statuses = tuple(backend.status(emit, cancel))
        except TopdeckError as error:
            statuses, errors = (), [*errors, f"status: {error}"]
        return Refreshed(statuses, found, tuple(errors), time.monotonic() - started)

    return job


class FleetScreen(TopdeckScreen):
    help_title = "fleet"
    DEFAULT_CSS = """
    FleetScreen #filter { dock: top; display: none; height: 3; }
    FleetScreen #filter.shown { display: block; }
    FleetScreen #hosts { height: 1fr; }
    FleetScreen #detail { height: 7; border-top: solid $primary; padding: 0 1; }
    FleetScreen #statusline { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """
    BINDINGS = [
        Binding("space", "toggle_select", "Select", id="fleet.select"),
        Binding("a", "select_all", "All", id="fleet.select-all"),
        Binding("t", "select_tag", "Tag", id="fleet.select-tag"),
        Binding("slash", "filter", "Filter", key_display="/", id="fleet.filter"),
        Binding("s", "status_filter", "Status filter", show=False, id="fleet.status-filter"),
        Binding("p", "plan", "Plan", id="fleet.plan"),
        Binding("g", "generations", "Gens", id="fleet.generations"),
        Binding("x", "exec", "Exec", id="fleet.exec"),
        Binding("o", "pointers", "Pointers", id="fleet.pointers"),
        Binding("h", "history", "History", show=False, id="fleet.history"),
        Binding("r", "refresh", "Refresh", id="fleet.refresh"),
        Binding("k", "host_key", "Host key", show=False, id="fleet.host-key"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="fleet.clear-filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""
        self.status_filter = ""
        self.refreshing = False
        self.progress = ""
        self.last_refresh_seconds = 0.0
        self.populate_seconds = 0.0
        self.drawn: dict[str, list[Any]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter: text, @tag or status:behind (enter keeps it, escape clears)", id="filter")
        yield SafeTable.with_columns(COLUMNS, id="hosts", zebra_stripes=True)
        yield Static(id="detail")
        yield Static(id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        self.populate()
        self.query_one("#hosts", SafeTable).focus()
        if self.topdeck.refresh_on_start:
            self.action_refresh()

    def on_screen_resume(self) -> None:
        self.populate()

    # --- data ---------------------------------------------------------------------------------------

    @property
    def hosts(self) -> tuple[Host, ...]:
        return tuple(self.topdeck.inventory.hosts)

    def _status_cell(self, host: Host, status: HostStatus | None) -> Text:
        cell = status_text(self.status_of(host))
        if status is not None and status.needs_reboot:
            cell.append(", reboot", style="yellow")
        return cell

    def status_of(self, host: Host) -> str:
        if host.name in self.topdeck.deploying:
            return HostState.DEPLOYING
        status = self.topdeck.fleet.statuses.get(host.name)
        return status.status if status is not None else ""

    def shown_hosts(self) -> list[Host]:
        words = self.filter_text.split()
        found = []
        for host in self.hosts:
            status = self.status_of(host)
            if self.status_filter and status != self.status_filter:
                continue
            if all(self._matches(host, status, word) for word in words):
                found.append(host)
        return found

    @staticmethod
    def _matches(host: Host, status: str, word: str) -> bool:
        word = word.lower()
        if word.startswith("@"):
            return word[1:] in (tag.lower() for tag in host.tags)
        if word.startswith("status:"):
            return status.startswith(word[7:])
        return (word in host.name.lower() or word in host.pointer.lower()
                or any(word in tag.lower() for tag in host.tags))

    def row(self, host: Host) -> list[Any]:
        fleet = self.topdeck.fleet
        status = fleet.statuses.get(host.name)
        pointer = fleet.pointers.get(host.pointer)
        desired = (status.desired if status is not None else "") or (pointer.path if pointer and pointer.verified
                                                                     else "")
        generation = status.generation if status is not None else 0
        return [
            MARK if host.name in fleet.selected else " ",
            plain(host.name, style="bold"),
            self._status_cell(host, status),
            short_system(status.current) if status is not None else "…",
            short_system(desired) if desired else "-",
            str(generation) if generation else "-",
            host.pointer + (f" #{pointer.serial}" if pointer and pointer.verified else
                            " (unverified)" if pointer else ""),
            ",".join(host.tags),
            ((status.last_deploy or status.last_run) if status is not None else "") or "-",
        ]

    def populate(self) -> None:
        """Fill the table from the inventory and the last refresh; the cursor stays on its host."""
        started = time.perf_counter()
        table = self.query_one("#hosts", SafeTable)
        visible = self.shown_hosts()
        rows = {host.name: self.row(host) for host in visible}
        if [key.value for key in table.rows] == list(rows):
            # The same hosts in the same order (a refresh): change only the cells that changed.
            for name, cells in rows.items():
                before = self.drawn.get(name, [])
                for index, ((column, _), value) in enumerate(zip(COLUMNS, cells, strict=True)):
                    if index >= len(before) or before[index] != value:
                        table.update_cell(name, column, value, update_width=True)
        else:
            current = self.highlighted()
            table.clear()
            for name, cells in rows.items():
                table.add_row(*cells, key=name)
            if current is not None and current in table.rows:
                table.move_cursor(row=table.get_row_index(current), animate=False)
        self.drawn = rows
        self.populate_seconds = time.perf_counter() - started
        self.show_detail()
        self.show_status()

    def highlighted(self) -> str | None:
        table = self.query_one("#hosts", SafeTable)
        if not table.row_count:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:  # the cursor is past the rows while the table refills
            return None

    def targets(self) -> list[str]:
        """The hosts an action applies to: the selection, or else the highlighted host."""
        selected = [host.name for host in self.hosts if host.name in self.topdeck.fleet.selected]
        if selected:
            return selected
        current = self.highlighted()
        return [current] if current else []

    # --- panes --------------------------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: SafeTable.RowHighlighted) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        name = self.highlighted()
        pane = self.query_one("#detail", Static)
        if name is None:
            pane.update(Text("no host matches the filter", style="dim"))
            return
        host = self.topdeck.inventory.host(name)
        status = self.topdeck.fleet.statuses.get(name)
        pointer = self.topdeck.fleet.pointers.get(host.pointer)
        text = Text()
        text.append(shown(host.name), style="bold")
        text.append(shown(f"  {endpoint_label(host, self.topdeck.inventory.ssh)}"), style="dim")
        if host.tags:
            text.append(shown("  tags " + ", ".join(host.tags)))
        text.append("  ")
        text.append_text(status_text(self.status_of(host)))
        if status is not None and status.needs_reboot:
            text.append(shown(f"  needs a reboot: its {status.needs_reboot} differs from the booted system's"),
                        style="bold yellow")
        text.append("\n")
        if pointer and not pointer.verified:
            text.append(shown(f"pointer  {host.pointer}: {pointer.problem}") + "\n", style="bold red")
        elif pointer:
            text.append(shown(f"pointer  {host.pointer} → {store_name(pointer.path)} (serial {pointer.serial}, "
                              f"signed {when(pointer.time or pointer.uploaded_ms / 1000, self.topdeck.clock)}"))
            if pointer.expires and is_expired(pointer.expires, self.topdeck.clock()):
                text.append(shown(f", expired {when(pointer.expires, self.topdeck.clock)}: hosts refuse it"),
                            style="bold red")
            elif pointer.expires:
                text.append(shown(f", expires {until(pointer.expires, self.topdeck.clock)}"))
            text.append(")\n")
        else:
            text.append(shown(f"pointer  {host.pointer} (not read yet)") + "\n", style="dim")
        if status is None:
            text.append(shown(f"current  {short_path('')}") + "\n" + shown(f"desired  {short_path('')}") + "\n")
            pane.update(text)
            return
        current, booted, desired = status.current, status.booted, status.desired
        text.append(shown(f"current  {short_path(current)}"))
        text.append("  (booted)\n" if booted and booted == current else "\n")
        if booted and booted != current:
            text.append(shown(f"booted   {short_path(booted)}") + "\n")
        if status.specialisation:
            text.append(shown(f"runs     specialisation {status.specialisation} of {short_path(status.system)}") + "\n")
        text.append(shown(f"desired  {short_path(desired)}") + "\n")
        text.append(shown(f"gen {status.generation or '-'}  last {status.last_deploy or status.last_run or '-'}"))
        if status.agent:
            text.append(shown(f"  {status.agent}"), style="red" if "agent: switched" not in status.agent else "")
        if status.reason:
            text.append(shown(f"  {status.reason}"), style=STATUS_STYLES.get(status.status, "red"))
        pane.update(text)

    def show_status(self) -> None:
        fleet = self.topdeck.fleet
        parts = [f"{len(self.hosts)} hosts", f"{len(fleet.selected)} selected"]
        count = self.query_one("#hosts", SafeTable).row_count
        if self.filter_text or self.status_filter:
            what = " ".join(filter(None, [self.filter_text, f"status:{self.status_filter}" if self.status_filter
                                          else ""]))
            parts.append(shown(f"{count} shown (filter {what})"))
        if self.refreshing:
            parts.append(f"refreshing… {self.progress}".strip())
        elif fleet.refreshed:
            stamp = datetime.fromtimestamp(fleet.refreshed, tz=UTC).strftime("%H:%M:%S UTC")
            parts.append(shown(f"refreshed {stamp} in {self.last_refresh_seconds:.1f} s"))
        line = plain(" · ".join(parts))
        for error in fleet.errors:
            line.append(shown(f" · {error}"), style="red")
        self.query_one("#statusline", Static).update(line)

    # --- refresh --------------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        if self.refreshing:
            return
        self.refreshing, self.progress = True, ""
        self.show_status()
        self.start(Job("refresh", refresh_job(self.topdeck.backend), self.refresh_done, self.refresh_failed,
                       self.refresh_progress))

    def refresh_progress(self, event: Event) -> None:
        if isinstance(event, Progress) and event.paths_total:
            self.progress = f"{event.paths_done}/{event.paths_total}"
            self.show_status()

    def refresh_done(self, result: Refreshed) -> None:
        fleet = self.topdeck.fleet
        fleet.statuses = {status.host: status for status in result.statuses}
        fleet.pointers = dict(result.pointers)
        fleet.errors = result.errors
        fleet.refreshed = self.topdeck.clock()
        self.refreshing, self.last_refresh_seconds = False, result.seconds
        self.populate()

    def refresh_failed(self, error: str, exception: BaseException) -> None:
        self.refreshing = False
        self.topdeck.fleet.errors = (error,)
        self.show_status()

    # --- selection and filters -------------------------------------------------------------------------

    def action_toggle_select(self) -> None:
        name = self.highlighted()
        if name is None:
            return
        selected = self.topdeck.fleet.selected
        selected.symmetric_difference_update({name})
        table = self.query_one("#hosts", SafeTable)
        table.update_cell(name, "mark", MARK if name in selected else " ")
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1, animate=False)
        self.show_status()

    def action_select_all(self) -> None:
        """Select every shown host; if all of them are selected already, select none."""
        names = {host.name for host in self.shown_hosts()}
        selected = self.topdeck.fleet.selected
        if names <= selected:
            selected.difference_update(names)
        else:
            selected.update(names)
        self.populate()

    def action_select_tag(self) -> None:
        from topdeck.tui.widgets.dialogs import PromptScreen

        tags = sorted({tag for host in self.hosts for tag in host.tags})

        def chosen(tag: str | None) -> None:
            if not tag:
                return
            tag = tag.removeprefix("@")
            matching = {host.name for host in self.hosts if tag in host.tags}
            if not matching:
                self.notify(shown(f"no host has the tag {tag}"), severity="warning", markup=False)
                return
            self.topdeck.fleet.selected.update(matching)
            self.notify(shown(f"selected {len(matching)} host(s) tagged {tag}"), markup=False)
            self.populate()

        self.app.push_screen(PromptScreen("Select the hosts with the tag:", placeholder="tag", suggestions=tags),
                             chosen)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.populate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        box = self.query_one("#filter", Input)
        if not box.value.strip():
            box.remove_class("shown")
        self.query_one("#hosts", SafeTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self.filter_text, self.status_filter = "", ""
        self.query_one("#hosts", SafeTable).focus()
        self.populate()

    def action_status_filter(self) -> None:
        """Cycle the status filter: none, then each status."""
        order = ("", *STATUSES)
        self.status_filter = order[(order.index(self.status_filter) + 1) % len(order)]
        self.populate()

    # --- other screens ---------------------------------------------------------------------------------

    def action_plan(self) -> None:
        from topdeck.tui.screens.plan import PlanScreen

        hosts = self.targets()
        if not hosts:
            self.notify("no host to plan: select hosts first", severity="warning", markup=False)
            return
        self.app.push_screen(PlanScreen(hosts), lambda _: self.after_run())

    def action_generations(self) -> None:
        from topdeck.tui.screens.generations import GenerationsScreen

        hosts = self.targets()
        if hosts:
            self.app.push_screen(GenerationsScreen(hosts), lambda _: self.after_run())

    def action_exec(self) -> None:
        """Ask for a command (one line, split once as a shell would) and run it on the selected hosts."""
        from topdeck.core.hostexec import split_command_line
        from topdeck.tui.screens.hostexec import ExecScreen
        from topdeck.tui.widgets.dialogs import PromptScreen

        hosts = self.targets()
        if not hosts:
            self.notify("no host to run a command on: select hosts first", severity="warning", markup=False)
            return
        backend = self.topdeck.backend

        def answered(line: str | None) -> None:
            if not line:
                return
            try:
                argv = split_command_line(line)
            except TopdeckError as error:
                self.notify(shown(str(error)), title="exec", severity="error", timeout=10, markup=False)
                return
            runner = lambda emit, cancel: backend.run_command(hosts, argv, emit, cancel)  # noqa: E731
            self.app.push_screen(ExecScreen(hosts, argv, runner))

        self.app.push_screen(PromptScreen(shown(f"Run a command on {len(hosts)} host(s): {', '.join(hosts[:6])}"),
                                          placeholder="systemctl status nginx   (words split once, as a shell does)"),
                             answered)

    def action_pointers(self) -> None:
        from topdeck.tui.screens.pointers import PointersScreen

        self.app.push_screen(PointersScreen(), lambda _: self.action_refresh())

    def action_history(self) -> None:
        from topdeck.tui.screens.history import HistoryScreen

        self.app.push_screen(HistoryScreen())

    def action_host_key(self) -> None:
        name = self.highlighted()
        if name:
            self.check_host_key(name)

    def after_run(self) -> None:
        self.populate()
        self.action_refresh()
