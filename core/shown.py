"""Foreign text as the operator sees it: one rule for both front ends.

Every string that comes from a host, the bucket, Nix or the inventory passes through `shown` before a front end
draws it. A character that is not printable (`str.isprintable`: the controls C0, DEL and C1, so escape sequences;
the format characters, so bidi overrides and isolates and zero-width characters; line and paragraph separators;
surrogates, private-use and unassigned code points) is spelt out as Python writes it (`\\x1b`, `\\n`, `\\u202e`),
so a value stays on its line, cannot drive the terminal or reorder what is shown, and can still be read.
"""

from __future__ import annotations


def shown(value: object) -> str:
    """`value` as text with every non-printable character spelt out: safe to print or draw, and one line."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _spelt(c) for c in text)


def _spelt(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")
