"""Every pointer with its target, time and serial; the highlighted one's history; publish a store path under
a pointer, or roll a pointer back to an earlier target (each after confirming)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Label, Static

from topdeck.core.cache.pointers import Pointer, PointerVersion, is_expired
from topdeck.tui.jobs import Job
from topdeck.tui.present import short_system, until, when
from topdeck.tui.screens.base import TopdeckScreen
from topdeck.tui.text import plain, shown
from topdeck.tui.widgets.table import SafeTable

POINTER_COLUMNS = (("name", "pointer"), ("serial", "serial"), ("time", "published"), ("hosts", "hosts"),
                   ("target", "target"))
HISTORY_COLUMNS = (("mark", " "), ("serial", "serial"), ("time", "published"), ("system", "system"),
                   ("path", "path"))


class PointersScreen(TopdeckScreen):
    help_title = "pointers"
    DEFAULT_CSS = """
    PointersScreen #pointers { height: auto; max-height: 40%; }
    PointersScreen #historytitle { height: 1; width: 100%; background: $panel; padding: 0 1; }
    PointersScreen #history { height: 1fr; }
    PointersScreen #statusline { height: auto; background: $panel; color: $text-muted; padding: 0 1; }
    """
    BINDINGS = [
        Binding("b", "rollback", "Roll back…", id="pointers.rollback"),
        Binding("n", "publish", "Publish…", id="pointers.publish"),
        Binding("r", "reload", "Reload", id="pointers.reload"),
        Binding("escape", "back", "Back", id="pointers.back"),
    ]

    def __init__(self, pointers: dict[str, PointerVersion] | None = None,
                 histories: dict[str, list[PointerVersion]] | None = None) -> None:
        super().__init__()
        self.pointers: dict[str, PointerVersion] | None = dict(pointers) if pointers is not None else None
        self.histories: dict[str, list[PointerVersion]] = dict(histories or {})
        self.sidecars: dict[str, Text] = {}  # each pointer's signed sidecar (what hosts read) checked, or why not
        self.pointer_name = ""
        self.message = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield SafeTable.with_columns(POINTER_COLUMNS, id="pointers")
        yield Label(id="historytitle")
        yield SafeTable.with_columns(HISTORY_COLUMNS, id="history")
        yield Static(id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#pointers", SafeTable).focus()
        if self.pointers is None:
            self.action_reload()
        else:
            self.show()

    # --- loading -------------------------------------------------------------------------------------

    def action_reload(self) -> None:
        backend = self.topdeck.backend
        self.message = "reading the cache…"
        self.show_status()
        self.histories.clear()
        self.sidecars.clear()
        self.start(Job("pointers", lambda emit, cancel: backend.pointers(), self.pointers_done, self.pointers_failed))

    def pointers_done(self, result: dict[str, PointerVersion]) -> None:
        self.pointers = dict(result)
        self.topdeck.fleet.pointers = dict(result)
        self.message = ""
        self.show()

    def pointers_failed(self, error: str, exception: BaseException) -> None:
        self.message = ""
        self.pointers = self.pointers or {}
        self.notify(error, title="pointers", severity="error", timeout=10, markup=False)
        self.show_status(plain(error, style="red"))

    def load_history(self, name: str) -> None:
        backend = self.topdeck.backend
        self.start(Job(f"history:{name}", lambda emit, cancel: backend.history(name), partial(self.history_done, name)))

    def load_sidecar(self, name: str) -> None:
        backend = self.topdeck.backend
        self.sidecars[name] = plain("reading its sidecar…", style="dim")
        self.start(Job(f"sidecar:{name}", lambda emit, cancel: backend.read_pointer(name),
                       partial(self.sidecar_done, name), partial(self.sidecar_failed, name)))

    def sidecar_done(self, name: str, result: Pointer) -> None:
        self.sidecars[name] = plain(f"sidecar: serial {result.serial}, signature verified", style="green")
        self.show_sidecar(name)

    def sidecar_failed(self, name: str, error: str, exception: BaseException) -> None:
        self.sidecars[name] = plain(f"not verified: {error}", style="bold red")
        table = self.query_one("#pointers", SafeTable)
        listed = (self.pointers or {}).get(name)
        if name in table.rows and listed is not None and listed.verified:  # else the row says why already
            table.update_cell(name, "target", plain(f"not verified: {error}", style="bold red"))
        self.show_sidecar(name)

    def history_done(self, name: str, result: list[PointerVersion]) -> None:
        self.histories[name] = list(result)
        if name == self.pointer_name:
            self.show_history()

    # --- showing -------------------------------------------------------------------------------------

    def show(self) -> None:
        table = self.query_one("#pointers", SafeTable)
        keep = self.pointer_name
        table.clear()
        followers: dict[str, int] = {}
        for host in self.topdeck.inventory.hosts:
            followers[host.pointer] = followers.get(host.pointer, 0) + 1
        for name, version in (self.pointers or {}).items():
            table.add_row(plain(name, style="bold"), self.serial_cell(version),
                          when(version.uploaded_ms / 1000, self.topdeck.clock), shown(str(followers.get(name, 0))),
                          self.target_cell(version), key=name)
        if keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep), animate=False)
        elif table.row_count:
            self.pointer_name = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        self.show_history()
        self.show_status()

    def on_data_table_row_highlighted(self, event: SafeTable.RowHighlighted) -> None:
        if event.data_table.id == "pointers" and event.row_key.value and event.row_key.value != self.pointer_name:
            self.pointer_name = str(event.row_key.value)
            self.show_history()

    def show_history(self) -> None:
        title = self.query_one("#historytitle", Label)
        table = self.query_one("#history", SafeTable)
        table.clear()
        if not self.pointer_name:
            title.update(Text("no pointers in the cache yet: push a toplevel with a pointer", style="dim"))
            return
        self.show_sidecar(self.pointer_name)
        versions = self.histories.get(self.pointer_name)
        if versions is None:
            self.load_history(self.pointer_name)
            return
        for index, version in enumerate(versions):
            table.add_row(Text("▶", style="bold green") if index == 0 else " ", self.serial_cell(version),
                          when(version.uploaded_ms / 1000, self.topdeck.clock), self.target_cell(version),
                          plain(version.path), key=f"{index}")

    def show_sidecar(self, name: str) -> None:
        """The history's title: the pointer's name and its sidecar (what hosts read), checked with its .txt."""
        if name != self.pointer_name:
            return
        if name not in self.sidecars:
            self.load_sidecar(name)
        title = plain(f"history of {name} (newest first) · ", style="bold")
        title.append_text(self.sidecars[name])
        self.query_one("#historytitle", Label).update(title)

    def serial_cell(self, version: PointerVersion) -> Text:
        return plain(version.serial) if version.verified else plain("—", style="red")

    def target_cell(self, version: PointerVersion) -> Text:
        """The target with its age (signed, expiry); an unverified version says why, never a path."""
        if not version.verified:
            return plain(version.problem, style="bold red")
        cell = plain(short_system(version.path))
        if version.expires and is_expired(version.expires, self.topdeck.clock()):
            cell.append(shown(f" · expired {when(version.expires, self.topdeck.clock)}: hosts refuse it"),
                        style="bold red")
        elif version.time:
            cell.append(shown(f" · signed {when(version.time, self.topdeck.clock)}"), style="dim")
            if version.expires:
                cell.append(shown(f", expires {until(version.expires, self.topdeck.clock)}"), style="dim")
        return cell

    def show_status(self, line: Text | None = None) -> None:
        if line is None:
            count = len(self.pointers or {})
            line = plain(self.message or f"{count} pointer(s) · b rolls the highlighted pointer back (in the history "
                                        "table: to the highlighted version) · n publishes a path")
        self.query_one("#statusline", Static).update(line)

    # --- actions -------------------------------------------------------------------------------------

    def rollback_choice(self) -> tuple[str | None, PointerVersion | None]:
        """(to, version): the history row highlighted (if the history table has focus), else the previous verified
        one."""
        versions = self.histories.get(self.pointer_name) or []
        history = self.query_one("#history", SafeTable)
        if history.has_focus and history.row_count:
            key = history.coordinate_to_cell_key(history.cursor_coordinate).row_key.value
            version = versions[int(key)] if key is not None and key.isdigit() and int(key) < len(versions) else None
            if version is not None:
                return str(version.serial), version
        trusted = [v for v in versions if v.verified]
        current = trusted[0].path if trusted else ""
        earlier = next((v for v in trusted[1:] if v.path != current), None)
        return None, earlier

    def action_rollback(self) -> None:
        from topdeck.tui.widgets.dialogs import ConfirmScreen

        if not self.pointer_name:
            return
        to, version = self.rollback_choice()
        versions = [v for v in self.histories.get(self.pointer_name) or [] if v.verified]
        if version is not None and not version.verified:
            self.notify(shown(f"{self.pointer_name}: cannot roll back to this version: {version.problem}"),
                        severity="error", markup=False)
            return
        if version is None or (versions and version.path == versions[0].path):
            self.notify(shown(f"{self.pointer_name}: no earlier, different verified target to roll back to"),
                        severity="warning", markup=False)
            return
        backend, name = self.topdeck.backend, self.pointer_name
        question = plain(f"Point {name} back at {short_system(version.path)} (serial {version.serial})?",
                         style="bold")
        question.append("\n" + shown(version.path) + "\n")
        question.append(shown(f"This publishes it as a new version; hosts that follow {name} get it on their next "
                              "deploy."))

        def answered(yes: bool | None) -> None:
            if yes:
                self.start(Job(f"publish:{name}",
                               lambda emit, cancel: backend.rollback_pointer(name, to or str(version.serial)),
                               self.published))

        self.app.push_screen(ConfirmScreen(question, title="Roll back a pointer", danger=True), answered)

    def action_publish(self) -> None:
        from topdeck.tui.widgets.dialogs import ConfirmScreen, PromptScreen

        name = self.pointer_name or ""

        def confirmed(path: str, pointer: str) -> Callable[[bool | None], None]:
            def answered(yes: bool | None) -> None:
                if yes:
                    backend = self.topdeck.backend
                    self.start(Job(f"publish:{pointer}", lambda emit, cancel: backend.publish_pointer(pointer, path),
                                   self.published))
            return answered

        def got_path(pointer: str, path: str | None) -> None:
            if path:
                self.app.push_screen(ConfirmScreen(plain(f"Point {pointer} at {path}?", style="bold"),
                                                   title="Publish a pointer"), confirmed(path, pointer))

        def got_name(pointer: str | None) -> None:
            if pointer:
                self.app.push_screen(PromptScreen(shown(f"Store path to publish under {pointer}:"),
                                                  placeholder="/nix/store/…"), lambda p: got_path(pointer, p))

        self.app.push_screen(PromptScreen("Pointer name:", value=name, suggestions=sorted(self.pointers or {})),
                             got_name)

    def published(self, result: Pointer) -> None:
        self.notify(shown(f"pointer {result.name} now names {short_system(result.path)} (serial {result.serial})"),
                    markup=False)
        self.action_reload()

    def action_back(self) -> None:
        self.dismiss(None)
