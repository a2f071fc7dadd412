"""The passphrase of an SSH key file, asked in a modal when the engine needs it (once per key file per run);
typed into a password field, never shown, never logged."""

from __future__ import annotations

import threading
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from topdeck.core.errors import Cancelled
from topdeck.tui.text import plain


class PassphraseScreen(ModalScreen[str | None]):
    """Dismisses with the passphrase (enter), or None (escape)."""

    DEFAULT_CSS = """
    PassphraseScreen { align: center middle; }
    PassphraseScreen > Vertical {
        width: 72; max-width: 98%; height: auto; border: thick $warning; background: $surface; padding: 1 2;
    }
    PassphraseScreen .title { text-style: bold; margin-bottom: 1; }
    PassphraseScreen .keys { color: $text-muted; margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="passphrase.cancel")]

    def __init__(self, key_file: Path) -> None:
        super().__init__()
        self.key_file = key_file

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(plain(f"Passphrase for {self.key_file}"), classes="title")
            yield Input(password=True, id="passphrase")
            yield Static("[b]enter[/b] unlock    [b]escape[/b] cancel (or load the key into ssh-agent)",
                         classes="keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PassphraseAsker:
    """A `passphrase` callback for the engine's worker threads: shows the modal on the app's thread and waits."""

    def __init__(self, app: App[None]):
        self.app = app

    def __call__(self, key_file: Path) -> str:
        answered = threading.Event()
        answer: list[str | None] = []

        def done(value: str | None) -> None:
            answer.append(value)
            answered.set()

        self.app.call_from_thread(self.app.push_screen, PassphraseScreen(key_file), done)
        answered.wait()
        if not answer or answer[0] is None:
            raise Cancelled(f"no passphrase given for {key_file}: load it into ssh-agent (ssh-add {key_file})")
        return answer[0]
