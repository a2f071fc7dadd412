"""Snapshot tests of every screen, fed fixed fake data (tests/tui_fakes.py), at 80x24 and larger.

Update the pictures after a deliberate change with `pytest tests/unit/test_tui_snapshots.py --snapshot-update` and
look at them (tests/unit/__snapshots__/test_tui_snapshots/*.svg) before keeping them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tui_fakes import NOW, WEB_NEW, FakeBackend, fake_inventory, toplevel

from topdeck.core.errors import ChangedHostKey, UnknownHostKey
from topdeck.core.events import HostOutcome, HostPhase, LogLine, Progress, WaveStarted
from topdeck.core.vocabulary import Step
from topdeck.tui.app import TopdeckApp
from topdeck.tui.screens.deploy import DeployScreen
from topdeck.tui.screens.generations import GenerationsScreen
from topdeck.tui.screens.hostkey import HostKeyScreen
from topdeck.tui.screens.plan import PlanScreen
from topdeck.tui.screens.pointers import PointersScreen
from topdeck.tui.screens.push import PushScreen

MiB = 1024**2


def fake_app(hosts: int = 3, selected: tuple[str, ...] = ()) -> TopdeckApp:
    """An app whose fleet state is already read (no background refresh), on a fixed clock."""
    backend = FakeBackend(fake_inventory(hosts))
    app = TopdeckApp(backend, clock=lambda: NOW, refresh=False)
    app.fleet.statuses = {status.host: status for status in backend.statuses()}
    app.fleet.pointers = backend.pointers()
    app.fleet.selected = set(selected)
    app.fleet.refreshed = NOW - 30
    return app


async def settle(pilot) -> None:
    """Until the screen is still: a key's message may start a job (the pointers screen reads a sidecar when the cursor
    moves), and a job's result may start another; on a busy machine each lands later than any fixed pause."""
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.2)


def opening(screen_factory, *more):
    async def run_before(pilot) -> None:
        await pilot.app.push_screen(screen_factory())
        for step in more:
            result = step(pilot)
            if result is not None:
                await result
        await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 32)])
def test_fleet(snap_compare, size):
    assert snap_compare(fake_app(selected=("web-1", "web-2")), terminal_size=size, run_before=settle)


def test_fleet_filtered_by_tag(snap_compare):
    async def run_before(pilot) -> None:
        await pilot.press("slash", *"@web", "enter")
        await settle(pilot)

    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=run_before)


def test_fleet_500_hosts(snap_compare):
    assert snap_compare(fake_app(500), terminal_size=(100, 30), run_before=settle)


def plan_screen() -> PlanScreen:
    return PlanScreen(["web-1", "web-2"], fleet_plan=FakeBackend().fleet_plan(["web-1", "web-2"]))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_plan(snap_compare, size):
    assert snap_compare(fake_app(), terminal_size=size, run_before=opening(plan_screen))


def test_plan_confirmation_names_count_and_mode(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24),
                        run_before=opening(plan_screen, lambda pilot: pilot.press("m", "m", "d")))


def test_push(snap_compare):
    def screen() -> PushScreen:
        return PushScreen(str(toplevel(WEB_NEW)), start=False)

    def progress(pilot) -> None:
        pilot.app.screen.apply(Progress(Step.UPLOAD, 17, 40, 37 * MiB, 90 * MiB,
                                        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-openssl-3.0.14", 6.5 * MiB))

    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=opening(screen, progress))


def deploy_events(screen: DeployScreen) -> None:
    screen.running = True
    for event in (
        WaveStarted(1, 2, ("db-1", "web-1")),
        HostPhase("db-1", "fetch"), Progress(Step.FETCH, 9, 24, 13 * MiB, 31 * MiB, host="db-1"),
        LogLine("copying path '/nix/store/…-openssl-3.0.14' from 'http://127.0.0.1:17890/file/topdeck-lab/cache'",
                "db-1"),
        LogLine("copying path '/nix/store/…-nginx-1.26.1' from 'http://127.0.0.1:17890/file/topdeck-lab/cache'",
                "db-1"),
        HostPhase("web-1", "activate", "switch-to-configuration switch"),
        Progress(Step.FETCH, 24, 24, 31 * MiB, 31 * MiB, host="web-1"),
        HostPhase("web-2", "queued"),
        HostOutcome("web-3", "failed", str(toplevel(WEB_NEW)), reason="activation failed (exit 1); rolled back"),
    ):
        screen.apply(event)
    screen.redraw()


@pytest.mark.parametrize("size", [(80, 24), (120, 32)])
def test_deploy(snap_compare, size):
    def screen() -> DeployScreen:
        return DeployScreen("deploy (switch)", ["db-1", "web-1", "web-2", "web-3"], clock=lambda: 0.0)

    assert snap_compare(fake_app(), terminal_size=size,
                        run_before=opening(screen, lambda pilot: deploy_events(pilot.app.screen)))


def test_deploy_cancelling(snap_compare):
    def screen() -> DeployScreen:
        return DeployScreen("deploy (switch)", ["web-1", "web-2"], clock=lambda: 0.0)

    def cancel(pilot):
        deploy_events(pilot.app.screen)
        return pilot.press("c")

    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=opening(screen, cancel))


def generations_screen() -> GenerationsScreen:
    backend = FakeBackend()
    return GenerationsScreen(["web-1", "db-1"], generations={"web-1": backend.generations("web-1"),
                                                             "db-1": backend.generations("db-1")})


def test_generations(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=opening(generations_screen))


def test_generations_diff(snap_compare):
    async def diff(pilot) -> None:
        await pilot.press("down", "d")
        await settle(pilot)

    assert snap_compare(fake_app(), terminal_size=(100, 30), run_before=opening(generations_screen, diff))


def test_generations_rollback_confirmation(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24),
                        run_before=opening(generations_screen, lambda pilot: pilot.press("down", "s")))


def pointers_screen() -> PointersScreen:
    backend = FakeBackend()
    return PointersScreen(backend.pointers(), {"web": backend.history("web"), "db": backend.history("db")})


def test_pointers(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24),
                        run_before=opening(pointers_screen, lambda pilot: pilot.press("down")))


def test_pointer_rollback_confirmation(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24),
                        run_before=opening(pointers_screen, lambda pilot: pilot.press("down", "b")))


KEY = SimpleNamespace(get_name=lambda: "ssh-ed25519")


def test_unknown_host_key(snap_compare):
    error = UnknownHostKey("unknown", host="web-2", address="127.0.0.12", port=22, key=KEY,
                           fingerprint="SHA256:q0cJ2GdJZ0oA9iHhtfbqAPo2ohq8BLxbh1jQWzYB0wE",
                           known_hosts="/var/lib/topdeck-lab/known_hosts")
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=opening(lambda: HostKeyScreen(error)))


def test_changed_host_key(snap_compare):
    error = ChangedHostKey("changed", host="db-1", address="127.0.0.13", port=22, key=KEY,
                           fingerprint="SHA256:q0cJ2GdJZ0oA9iHhtfbqAPo2ohq8BLxbh1jQWzYB0wE", expected=KEY,
                           expected_fingerprint="SHA256:7bV9c1Yx0m1n2o3p4q5r6s7t8u9v0w1x2y3z4A5B6C7",
                           known_hosts="/var/lib/topdeck-lab/known_hosts")
    assert snap_compare(fake_app(), terminal_size=(80, 24), run_before=opening(lambda: HostKeyScreen(error)))


def test_help(snap_compare):
    assert snap_compare(fake_app(), terminal_size=(80, 24), press=["question_mark"])

