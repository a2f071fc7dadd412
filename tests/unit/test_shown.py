"""Foreign text is data: `core.shown` spells out what would drive a terminal, the CLI prints only through it,
and the TUI draws foreign text as `Text` (never markup). The lint (tests/shownlint.py) is clean on the tree and
fails on a copy with the wrong thing injected."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hostile import ALL, FORGED, TEXT_ATTACKS, forged_lines, raw_controls
from shownlint import cli_violations, tui_violations

from topdeck.cli import deploy as cli_deploy
from topdeck.cli.output import EventPrinter
from topdeck.core.events import DeployResult, HostOutcome, HostPhase, LogLine, Progress, WaveStarted
from topdeck.core.operations import HostStatus
from topdeck.core.remote.hostverbs import Generation
from topdeck.core.shown import shown
from topdeck.core.vocabulary import Step

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(TEXT_ATTACKS))
def test_shown_spells_out_every_attack_and_stays_one_line(name: str) -> None:
    text = shown(TEXT_ATTACKS[name])
    assert raw_controls(text) == [] and "\n" not in text
    assert shown(text) == text  # showing twice changes nothing


def test_genuine_text_is_kept() -> None:
    for text in ("ssh-keygen -R [host]:2222", "openssl: 3.0.13 → 3.0.14, +12.5 KiB", "café ²٣", "a\\x1b"):
        assert shown(text) == text
    assert shown("a\x1b[2Kb\u202ec\nd") == "a\\x1b[2Kb\\u202ec\\nd"


# --- the lint: clean here, and it bites ----------------------------------------------------------------


def test_the_cli_prints_only_through_shown() -> None:
    assert cli_violations(REPO) == []


def test_the_tui_draws_foreign_text_only_as_text() -> None:
    assert tui_violations(REPO) == []


def copy_of(folder: str, to: Path) -> Path:
    shutil.copytree(REPO / folder, to / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return to


def inject(path: Path, code: str) -> None:
    with path.open("a") as module:
        module.write("\n\n" + code + "\n")


def test_the_cli_lint_finds_a_raw_print(tmp_path: Path) -> None:
    root = copy_of("cli", tmp_path)
    inject(root / "cli" / "deploy.py", "def leak(host):\n    print(f'{host.name}: {host.reason}')")
    inject(root / "cli" / "output.py", "def leak2(stream, row):\n    stream.write(row + '\\n')")
    found = cli_violations(root)
    assert len(found) == 2, found
    assert found[0].startswith("cli/deploy.py:") and "outside cli/output.py" in found[0]
    assert found[1].startswith("cli/output.py:") and "not passed through shown" in found[1]


@pytest.mark.parametrize(("code", "why"), [
    ("from textual.widgets import DataTable", "imports DataTable"),
    ("def f(table, s):\n    table.add_row(s.host, f'{s.current}')", "add_row() of a string built"),
    ("def f(self, s):\n    self.query_one('#x').update(f'current {s.current}')", "update() of a string built"),
    ("def f(self, s):\n    self.query_one('#x').update(shown(s.current))", "parses a str as markup"),
    ("def f(self, s):\n    line = f'now {s.current}'\n    self.query_one('#x').update(line)", "update() of a str"),
    ("def f(self, e):\n    self.notify(shown(e.reason))", "notify() without markup=False"),
    ("def f(text, s):\n    text.append(s.reason, style='red')", "Text.append() of a value"),
    ("def f(s):\n    return Text(s.reason)", "Text() of a value"),
    ("def f(log, e):\n    log.write_line(e.text)", "write_line() of text not passed through shown"),
    ("def f(s):\n    return Static(s, markup=True)", "markup=True"),
    ("def f(s):\n    return plain(f'{s.host}\\n')", "literal line end"),
])
def test_the_tui_lint_finds_each_wrong_thing(tmp_path: Path, code: str, why: str) -> None:
    root = copy_of("tui", tmp_path)
    inject(root / "tui" / "screens" / "fleet.py", code)
    found = tui_violations(root)
    assert len(found) == 1 and found[0].startswith("tui/screens/fleet.py:") and why in found[0], found


# --- the CLI's live parts ------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


BOARD_SEQUENCES = ("\x1b[J", "\r\x1b[K")


def without_own_sequences(text: str) -> str:
    import re

    return re.sub(r"\x1b\[\d+F|\x1b\[J|\r\x1b\[K", "", text)


def hostile_events() -> list[object]:
    return [WaveStarted(1, 2, ("web-1", ALL)), HostPhase("web-1", "fetch", ALL), HostPhase(ALL, "connect"),
            Progress(Step.FETCH, 1, 3, 10, 30, ALL, host="web-1"), LogLine(ALL, "web-1"), LogLine(ALL, ALL)]


def test_the_live_deploy_board_draws_no_host_controls_and_no_forged_line() -> None:
    terminal = Terminal()
    board = cli_deploy.DeployBoard(stream=terminal, min_interval=0)
    for event in hostile_events():
        board(event)  # type: ignore[arg-type]
    board.close()
    drawn = without_own_sequences(terminal.getvalue())
    assert raw_controls(drawn) == [] and forged_lines(drawn) == []
    assert "[/]" in drawn


def test_the_deploy_log_off_a_terminal_draws_no_host_controls() -> None:
    log = io.StringIO()
    board = cli_deploy.DeployBoard(stream=io.StringIO(), log_stream=log)
    for event in hostile_events():
        board(event)  # type: ignore[arg-type]
    assert raw_controls(log.getvalue()) == [] and forged_lines(log.getvalue()) == []


def test_the_progress_line_and_logs_draw_no_host_controls() -> None:
    terminal = Terminal()
    printer = EventPrinter(stream=terminal, min_interval=0)
    for event in hostile_events():
        printer(event)  # type: ignore[arg-type]
    printer.close()
    drawn = without_own_sequences(terminal.getvalue())
    assert raw_controls(drawn) == [] and forged_lines(drawn) == []


# --- the CLI's reports -------------------------------------------------------------------------------------


def hostile_fleet() -> SimpleNamespace:
    status = HostStatus("web-1", "drifted", ALL, ALL, ALL, 3, ALL, ALL, ALL, ALL, ALL)
    generation = Generation(3, ALL, ALL, ALL, True)
    return SimpleNamespace(status=lambda on: (status,), generations=lambda host: (generation,))


@pytest.mark.parametrize("command", ["status", "generations"])
def test_status_and_generations_print_no_host_controls(monkeypatch, capsys, command: str) -> None:
    monkeypatch.setattr(cli_deploy, "open_fleet", lambda root: hostile_fleet())
    args = SimpleNamespace(inventory=Path("hosts"), on=[], host="web-1", json=False)
    getattr(cli_deploy, f"{command}_command")(args)
    out, err = capsys.readouterr()
    assert raw_controls(out + err) == [] and forged_lines(out + err) == []
    assert len(out.splitlines()) == 1 and "[/]" in out


def test_the_end_report_prints_one_line_per_failed_host(capsys) -> None:
    outcomes = (HostOutcome("web-1", "failed", ALL, reason=ALL), HostOutcome("web-2", "done", ALL, after=ALL))
    assert cli_deploy._report(DeployResult("r1", "switch", outcomes, stopped=ALL), as_json=False) == 1
    out, err = capsys.readouterr()
    assert raw_controls(out + err) == [] and forged_lines(out + err) == []
    assert len(err.splitlines()) == 1 and err.startswith("topdeck: error: web-1: failed: ")
    assert len(out.splitlines()) == 5


def test_json_output_spells_out_controls_too(capsys) -> None:
    outcomes = (HostOutcome("web-1", "failed", ALL, reason=ALL),)
    cli_deploy._report(DeployResult("r1", "switch", outcomes), as_json=True)
    out, _ = capsys.readouterr()
    assert raw_controls(out) == [] and len(out.splitlines()) == 1 and FORGED in out


def test_an_error_line_is_shown_through_the_same_rule(monkeypatch, capsys) -> None:
    from topdeck.cli import main as cli_main
    from topdeck.core.errors import TopdeckError

    def fail(root: Path) -> None:
        raise TopdeckError(ALL)

    monkeypatch.setattr(cli_deploy, "open_fleet", fail)
    assert cli_main.main(["status"]) == 1
    _, err = capsys.readouterr()
    assert err == f"topdeck: error: {shown(ALL)}\n"
