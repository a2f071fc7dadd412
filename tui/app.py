"""The topdeck TUI: a Textual app over one inventory. Screens live in tui/screens/, one file each.

The app holds what several screens share (the hosts' statuses, the pointers, the selection, which hosts are
being deployed) and a backend (tui/backend.py) through which every screen reaches the engine, from one thread
worker per job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from topdeck.core.inventory import Inventory
from topdeck.tui.backend import EngineBackend
from topdeck.tui.present import Clock
from topdeck.tui.state import FleetState, Run

THEME = "tokyo-night"


class TopdeckApp(App[None]):
    TITLE = "topdeck"
    BINDINGS = [
        Binding("q", "quit_app", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", key_display="?", id="app.help"),
    ]

    def __init__(self, backend: EngineBackend, *, clock: Clock = time.time, refresh: bool = True,
                 theme: str = THEME) -> None:
        super().__init__()
        self.backend = backend
        self.clock = clock
        self.refresh_on_start = refresh
        self.fleet = FleetState()
        self.runs: list[Run] = []
        self._theme_name = theme
        self.sub_title = str(backend.inventory.root)

    @property
    def inventory(self) -> Inventory:
        return self.backend.inventory

    def on_mount(self) -> None:
        from topdeck.tui.screens.fleet import FleetScreen

        self.theme = self._theme_name
        self.push_screen(FleetScreen())

    # --- runs -------------------------------------------------------------------------------------

    def run_started(self, run: Run) -> None:
        self.runs.append(run)

    def run_finished(self, run: Run) -> None:
        if run in self.runs:
            self.runs.remove(run)

    @property
    def deploying(self) -> set[str]:
        return {host for run in self.runs for host in run.hosts}

    # --- actions ----------------------------------------------------------------------------------

    def action_quit_app(self) -> None:
        if not self.runs:
            self.exit()
            return
        from topdeck.tui.text import plain
        from topdeck.tui.widgets.dialogs import ConfirmScreen

        hosts = sorted(self.deploying)
        question = plain(f"A {self.runs[0].title} is running on {len(hosts)} host(s) ({', '.join(hosts[:6])}). "
                         "Cancel it and quit? Hosts already switched stay switched.")

        def answered(yes: bool | None) -> None:
            if yes:
                for run in self.runs:
                    run.cancel()
                self.exit()

        self.push_screen(ConfirmScreen(question, title="Quit during a run?", danger=True), answered)

    def action_help(self) -> None:
        from topdeck.tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen))

    # --- the command palette: every binding of the current screen is a command ----------------------

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        seen = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if not binding.id or not binding.description or binding.system or binding.action in seen:
                continue
            seen.add(binding.action)
            shown = binding.key_display or self.get_key_display(binding)
            yield SystemCommand(binding.description, f"key {shown} · {binding.id or key}",
                                partial(self.run_action, binding.action, active.node))


def run_app(inventory_dir: Path) -> int:
    """`topdeck` with no command: the TUI on an inventory (errors reading it are one line, before any screen)."""
    import dataclasses

    from topdeck.core.inventory import load_inventory
    from topdeck.core.remote.ssh import AskOnce
    from topdeck.tui.backend import Backend
    from topdeck.tui.screens.passphrase import PassphraseAsker

    inventory = load_inventory(inventory_dir)
    backend = Backend(inventory)
    app = TopdeckApp(backend)
    # Key passphrases are asked in a modal, once per key file while the app runs.
    backend.inventory = dataclasses.replace(inventory, ssh=dataclasses.replace(
        inventory.ssh, passphrase=AskOnce(PassphraseAsker(app))))
    app.run()
    return app.return_code or 0
