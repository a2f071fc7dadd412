"""The TUI's `x` (a command on the selected hosts) against the fake engine: the prompt, a row per host with its
exit code, the highlighted host's output, the grouped ending; hostile output drawn as data; a snapshot."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hostile import ALL, TEXT_ATTACKS, raw_controls
from rich.text import Text
from textual.binding import Binding
from tui_fakes import NOW, FakeBackend

from topdeck.core.hostexec import ExecResult, HostExit
from topdeck.tui.app import TopdeckApp
from topdeck.tui.screens.fleet import FleetScreen
from topdeck.tui.screens.hostexec import ExecScreen
from topdeck.tui.widgets.dialogs import PromptScreen


def cells(table: Any, key: str) -> list[str]:
    return [getattr(cell, "plain", str(cell)) for cell in table.get_row(key)]


def text_of(screen: Any, selector: str) -> str:
    content = screen.query_one(selector).content
    return getattr(content, "plain", str(content))


async def until(pilot: Any, condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the screen"
        await pilot.pause(0.05)


@pytest.mark.asyncio
async def test_x_asks_for_a_command_and_shows_each_hosts_exit_code_and_output():
    backend = FakeBackend()
    app = TopdeckApp(backend, clock=lambda: NOW, refresh=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("a", "x")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"systemctl is-active 'my unit'", "enter")
        await until(pilot, lambda: isinstance(app.screen, ExecScreen) and not app.screen.running)
        screen = app.screen
        assert backend.calls[-1] == ("exec", ("db-1", "web-1", "web-2"), ("systemctl", "is-active", "my unit"))
        table = screen.query_one("#rows")
        assert cells(table, "db-1")[:3] == ["db-1", "exit 3", "2"]
        assert cells(table, "web-1")[:3] == ["web-1", "exit 0", "1"]
        assert cells(table, "web-2")[1:] == ["failed", "0", "web-2 (127.0.0.12:22): connection refused"]
        assert list(screen.query_one("#log").lines) == ["inactive", "Unit nginx.service could not be found."]
        assert text_of(screen, "#logtitle") == "output: db-1 (exit 3)"
        await pilot.press("down")
        await until(pilot, lambda: screen.shown_host == "web-1")
        assert list(screen.query_one("#log").lines) == ["active"]
        outcome = text_of(screen, "#outcome")
        assert outcome.startswith("1 of 3 host(s) exited 0")
        assert "exit 3: db-1: inactive (+1 lines)" in outcome and "exit 0: web-1: active" in outcome
        assert "web-2: web-2 (127.0.0.12:22): connection refused" in outcome
        exec_binding = next(b for b in FleetScreen.BINDINGS if isinstance(b, Binding) and b.id == "fleet.exec")
        assert (exec_binding.key, exec_binding.show) == ("x", True)
        await pilot.press("escape")
        assert not isinstance(app.screen, ExecScreen)


@pytest.mark.asyncio
async def test_a_command_line_with_open_quotes_is_refused_in_one_line():
    backend = FakeBackend()
    app = TopdeckApp(backend, clock=lambda: NOW, refresh=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("a", "x")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"echo 'unclosed", "enter")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ExecScreen)
        assert not any(call[0] == "exec" for call in backend.calls)
        assert any("cannot read the command" in str(n.message) for n in app._notifications)


@pytest.mark.asyncio
async def test_hostile_host_output_is_drawn_as_data():
    class Hostile(FakeBackend):
        exec_outputs = {"web-1": (0, (ALL, "[/]"), ""), "db-1": (1, (ALL,), ""), "web-2": (None, (), ALL)}

    backend = Hostile()
    app = TopdeckApp(backend, clock=lambda: NOW, refresh=False)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = ExecScreen(["web-1", "db-1", "web-2"], ["cat", "x"],
                            lambda emit, cancel: backend.run_command(["web-1", "db-1", "web-2"], ["cat", "x"], emit,
                                                                     cancel))
        await app.push_screen(screen)
        await until(pilot, lambda: not screen.running)
        await pilot.pause(0.1)
        table = screen.query_one("#rows")
        texts = [cell.plain if isinstance(cell, Text) else str(cell) for key in table.rows
                 for cell in table.get_row(key)]
        joined = "\n".join([*texts, *screen.query_one("#log").lines, text_of(screen, "#outcome")])
        assert TEXT_ATTACKS["markup_close_tag"] in joined and "[/]" in joined
        assert raw_controls(joined.replace("\n", "")) == []
        assert app.is_running


def exec_screen() -> ExecScreen:
    screen = ExecScreen(["db-1", "web-1", "web-2"], ["systemctl", "is-active", "nginx"])
    runs = (HostExit("db-1", 3, ("inactive", "Unit nginx.service could not be found."), "", 0.2),
            HostExit("web-1", 0, ("active",), "", 0.1),
            HostExit("web-2", None, (), "web-2 (127.0.0.12:22): connection refused", 5.0))
    screen.result_to_show = ExecResult(("systemctl", "is-active", "nginx"), runs)  # type: ignore[attr-defined]
    return screen


@pytest.mark.parametrize("size", [(80, 24), (120, 32)])
def test_exec_snapshot(snap_compare, size):
    async def run_before(pilot) -> None:
        screen = exec_screen()
        await pilot.app.push_screen(screen)
        screen.apply(screen.result_to_show)
        screen.finish()
        await pilot.pause(0.2)

    app = TopdeckApp(FakeBackend(), clock=lambda: NOW, refresh=False)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.asyncio
async def test_the_plan_screen_lists_each_hosts_keys_and_whether_they_changed():
    import dataclasses

    from topdeck.core.keys import KeyPlan
    from topdeck.tui.screens.plan import PlanScreen

    backend = FakeBackend()
    keys = (KeyPlan("db-password", "/run/keys/db-password", "pre-activation", "changed"),
            KeyPlan("tls", "/var/lib/tls/tls", "post-activation", "unchanged"))
    fleet_plan = dataclasses.replace(backend.fleet_plan(["web-1", "web-2"]), keys={"web-1": keys, "web-2": keys})
    app = TopdeckApp(backend, clock=lambda: NOW, refresh=False)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = PlanScreen(["web-1", "web-2"], fleet_plan=fleet_plan)
        await app.push_screen(screen)
        await pilot.pause(0.2)
        diff = text_of(screen, "#diff")
        assert ("web-1, web-2: keys over SSH\n  db-password → /run/keys/db-password (pre-activation, changed)\n"
                "  tls → /var/lib/tls/tls (post-activation, unchanged)\n") in diff
