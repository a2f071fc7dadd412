"""`?`: the keys of the screen it was opened from, and what topdeck does."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static

from topdeck.tui.text import plain

INTRO = (
    "topdeck pushes a NixOS system's closure to a B2 binary cache, points a pointer at it, and has hosts pull "
    "and activate it over SSH. Nothing changes on a host before you confirm a plan. "
    "ctrl+p opens the command palette, where every key below is a command too."
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 76; max-width: 98%; height: auto; max-height: 95%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    HelpScreen .title { text-style: bold; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close")]

    def __init__(self, under: Screen[Any]) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_column(style="dim")
        seen = set()
        for _key, active in self.under.active_bindings.items():
            binding = active.binding
            if not binding.id or not binding.description or binding.action in seen or binding.system:
                continue
            seen.add(binding.action)
            table.add_row(binding.key_display or self.app.get_key_display(binding), binding.description,
                          binding.id or "")
        table.add_row("^p", "Command palette (every key here is a command)", "")
        with VerticalScroll():
            yield Label(plain(f"Keys: {getattr(self.under, 'help_title', type(self.under).__name__)}"), classes="title")
            yield Static(table)
            yield Static(plain(INTRO, style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)
