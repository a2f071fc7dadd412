"""Foreign text in the TUI: drawn as `Text`, never parsed as markup, built from `core.shown` (no Textual here).

tests/unit/test_shown.py checks that tui/ draws no other way: no `DataTable` but tui/widgets/table.py's `SafeTable`,
no string built at run time handed to a widget, a notification or a `Text` without going through `plain` (for
what parses markup) or `shown`."""

from __future__ import annotations

from rich.text import Text

from topdeck.core.shown import shown

__all__ = ["as_text", "plain", "shown"]


def plain(value: object, style: str = "") -> Text:
    """`value` as text to draw: never markup, its non-printable characters spelt out."""
    return Text(shown(value), style=style)


def as_text(value: object) -> Text:
    """A cell or a widget's content as a safe `Text`: a `Text` keeps its lines and styles unless it holds another
    non-printable character (then it is rebuilt, spelt out, in its base style); anything else goes through `plain`."""
    if not isinstance(value, Text):
        return plain(value)
    lines = value.plain.split("\n")
    if all(line.isprintable() for line in lines):
        return value
    return Text("\n".join(shown(line) for line in lines), style=value.style)
