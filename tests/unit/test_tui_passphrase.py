"""The TUI's passphrase dialog: an engine thread asks, the modal takes the typed passphrase (hidden), the thread
gets it; escape gives the thread a Cancelled that says to use ssh-agent."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import Input

from topdeck.core.errors import Cancelled
from topdeck.core.remote.ssh import AskOnce
from topdeck.tui.screens.passphrase import PassphraseAsker, PassphraseScreen

KEY = Path("/home/op/.ssh/id_ed25519")


def ask_in_thread(app: App[None], ask) -> tuple[threading.Thread, list[object]]:  # type: ignore[no-untyped-def]
    result: list[object] = []

    def work() -> None:
        try:
            result.append(ask(KEY))
        except Cancelled as error:
            result.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, result


async def wait_for_modal(app: App[None], pilot) -> None:  # type: ignore[no-untyped-def]
    for _ in range(100):
        if isinstance(app.screen, PassphraseScreen):
            return
        await pilot.pause(0.02)
    raise AssertionError("the passphrase dialog did not open")


def test_the_passphrase_typed_reaches_the_engine_thread_once_and_stays_hidden() -> None:
    async def scenario() -> None:
        app: App[None] = App()
        async with app.run_test() as pilot:
            ask = AskOnce(PassphraseAsker(app))
            thread, result = ask_in_thread(app, ask)
            await wait_for_modal(app, pilot)
            await pilot.press(*"open", "space", *"sesame")
            field = app.screen.query_one("#passphrase", Input)
            assert field.password and "open sesame" not in str(app.screen.query_one(Input).render())
            await pilot.press("enter")
            await asyncio.to_thread(thread.join, 5)
            assert result == ["open sesame"]
            again, second = ask_in_thread(app, ask)  # the same key file: not asked again
            await asyncio.to_thread(again.join, 5)
            assert second == ["open sesame"] and not isinstance(app.screen, PassphraseScreen)

    asyncio.run(scenario())


def test_escape_cancels_with_the_agent_hint() -> None:
    async def scenario() -> None:
        app: App[None] = App()
        async with app.run_test() as pilot:
            thread, result = ask_in_thread(app, PassphraseAsker(app))
            await wait_for_modal(app, pilot)
            await pilot.press("escape")
            await asyncio.to_thread(thread.join, 5)
            [error] = result
            assert isinstance(error, Cancelled) and f"ssh-add {KEY}" in str(error)

    asyncio.run(scenario())


def test_a_refused_passphrase_is_not_asked_again() -> None:
    asked = []

    def refuse(path: Path) -> str:
        asked.append(path)
        raise Cancelled(f"no passphrase given for {path}")

    ask = AskOnce(refuse)
    for _ in range(3):
        with pytest.raises(Cancelled, match="no passphrase given"):
            ask(KEY)
    assert asked == [KEY]
