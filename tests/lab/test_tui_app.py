"""The real TUI, driven with Textual's Pilot, against a lab of its own (real sshd hosts, real Nix, the B2
emulator): select two hosts, plan, read the sizes and the diff on screen (the same as `topdeck plan --json`),
confirm, watch both rows reach done, then roll one host back from the generations screen."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from conftest import write_lab_inventory

from topdeck.core.inventory import load_inventory
from topdeck.lab.lab import Lab
from topdeck.lab.nixenv import lab_env
from topdeck.tui.app import TopdeckApp
from topdeck.tui.backend import Backend
from topdeck.tui.present import size
from topdeck.tui.screens.deploy import DeployScreen
from topdeck.tui.screens.fleet import FleetScreen
from topdeck.tui.screens.generations import GenerationsScreen
from topdeck.tui.screens.plan import PlanScreen
from topdeck.tui.widgets.dialogs import ConfirmScreen

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

BASE_ADDRESS = "127.0.21.11"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """host-1 and host-2 follow `web`, host-3 `db`; both pointers published; the hosts run the lab's first system."""
    lab = Lab(tmp_path_factory.mktemp("tuilab"), base_address=BASE_ADDRESS, emulator_port=0)
    lab.up(count=3, log=lambda *_: None)
    try:
        root = write_lab_inventory(lab, tmp_path_factory.mktemp("tui") / "hosts", f"tui-{uuid.uuid4().hex[:6]}")
        with (root / "topdeck.toml").open("a") as config:
            config.write("\n[deploy]\nparallel = 4\nconfirm_timeout = 20\n")
        for host in ("host-1", "host-3"):
            pushed = topdeck(root, "push", host)
            assert pushed.returncode == 0, pushed.stderr
        yield lab, root
    finally:
        lab.down(log=lambda *_: None)


def topdeck(inventory, *args):
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=300, env=lab_env(), stdin=subprocess.DEVNULL)


def text_of(screen, selector: str) -> str:
    content = screen.query_one(selector).content
    return getattr(content, "plain", str(content))


def cells(table, key: str) -> list[str]:
    return [getattr(cell, "plain", str(cell)) for cell in table.get_row(key)]


async def until(pilot, condition, timeout: float = 120.0, what: str = "the screen") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.1)


async def test_select_plan_deploy_and_roll_back_on_the_lab(fleet):
    lab, root = fleet
    expected = json.loads(topdeck(root, "plan", "--json", "--on", "host-1,host-2").stdout)
    planned = {host["host"]: host for host in expected["hosts"]}
    target = planned["host-1"]["target"]
    first = {name: lab.host(name).current_system() for name in ("host-1", "host-2")}
    assert all(first[name] != target for name in first)

    app = TopdeckApp(Backend(load_inventory(root)))
    async with app.run_test(size=(120, 40)) as pilot:
        fleet_screen = app.screen
        assert isinstance(fleet_screen, FleetScreen)
        await until(pilot, lambda: app.fleet.refreshed, what="the first refresh")
        table = fleet_screen.query_one("#hosts")
        assert cells(table, "host-1")[2] in ("behind", "drifted") and cells(table, "host-3")[2] != "…"

        # Select host-1 and host-2, open the plan.
        await pilot.press("space", "space", "p")
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None,
                    what="the plan")
        plan = app.screen
        rows = plan.query_one("#hosts")
        probed = {host.host: host for host in plan.fleet_plan.plan.hosts}
        for name in ("host-1", "host-2"):
            shown = cells(rows, name)
            assert shown[2] == str(planned[name]["fetch_paths"])
            assert shown[3] == size(planned[name]["download_bytes"])
            assert shown[4] == size(planned[name]["unpacked_bytes"])
            # free space is the TUI's own probe: the disk is shared, it moves between the CLI's plan and this one
            assert shown[5] == size(probed[name].state.free_bytes)
        diff = text_of(plan, "#diff")
        for line in planned["host-1"]["diff_closures"]:
            assert line in diff
        assert "web-app: ∅ → 1.0" in diff

        # Nothing happens before the confirmation, which names the count and the mode.
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Deploy to 2 hosts in switch mode?" in text_of(app.screen, "#question")
        assert {name: lab.host(name).current_system() for name in first} == first
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, DeployScreen), what="the deploy screen")
        deploy = app.screen
        await until(pilot, lambda: not deploy.running, timeout=300, what="the deploy")
        await pilot.pause(0.3)
        outcome = text_of(deploy, "#outcome")
        assert "done: 2 of 2 host(s) ok" in outcome, outcome
        assert [cells(deploy.query_one("#rows"), name)[1] for name in ("host-1", "host-2")] == ["done", "done"]
        assert lab.host("host-1").current_system() == lab.host("host-2").current_system() == target

        # Back on the fleet; then roll host-1 back from the generations screen.
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is fleet_screen, what="the fleet")
        await until(pilot, lambda: cells(table, "host-1")[2].startswith("up to date"),
                    what="the refresh after the deploy")
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, GenerationsScreen)
                    and app.screen.query_one("#generations").row_count >= 2, what="the generations")
        generations = app.screen
        assert generations.host == "host-1"
        assert str(generations.current("host-1").number) in text_of(generations, "#statusline")
        await pilot.press("down", "d")  # the diff from the current generation to the one before, read on the host
        await until(pilot, lambda: "web-app" in text_of(generations, "#diff"), what="the generation diff")
        assert "web-app: 1.0 → ∅" in text_of(generations, "#diff")
        await pilot.press("b")
        assert "Roll host-1 back to its previous generation" in text_of(app.screen, "#question")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, DeployScreen), what="the rollback screen")
        rollback = app.screen
        await until(pilot, lambda: not rollback.running, timeout=300, what="the rollback")
        await pilot.pause(0.3)
        assert "done: 1 of 1 host(s) ok" in text_of(rollback, "#outcome"), text_of(rollback, "#outcome")
        assert lab.host("host-1").current_system() == first["host-1"]
        assert lab.host("host-2").current_system() == target
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is generations and generations.current("host-1") is not None
                    and generations.current("host-1").path == first["host-1"], what="the reloaded generations")
