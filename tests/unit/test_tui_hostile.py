"""The TUI on the fake engine fed hostile text (tests/hostile.py) in every value a host or the bucket gives: each
screen starts, stays up, and draws the text as typed (`[/]` as `[/]`), its control characters spelt out."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from hostile import ALL, TEXT_ATTACKS, raw_controls
from rich.text import Text
from tui_fakes import NOW, WEB_NEW, FakeBackend, toplevel

from topdeck.core.cache.pointers import PointerVersion
from topdeck.core.events import Emit, HostOutcome, HostPhase, LogLine, ignore
from topdeck.core.operations import FleetPlan, HostStatus
from topdeck.core.plan import HostPlan, Plan, group
from topdeck.core.remote.hostverbs import Generation
from topdeck.tui.app import TopdeckApp
from topdeck.tui.screens.deploy import DeployScreen
from topdeck.tui.screens.generations import GenerationsScreen
from topdeck.tui.screens.plan import PlanScreen
from topdeck.tui.screens.pointers import PointersScreen

pytestmark = pytest.mark.asyncio

SHOWN_MARKUP = TEXT_ATTACKS["markup_close_tag"]


class HostileBackend(FakeBackend):
    """The fake engine, with every host- and bucket-given string replaced by every attack at once."""

    def statuses(self) -> tuple[HostStatus, ...]:
        return (HostStatus("db-1", "up-to-date", ALL, ALL, ALL, 3, ALL, ALL),
                HostStatus("web-1", "drifted", ALL, ALL, ALL, 4, ALL, ALL, ALL, ALL, ALL),
                HostStatus("web-2", "unreachable", "", "", ALL, 0, "", ALL))

    def pointers(self) -> dict[str, PointerVersion]:
        return {"db": PointerVersion(ALL, 1, int(NOW * 1000)), "web": PointerVersion(ALL, 3, int(NOW * 1000))}

    def history(self, name: str) -> list[PointerVersion]:
        return [PointerVersion(ALL, 3, int(NOW * 1000)), PointerVersion(ALL, 2, int(NOW * 1000))]

    def generations(self, host: str) -> tuple[Generation, ...]:
        return (Generation(2, ALL, ALL, ALL), Generation(3, ALL, ALL, ALL, True))

    def fleet_plan(self, hosts: Sequence[str]) -> FleetPlan:
        plans = tuple(HostPlan(name, "unreachable", ALL, toplevel(WEB_NEW)) for name in hosts)
        targets: dict[str, Any] = {name: toplevel(WEB_NEW) for name in hosts}
        return FleetPlan(tuple(self.inventory.host(n) for n in hosts), targets, {}, Plan(plans, group(plans)), True)

    def _run(self, hosts: tuple[str, ...], mode: str, emit: Emit, cancel: threading.Event,
             fetch: bool = True) -> Any:
        for name in hosts:
            emit(HostPhase(name, "fetch", ALL))
            emit(LogLine(ALL, name))
            emit(HostOutcome(name, "failed", ALL, ALL, ALL, reason=ALL))
        return super()._run(hosts, mode, ignore, cancel, fetch)


def plain_of(value: object) -> str:
    return value.plain if isinstance(value, Text) else str(value)


def assert_drawn_as_data(texts: Sequence[object]) -> None:
    joined = "\n".join(plain_of(t) for t in texts)
    assert SHOWN_MARKUP in joined and "[link=https://evil.example]" in joined
    assert raw_controls(joined.replace("\n", "")) == []


def table_texts(screen: Any, selector: str) -> list[object]:
    table = screen.query_one(selector)
    return [cell for key in table.rows for cell in table.get_row(key)]


def content_of(screen: Any, selector: str) -> object:
    return screen.query_one(selector).content


async def settle(pilot: Any, condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out waiting for the screen")


async def test_hostile_status_and_pointer_text_is_drawn_as_data_on_the_fleet_screen() -> None:
    app = TopdeckApp(HostileBackend(), clock=lambda: NOW)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot, lambda: app.fleet.refreshed and not app.screen.refreshing)
        await pilot.press("down")
        assert app.is_running
        assert_drawn_as_data(table_texts(app.screen, "#hosts"))
        assert_drawn_as_data([content_of(app.screen, "#detail")])


async def test_hostile_pointer_history_is_drawn_as_data() -> None:
    app = TopdeckApp(HostileBackend(), clock=lambda: NOW)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("o")
        await settle(pilot, lambda: isinstance(app.screen, PointersScreen)
                     and app.screen.query_one("#history").row_count)
        assert_drawn_as_data(table_texts(app.screen, "#pointers") + table_texts(app.screen, "#history"))


async def test_hostile_generations_are_drawn_as_data() -> None:
    app = TopdeckApp(HostileBackend(), clock=lambda: NOW)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("g")
        await settle(pilot, lambda: isinstance(app.screen, GenerationsScreen)
                     and app.screen.query_one("#generations").row_count)
        assert_drawn_as_data(table_texts(app.screen, "#generations"))


async def test_a_hostile_failure_reason_is_drawn_as_data_in_the_plan() -> None:
    app = TopdeckApp(HostileBackend(), clock=lambda: NOW)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("p")
        await settle(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        await pilot.pause(0.1)
        assert_drawn_as_data(table_texts(app.screen, "#hosts") + [content_of(app.screen, "#diff")])


async def test_hostile_deploy_phases_logs_and_reasons_are_drawn_as_data() -> None:
    backend = HostileBackend()
    app = TopdeckApp(backend, clock=lambda: NOW)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = DeployScreen("deploy (switch)", ["web-1"], lambda emit, cancel: backend.rollback(["web-1"], None,
                                                                                                   emit, cancel))
        await app.push_screen(screen)
        await settle(pilot, lambda: not screen.running)
        await pilot.pause(0.2)
        log = screen.query_one("#log")
        assert_drawn_as_data([*table_texts(screen, "#rows"), *log.lines])
        assert app.is_running
