"""Small modal dialogs: confirm (y/n), a one-line prompt, a choice from a list."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from topdeck.tui.text import as_text, plain

DIALOG_CSS = """
{name} {{
    align: center middle;
}}
{name} > Vertical {{
    width: 72;
    max-width: 95%;
    height: auto;
    max-height: 90%;
    border: thick $accent;
    background: $surface;
    padding: 1 2;
}}
{name} .title {{
    text-style: bold;
    margin-bottom: 1;
}}
{name} .keys {{
    color: $text-muted;
    margin-top: 1;
}}
"""


class ConfirmScreen(ModalScreen[bool]):
    """Asks a yes/no question; `y` (or enter) confirms, `n` or escape refuses."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmScreen")
    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str | Text, *, title: str = "Confirm", danger: bool = False) -> None:
        super().__init__()
        self.question, self.title_text, self.danger = question, title, danger

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(plain(self.title_text, style="bold red" if self.danger else "bold"), classes="title")
            yield Static(as_text(self.question), id="question")
            yield Static("[b]y[/b] yes    [b]n[/b] no", classes="keys")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PromptScreen(ModalScreen[str | None]):
    """Asks for one line of text; enter accepts, escape cancels."""

    DEFAULT_CSS = DIALOG_CSS.format(name="PromptScreen")
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prompt.cancel")]

    def __init__(self, question: str, *, placeholder: str = "", value: str = "",
                 suggestions: Sequence[str] = ()) -> None:
        super().__init__()
        self.question, self.placeholder, self.value, self.suggestions = question, placeholder, value, suggestions

    def compose(self) -> ComposeResult:
        from textual.suggester import SuggestFromList

        with Vertical():
            yield Label(as_text(self.question), classes="title")
            yield Input(self.value, placeholder=self.placeholder, id="answer",
                        suggester=SuggestFromList(self.suggestions) if self.suggestions else None)
            if self.suggestions:
                yield Static(plain("one of: " + ", ".join(self.suggestions)), classes="keys")
            yield Static("[b]enter[/b] ok    [b]escape[/b] cancel", classes="keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceScreen(ModalScreen[str | None]):
    """Picks one of several (id, label) choices; enter picks, escape cancels."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ChoiceScreen") + """
    ChoiceScreen OptionList { height: auto; max-height: 14; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel")]

    def __init__(self, title: str, choices: Sequence[tuple[str, str | Text]]) -> None:
        super().__init__()
        self.title_text, self.choices = title, choices

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(as_text(self.title_text), classes="title")
            yield OptionList(*(Option(as_text(label), id=key) for key, label in self.choices), id="choices")
            yield Static("[b]↑↓[/b] move    [b]enter[/b] choose    [b]escape[/b] cancel", classes="keys")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
