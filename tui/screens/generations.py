"""Each chosen host's system generations, with dates and versions. Roll a host (or all of them) back to the
previous generation, or switch one to the highlighted generation (after confirming); see the diff between a
generation and the current one on demand."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from topdeck.core.events import DeployResult
from topdeck.core.nix.diff import ClosureDiff
from topdeck.core.remote.hostverbs import Generation
from topdeck.tui.jobs import Job
from topdeck.tui.present import diff_text, short_system, store_name
from topdeck.tui.screens.base import TopdeckScreen
from topdeck.tui.text import plain, shown
from topdeck.tui.widgets.table import SafeTable

GEN_COLUMNS = (("mark", " "), ("number", "gen"), ("date", "date"), ("version", "version"), ("system", "system"))


class GenerationsScreen(TopdeckScreen):
    help_title = "generations"
    DEFAULT_CSS = """
    GenerationsScreen #body { height: 1fr; }
    GenerationsScreen #hostlist { width: 18; height: 1fr; border-right: solid $primary; }
    GenerationsScreen #generations { height: 1fr; min-height: 5; }
    GenerationsScreen #diffbox { height: auto; max-height: 45%; border-top: solid $primary; }
    GenerationsScreen #diffbox.empty { display: none; }
    GenerationsScreen #diff { padding: 0 1; }
    GenerationsScreen #statusline { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """
    BINDINGS = [
        Binding("b", "rollback_previous", "Roll back", id="generations.rollback"),
        Binding("s", "switch_to", "Switch to this", id="generations.switch-to"),
        Binding("B", "rollback_all", "Roll back all", key_display="B", id="generations.rollback-all"),
        Binding("d", "diff", "Diff", id="generations.diff"),
        Binding("r", "reload", "Reload", id="generations.reload"),
        Binding("escape", "back", "Back", id="generations.back"),
    ]

    def __init__(self, hosts: Sequence[str], generations: dict[str, tuple[Generation, ...]] | None = None) -> None:
        super().__init__()
        self.hosts = list(hosts)
        self.generations: dict[str, tuple[Generation, ...]] = dict(generations or {})
        self.host = self.hosts[0] if self.hosts else ""
        self.reading: set[str] = set()
        self.errors: dict[str, str] = {}
        self.rolled_back = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            yield OptionList(*(Option(plain(name), id=name) for name in self.hosts), id="hostlist")
            with Vertical():
                yield SafeTable.with_columns(GEN_COLUMNS, id="generations")
                with VerticalScroll(id="diffbox", classes="empty"):
                    yield Static(id="diff")
        yield Static(id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#hostlist", OptionList).highlighted = 0 if self.hosts else None
        self.query_one("#generations", SafeTable).focus()
        self.show()
        for host in self.hosts:
            if host not in self.generations:
                self.load(host)

    # --- loading -------------------------------------------------------------------------------------

    def load(self, host: str) -> None:
        backend = self.topdeck.backend
        self.reading.add(host)
        self.errors.pop(host, None)
        self.start(Job(f"generations:{host}", lambda emit, cancel: backend.generations(host),
                       partial(self.generations_done, host), partial(self.generations_failed, host)))
        self.show_status()

    def generations_done(self, host: str, result: tuple[Generation, ...]) -> None:
        self.reading.discard(host)
        self.generations[host] = tuple(result)
        if host == self.host:
            self.show()
        else:
            self.show_status()

    def generations_failed(self, host: str, error: str, exception: BaseException) -> None:
        self.reading.discard(host)
        self.errors[host] = error
        self.show()

    def action_reload(self) -> None:
        for host in self.hosts:
            self.load(host)

    # --- showing -------------------------------------------------------------------------------------

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id and event.option.id != self.host:
            self.host = event.option.id
            self.hide_diff()
            self.show()

    def show(self) -> None:
        table = self.query_one("#generations", SafeTable)
        table.clear()
        for generation in sorted(self.generations.get(self.host, ()), key=lambda g: -g.number):
            current = generation.current
            table.add_row(
                Text("▶", style="bold green") if current else " ",
                plain(str(generation.number), style="bold" if current else ""),
                generation.date,
                generation.version or "-",
                short_system(generation.path),
                key=str(generation.number),
            )
        self.show_status()

    def show_status(self) -> None:
        parts = [f"{self.host}: "]
        gens = self.generations.get(self.host)
        if self.host in self.errors:
            line = plain(f"{self.host}: {self.errors[self.host]}", style="red")
            self.query_one("#statusline", Static).update(line)
            return
        if self.host in self.reading:
            parts.append("reading generations over SSH…")
        elif gens is not None:
            current = self.current(self.host)
            parts.append(shown(f"{len(gens)} generations, current {current.number if current else '-'}"))
        loading = len(self.reading)
        if loading:
            parts.append(shown(f" · loading {loading} host(s)"))
        self.query_one("#statusline", Static).update(plain("".join(parts)))

    def current(self, host: str) -> Generation | None:
        return next((g for g in self.generations.get(host, ()) if g.current), None)

    def highlighted(self) -> Generation | None:
        table = self.query_one("#generations", SafeTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((g for g in self.generations.get(self.host, ()) if str(g.number) == key), None)

    def previous(self, host: str) -> Generation | None:
        current = self.current(host)
        older = [g for g in self.generations.get(host, ()) if current is None or g.number < current.number]
        return max(older, key=lambda g: g.number) if older else None

    def hide_diff(self) -> None:
        self.query_one("#diffbox").add_class("empty")

    # --- diff ----------------------------------------------------------------------------------------

    def action_diff(self) -> None:
        generation, current = self.highlighted(), self.current(self.host)
        if generation is None or current is None:
            return
        if generation.number == current.number:
            self.notify("this is the current generation; highlight another to compare", severity="warning",
                        markup=False)
            return
        backend, host, path = self.topdeck.backend, self.host, generation.path
        self.query_one("#diff", Static).update(plain(f"comparing generation {generation.number} with the current "
                                                    f"one ({current.number})…", style="dim"))
        self.query_one("#diffbox").remove_class("empty")
        self.start(Job(f"diff:{host}:{generation.number}", lambda emit, cancel: backend.generation_diff(host, path),
                       partial(self.diff_done, host, generation.number), self.diff_failed))

    def diff_done(self, host: str, number: int, result: ClosureDiff) -> None:
        if host != self.host:
            return
        current = self.current(host)
        text = Text()
        before = current.number if current else "?"
        text.append(shown(f"{host}: current generation {before} → generation {number}") + "\n",
                    style="bold")
        text.append_text(diff_text(result))
        self.query_one("#diff", Static).update(text)
        self.query_one("#diffbox").remove_class("empty")

    def diff_failed(self, error: str, exception: BaseException) -> None:
        self.query_one("#diff", Static).update(plain(error, style="red"))

    # --- rollbacks -----------------------------------------------------------------------------------

    def action_rollback_previous(self) -> None:
        previous = self.previous(self.host)
        if previous is None:
            self.notify(shown(f"{self.host}: no older generation to roll back to"), severity="warning", markup=False)
            return
        self.confirm_rollback([self.host], None, f"Roll {self.host} back to its previous generation "
                              f"({previous.number}, {short_system(previous.path)})?")

    def action_switch_to(self) -> None:
        generation = self.highlighted()
        if generation is None:
            return
        if generation.current:
            self.notify(shown(f"{self.host} runs generation {generation.number} already"), severity="warning",
                        markup=False)
            return
        self.confirm_rollback([self.host], generation.number,
                              f"Switch {self.host} to generation {generation.number} "
                              f"({store_name(generation.path)})?")

    def on_data_table_row_selected(self, event: SafeTable.RowSelected) -> None:
        self.action_switch_to()

    def action_rollback_all(self) -> None:
        if len(self.hosts) == 1:
            self.action_rollback_previous()
            return
        self.confirm_rollback(self.hosts, None, f"Roll all {len(self.hosts)} hosts ({', '.join(self.hosts)}) "
                              "back to their previous generations?")

    def confirm_rollback(self, hosts: list[str], to: int | None, question: str) -> None:
        from topdeck.tui.widgets.dialogs import ConfirmScreen

        text = plain(question, style="bold")
        text.append("\nEach host activates that generation now (switch); its /run/current-system changes.")

        def answered(yes: bool | None) -> None:
            if yes:
                self.start_rollback(hosts, to)

        self.app.push_screen(ConfirmScreen(text, title="Roll back", danger=True), answered)

    def start_rollback(self, hosts: list[str], to: int | None) -> None:
        from topdeck.tui.screens.deploy import DeployScreen

        backend = self.topdeck.backend
        title = f"rollback to generation {to}" if to is not None else "rollback"

        def done(result: DeployResult | None) -> None:
            self.rolled_back = True
            for host in hosts:
                self.load(host)

        self.app.push_screen(DeployScreen(title, hosts, lambda emit, cancel: backend.rollback(hosts, to, emit,
                                                                                              cancel)), done)

    def action_back(self) -> None:
        self.dismiss(self.rolled_back)
