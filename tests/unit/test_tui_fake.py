"""The TUI driven with Textual's Pilot against the fake engine (tests/tui_fakes.py): keys, confirmations,
background work, cancellation and errors, without the lab."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from types import SimpleNamespace

import pytest
from tui_fakes import NOW, FakeBackend, fake_inventory

from topdeck.core.errors import CacheError, ChangedHostKey, UnknownHostKey
from topdeck.tui.app import TopdeckApp
from topdeck.tui.screens.deploy import DeployScreen
from topdeck.tui.screens.fleet import FleetScreen
from topdeck.tui.screens.generations import GenerationsScreen
from topdeck.tui.screens.history import HistoryScreen
from topdeck.tui.screens.hostkey import HostKeyScreen
from topdeck.tui.screens.plan import PlanScreen
from topdeck.tui.screens.pointers import PointersScreen
from topdeck.tui.screens.push import PushScreen
from topdeck.tui.widgets.dialogs import ConfirmScreen

pytestmark = pytest.mark.asyncio


def text_of(screen, selector: str) -> str:
    content = screen.query_one(selector).content
    return getattr(content, "plain", str(content))


def cells(table, key: str) -> list[str]:
    return [getattr(cell, "plain", str(cell)) for cell in table.get_row(key)]


async def until(pilot, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the screen"
        await pilot.pause(0.05)


def app_for(backend: FakeBackend | None = None) -> TopdeckApp:
    return TopdeckApp(backend or FakeBackend(), clock=lambda: NOW)


@pytest.mark.alone
async def test_fleet_is_usable_while_the_refresh_runs_in_the_background():
    app = app_for(FakeBackend(status_delay=3.0))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, FleetScreen) and screen.refreshing
        table = screen.query_one("#hosts")
        assert table.row_count == 3 and cells(table, "web-1")[2] == "…"
        await pilot.press("down", "space")
        # The keys took effect while the refresh was still running in its worker: the UI did not wait for it.
        assert screen.refreshing and app.fleet.selected == {"web-1"}
        assert "refreshing…" in text_of(screen, "#statusline")
        await until(pilot, lambda: not screen.refreshing)
        assert cells(table, "web-1")[2] == "behind" and cells(table, "web-2")[2] == "unreachable"
        assert "web 24.05.20240715" in cells(table, "web-1")[4]
        await pilot.press("down")
        assert "connection refused" in text_of(screen, "#detail")


async def test_select_filter_and_tag():
    app = app_for()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        screen = app.screen
        await pilot.press("a")
        assert app.fleet.selected == {"db-1", "web-1", "web-2"}
        await pilot.press("a")
        assert app.fleet.selected == set()
        await pilot.press("t", *"db", "enter")
        assert app.fleet.selected == {"db-1"}
        await pilot.press("slash", *"@web", "enter")
        assert list(screen.query_one("#hosts").rows) == ["web-1", "web-2"]
        await pilot.press("escape", "s", "s")  # clear, then status filter: up-to-date, behind
        assert screen.status_filter == "behind" and list(screen.query_one("#hosts").rows) == ["web-1"]
        await pilot.press("escape")
        assert screen.query_one("#hosts").row_count == 3


async def test_nothing_is_deployed_until_confirmed_then_every_row_reaches_done():
    backend = FakeBackend(delay=0.3)
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("space", "space", "p")  # db-1, web-1
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        plan = app.screen
        assert list(plan.query_one("#hosts").rows) == ["db-1", "web-1"]
        assert cells(plan.query_one("#hosts"), "web-1")[3] == "11.0 MiB"
        assert "openssl: 3.0.13 → 3.0.14, +12.0 KiB" in text_of(plan, "#diff")
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Deploy to 2 hosts in switch mode?" in text_of(app.screen, "#question")
        await pilot.press("n")
        assert not any(call[0] == "deploy" for call in backend.calls)
        await pilot.press("m", "d")
        assert "Deploy to 2 hosts in boot mode?" in text_of(app.screen, "#question")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, DeployScreen))
        deploy = app.screen
        await until(pilot, lambda: app.deploying == {"db-1", "web-1"})
        await until(pilot, lambda: not deploy.running)
        await pilot.pause(0.2)
        table = deploy.query_one("#rows")
        assert [cells(table, h)[1] for h in ("db-1", "web-1")] == ["done", "done"]
        assert "done: 2 of 2 host(s) ok" in text_of(deploy, "#outcome")
        assert ("deploy", ("db-1", "web-1"), "boot") in backend.calls
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen))


async def start_deploy(app: TopdeckApp, pilot) -> DeployScreen:  # type: ignore[no-untyped-def]
    """From the fleet: plan the host under the cursor after the first, confirm, and return the deploy screen."""
    await until(pilot, lambda: not app.screen.refreshing)
    await pilot.press("down", "p")
    await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
    await pilot.press("d", "y")
    await until(pilot, lambda: isinstance(app.screen, DeployScreen))
    assert isinstance(app.screen, DeployScreen)
    return app.screen


async def test_cancel_shows_cancelling_until_the_engine_stops():
    stopping = threading.Event()
    backend = FakeBackend(delay=1.0, stopping=stopping)
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        deploy = await start_deploy(app, pilot)
        await pilot.pause(0.3)
        await pilot.press("c")
        assert "cancelling…" in text_of(deploy, "#outcome") and deploy.running
        await pilot.press("escape")
        assert app.screen is deploy  # cannot leave while it runs
        stopping.set()
        await until(pilot, lambda: not deploy.running)
        await pilot.pause(0.2)
        assert cells(deploy.query_one("#rows"), "web-1")[1] == "cancelled"
        assert "cancelling" not in text_of(deploy, "#outcome")


@pytest.mark.alone
async def test_quit_asks_while_a_deploy_runs():
    backend = FakeBackend(delay=0.5)
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        deploy = await start_deploy(app, pilot)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen) and "running on 1 host" in text_of(app.screen, "#question")
        await pilot.press("n")
        assert app.screen is deploy and app.is_running
        await pilot.press("q", "y")
        await pilot.pause(0.1)
        assert deploy.worker is not None and deploy.worker.is_cancelled


async def test_quit_without_a_run_quits():
    app = app_for()
    async with app.run_test() as pilot:
        await pilot.press("q")
        await pilot.pause(0.1)
        assert not app.is_running


KEY = SimpleNamespace(get_name=lambda: "ssh-ed25519")


class KeyBackend(FakeBackend):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def check_host_key(self, host):
        raise self.error


async def test_unknown_host_key_is_shown_and_accepted():
    error = UnknownHostKey("db-1: unknown host key", host="db-1", address="127.0.0.13", port=22, key=KEY,
                           fingerprint="SHA256:abc", known_hosts="/tmp/known_hosts")
    backend = KeyBackend(error)
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, HostKeyScreen))
        assert "SHA256:abc" in text_of(app.screen, "#keytext")
        await pilot.press("a")
        assert backend.accepted == ["db-1"]


async def test_changed_host_key_cannot_be_accepted():
    error = ChangedHostKey("db-1: HOST KEY CHANGED", host="db-1", address="127.0.0.13", port=22, key=KEY,
                           fingerprint="SHA256:new", expected=KEY, expected_fingerprint="SHA256:old",
                           known_hosts="/tmp/known_hosts")
    backend = KeyBackend(error)
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, HostKeyScreen))
        assert "HOST KEY CHANGED" in str(app.screen.query_one(".title").content)
        await pilot.press("a")
        assert isinstance(app.screen, HostKeyScreen) and backend.accepted == []
        await pilot.press("escape")
        assert backend.accepted == [] and isinstance(app.screen, FleetScreen)


class CertifiedBackend(FakeBackend):
    def check_host_key(self, host):
        return "certified by ssh-ed25519 CA SHA256:ca (/home/op/.ssh/known_hosts:1)"


async def test_a_host_key_certified_by_a_trusted_ca_is_said_so_and_nothing_is_pinned():
    backend = CertifiedBackend()
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("k")
        await until(pilot, lambda: any("certified" in str(n.message) for n in app._notifications))
        said = [str(n.message) for n in app._notifications if "certified" in str(n.message)][0]
        assert "certified by ssh-ed25519 CA SHA256:ca" in said and "nothing to pin" in said
        assert not isinstance(app.screen, HostKeyScreen) and backend.accepted == []


async def test_a_refused_host_certificate_is_shown_with_why_and_the_fingerprint():
    error = UnknownHostKey("db-1: host certificate not accepted", host="db-1", address="127.0.0.13", port=22,
                           key=KEY, fingerprint="SHA256:abc", known_hosts="/tmp/known_hosts",
                           certificate="it expired at 2026-01-01 00:00:00 UTC")
    app = app_for(KeyBackend(error))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, HostKeyScreen))
        text = text_of(app.screen, "#keytext")
        assert "no @cert-authority line accepts: it expired at 2026-01-01" in text and "SHA256:abc" in text


async def test_pointer_rollback_asks_then_publishes():
    backend = FakeBackend()
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, PointersScreen) and app.screen.pointers)
        await pilot.press("down")
        await until(pilot, lambda: app.screen.query_one("#history").row_count == 3)
        await pilot.press("b")
        assert isinstance(app.screen, ConfirmScreen) and "(serial 2)" in text_of(app.screen, "#question")
        await pilot.press("y")
        await until(pilot, lambda: any(c[0] == "rollback_pointer" for c in backend.calls))
        assert ("rollback_pointer", "web", "2") in backend.calls


async def test_the_pointers_screen_checks_each_sidecar_and_shows_one_that_fails_with_its_reason():
    backend = FakeBackend()
    backend.refused["web"] = "pointer web: the sidecar's signature does not verify with the trusted key"
    app = app_for(backend)
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, PointersScreen)
                    and "sidecar: serial 1, signature verified" in text_of(app.screen, "#historytitle"))
        await pilot.press("down")
        await until(pilot, lambda: "not verified" in text_of(app.screen, "#historytitle"))
        title = text_of(app.screen, "#historytitle")
        assert "not verified: pointer web: the sidecar's signature does not verify" in title
        row = app.screen.query_one("#pointers").get_row("web")
        assert str(row[-1]).startswith("not verified: pointer web: the sidecar's signature")


async def test_generations_rollback_to_the_highlighted_one():
    backend = FakeBackend(delay=0.01)
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("down", "g")
        await until(pilot, lambda: isinstance(app.screen, GenerationsScreen)
                    and app.screen.query_one("#generations").row_count == 3)
        gens = app.screen
        await pilot.press("down", "d")
        await until(pilot, lambda: "legacy-tool" in text_of(gens, "#diff"))
        await pilot.press("s")
        assert "Switch web-1 to generation 3" in text_of(app.screen, "#question")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, DeployScreen))
        await until(pilot, lambda: not app.screen.running)
        assert ("rollback", ("web-1",), 3) in backend.calls
        await pilot.press("escape")
        assert app.screen is gens
        await pilot.press("b", "y")
        await until(pilot, lambda: ("rollback", ("web-1",), None) in backend.calls)


async def test_plan_errors_are_one_line_and_a_missing_target_can_be_pushed():
    backend = FakeBackend()
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        missing = "/nix/store/" + "1" * 32 + "-nixos-system-missing-1"
        app.push_screen(PlanScreen(["db-1"], missing))
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.error)
        assert "not in the cache" in text_of(app.screen, "#statusline")
        assert "press u to push it" in text_of(app.screen, "#statusline")
        plan = app.screen
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, PushScreen) and app.screen.result is not None)
        assert "pushed 12 of 40 paths" in text_of(app.screen, "#result")
        backend.plan = lambda *a, **k: (_ for _ in ()).throw(CacheError("the cache is down"))  # type: ignore
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is plan and plan.error == "the cache is down")


async def test_the_plan_shows_which_hosts_take_the_delta_object():
    from tui_fakes import WEB_NEW, WEB_OLD, toplevel

    from topdeck.core.cache.delta import Delta

    backend = FakeBackend()
    backend.deltas = {"web-1": Delta(toplevel(WEB_OLD), toplevel(WEB_NEW), "a" * 64, 3 * 1024 * 1024)}
    app = app_for(backend)
    async with app.run_test(size=(120, 50)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        app.push_screen(PlanScreen(["web-1", "db-1"], None))
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        shown = text_of(app.screen, "#diff")
        assert "web-1: " in shown and shown.count("fetched through the delta object: one request of 3.0 MiB") == 1
        assert cells(app.screen.query_one("#hosts"), "web-1")[-1] == "1"  # one class B


async def test_build_and_push_from_the_plan_shows_the_log_and_the_push_then_plans_again():
    backend = FakeBackend()
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        app.push_screen(PlanScreen(["web-1", "db-1"], "/nix/store/" + "3" * 32 + "-nixos-system-web-3"))
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        plan = app.screen
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, PushScreen) and app.screen.result is not None)
        assert ("release", ("web-1", "db-1")) in backend.calls
        assert "Building and pushing 2 host(s): web-1, db-1" in text_of(app.screen, "#what")
        assert "flake | building '/nix/store/" in "\n".join(app.screen.query_one("#log").lines)
        assert "pointer web: serial 0" in text_of(app.screen, "#result")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is plan and plan.fleet_plan is not None)
        assert plan.target is None and backend.calls[-1] == ("plan", ("web-1", "db-1"), None)


async def test_build_and_push_from_the_plan_can_be_cancelled():
    backend = FakeBackend(delay=30)
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        app.push_screen(PlanScreen(["web-1"]))
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        plan = app.screen
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, PushScreen) and app.screen.running)
        await pilot.press("c")
        await until(pilot, lambda: app.screen.error == "flake: build cancelled")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is plan)


async def test_every_action_is_a_command_with_an_id():
    app = app_for()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.1)
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        for title in ("Plan", "Select", "All", "Tag", "Filter", "Gens", "Pointers", "Refresh", "Quit", "Help",
                      "Host key", "Status filter"):
            assert title in commands, title
        assert "fleet.plan" in commands["Plan"]
        for screen_class in (FleetScreen, PlanScreen, DeployScreen, GenerationsScreen, PointersScreen, PushScreen):
            for binding in screen_class.BINDINGS:
                assert binding.id and binding.description, (screen_class, binding)
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"


async def test_500_hosts_refresh_keeps_the_cursor():
    app = TopdeckApp(FakeBackend(fake_inventory(500)), clock=lambda: NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press(*["down"] * 40)
        before = app.screen.highlighted()
        await pilot.press("r")
        await until(pilot, lambda: not app.screen.refreshing)
        assert app.screen.highlighted() == before == "node-040"
        assert app.screen.query_one("#hosts").row_count == 500
        await asyncio.sleep(0)


class ProbingBackend(FakeBackend):
    """A plan that probes until it is cancelled, and records that it was."""

    def __init__(self) -> None:
        super().__init__()
        self.probing = False
        self.cancel_seen = False

    def plan(self, hosts, target, emit, cancel=None):  # type: ignore[no-untyped-def]
        self.probing = True
        seen = cancel is not None and cancel.wait(30)
        self.cancel_seen = bool(seen)
        self.probing = False
        raise CacheError("plan cancelled")


async def test_leaving_the_plan_screen_mid_probe_cancels_the_probe():
    backend = ProbingBackend()
    app = app_for(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        fleet = app.screen
        app.push_screen(PlanScreen(["web-1"]))
        await until(pilot, lambda: backend.probing)
        assert isinstance(app.screen, PlanScreen) and app.screen.planning
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is fleet)
        await until(pilot, lambda: backend.cancel_seen, timeout=5)
        assert not backend.probing


async def test_the_history_screen_lists_every_operators_runs_filters_by_host_and_opens_a_run():
    backend = FakeBackend()
    app = app_for(backend)
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen) and app.screen.entries is not None)
        screen = app.screen
        runs = screen.query_one("#runs")
        assert runs.row_count == 4
        assert cells(runs, "runs/20261124-100000-b0b0b0.json")[1:3] == ["bob", "deploy switch"]
        assert cells(runs, "runs/20261124-100000-b0b0b0.json")[4] == "1 done, 1 rolled-back"
        forged = cells(runs, "runs/20261124-090000-f0f0f0.json")
        assert forged[2] == "unverified" and forged[3].startswith("unverified: its signature does not verify")
        hosts = screen.query_one("#runhosts")
        assert hosts.row_count == 2 and cells(hosts, "web-2")[1:2] == ["rolled-back"]
        assert cells(hosts, "web-2")[3] == "check failed: curl exit 7"
        await pilot.press("slash")
        await pilot.press(*"db-1", "enter")
        await until(pilot, lambda: runs.row_count == 2)
        assert set(runs.rows) == {"runs/20261124-090000-f0f0f0.json", "runs/20261123-080000-a2a2a2.json"}
        assert "2 of 4 run(s) on db-1 · 1 unverified" in text_of(screen, "#statusline")
        await pilot.press("down", "enter")
        assert screen.query_one("#runhosts").has_focus and cells(hosts, "db-1")[1] == "done"
        await pilot.press("escape", "escape")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen))


class SharedHistoryBackend(FakeBackend):
    """web-1 last deployed by Bob (the shared history) and rolled back by its pull agent since."""

    def statuses(self):  # type: ignore[no-untyped-def]
        found = list(super().statuses())
        found[1] = dataclasses.replace(found[1], last_deploy="2026-11-24 09:59:00Z deploy done by bob",
                                       agent="agent: rolled back from web #4 at 2026-11-24T10:05:00Z: a health check "
                                             "failed: command 'systemctl is-active nginx' exited 3")
        return tuple(found)


async def test_the_fleet_shows_the_last_deploy_of_any_operator_and_the_agents_outcome():
    app = app_for(SharedHistoryBackend())
    async with app.run_test(size=(200, 40)) as pilot:
        await until(pilot, lambda: not app.screen.refreshing)
        table = app.screen.query_one("#hosts")
        assert cells(table, "web-1")[-1] == "2026-11-24 09:59:00Z deploy done by bob"
        assert cells(table, "db-1")[-1] == "2026-11-24 10:00 done"  # no shared record: the host's own last run
        await pilot.press("down")
        await until(pilot, lambda: "agent: rolled back from web #4" in text_of(app.screen, "#detail"))
        assert "last 2026-11-24 09:59:00Z deploy done by bob" in text_of(app.screen, "#detail")
