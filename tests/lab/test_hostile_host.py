"""A hostile host (tests/hostile_host.py: a real sshd whose every login answers topdeck's host protocol with
markup, escape sequences, bidi overrides, a forged error line, huge and non-ASCII numbers, or endless lines)
beside the lab's honest hosts, against the CLI (`status`, `generations`, `plan`, `deploy --yes`, `rollback`) and
the TUI. Each asserts: no traceback, nothing drawn as markup or terminal control, one clear line for the
hostile host, and the honest hosts of the same run still deployed and reported, with a run record."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from conftest import write_lab_inventory
from deploytools import three_host_lab
from hostile import FORGED, forged_lines, raw_controls
from hostile_host import NAME, HostileHost, hostile_address

from topdeck.core.inventory import load_inventory
from topdeck.core.remote.ssh import MAX_LINE
from topdeck.core.runs import runs_dir
from topdeck.lab.nixenv import lab_env

pytestmark = pytest.mark.lab

TEXT = "text"
NUMBERS = ["huge", "superscript-digit", "arabic-digit"]
ENDLESS = "endless"
ROWS = [TEXT, *NUMBERS, ENDLESS]
PROBE_ROWS = [f"probe-{row}" for row in ("error", *NUMBERS, ENDLESS)]  # the plan's probe answers with the attack
# what the operator's terminal may get in one line: one capped host line (core/remote/ssh.py) and the words around it
LONGEST_LINE = MAX_LINE + 1024
BASE_ADDRESS = "127.0.41.11"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab of this module's own: its deploys move hosts that the session's lab keeps on generation 1."""
    with three_host_lab(tmp_path_factory.mktemp("hostilehostlab"), BASE_ADDRESS) as lab:
        yield lab


@pytest.fixture(scope="module")
def fleet(lab, tmp_path_factory):
    """The lab's hosts (host-1, host-2 follow `web`, pushed; host-3 `db`) and evil-1, following `web` too."""
    root = write_lab_inventory(lab, tmp_path_factory.mktemp("hostile") / "hosts", f"evil-{uuid.uuid4().hex[:6]}")
    with (root / "topdeck.toml").open("a") as config:
        config.write("\n[deploy]\nparallel = 4\nconfirm_timeout = 20\n")
    evil = HostileHost(tmp_path_factory.mktemp("evil"), hostile_address(BASE_ADDRESS), lab.client_public_key())
    evil.add_to(root)
    evil.start()
    pushed = topdeck(root, "push", "host-1", "--json")
    assert pushed.returncode == 0, pushed.stderr
    target = json.loads(pushed.stdout.splitlines()[-1])["toplevel"]
    try:
        yield lab, root, evil, target
    finally:
        evil.stop()


def topdeck(inventory, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=timeout, env=lab_env(), stdin=subprocess.DEVNULL)


def assert_safe(result: subprocess.CompletedProcess[str]) -> None:
    both = result.stdout + result.stderr
    assert "Traceback" not in both, result.stderr[-3000:]
    assert raw_controls(both) == [], raw_controls(both)
    assert forged_lines(both) == []
    assert max((len(line) for line in both.splitlines()), default=0) <= LONGEST_LINE


def error_lines(result: subprocess.CompletedProcess[str], host: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(f"topdeck: error: {host}")]


def test_the_cli_under_test_is_this_tree() -> None:
    found = subprocess.run([sys.executable, "-c", "import topdeck.core.shown as m; print(m.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    from pathlib import Path

    assert found.startswith(str(Path(__file__).resolve().parents[2])), found


@pytest.mark.parametrize("row", ROWS)
def test_status_beside_a_hostile_host_reports_every_host_and_draws_no_markup_or_controls(fleet, row) -> None:
    lab, root, evil, _ = fleet
    evil.set_row(row)
    result = topdeck(root, "status")
    assert_safe(result)
    assert result.returncode == 1
    assert sorted(line.split()[0] for line in result.stdout.splitlines()) == [NAME, "host-1", "host-2", "host-3"]
    if row == TEXT:
        assert "[/]" in result.stdout and "\\x1b[2K" in result.stdout and "\\u202e" in result.stdout


@pytest.mark.parametrize("row", ROWS)
def test_generations_of_a_hostile_host_are_data_or_one_line(fleet, row) -> None:
    _, root, evil, _ = fleet
    evil.set_row(row)
    result = topdeck(root, "generations", NAME)
    assert_safe(result)
    assert result.returncode == 0 or len(error_lines(result, "")) == 1, result.stderr
    if row == TEXT:
        assert len(result.stdout.splitlines()) == 2 and "[/]" in result.stdout, result.stdout


@pytest.mark.parametrize("row", PROBE_ROWS)
def test_plan_beside_a_hostile_host_plans_the_honest_one_and_gives_one_line(fleet, row) -> None:
    _, root, evil, target = fleet
    evil.set_row(row)
    result = topdeck(root, "plan", "--on", f"host-2,{NAME}")
    assert_safe(result)
    assert "host-2" in result.stdout and target.rpartition("-")[2] in result.stdout
    assert len(result.stderr.splitlines()) <= 1 and len(error_lines(result, NAME)) == len(result.stderr.splitlines())
    if row == "probe-error":
        assert result.returncode == 1 and "[link=https://evil.example]" in result.stderr


@pytest.mark.parametrize("row", ROWS)
def test_deploy_beside_a_hostile_host_deploys_the_honest_one_and_records_the_run(fleet, row) -> None:
    lab, root, evil, target = fleet
    evil.set_row(row)
    runs = runs_dir(root)
    before = set(runs.iterdir()) if runs.exists() else set()
    result = topdeck(root, "deploy", "--yes", "--on", f"host-2,{NAME}")
    assert_safe(result)
    assert result.returncode == 1
    assert lab.host("host-2").current_system() == target
    report = [line.split() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert ["host-2", "done"] in [line[:2] for line in report]
    assert len(result.stderr.splitlines()) == 1 and error_lines(result, NAME), result.stderr
    assert len(set(runs.iterdir()) - before) == 1


@pytest.mark.parametrize("row", [TEXT, "huge", ENDLESS])
def test_rollback_of_a_hostile_host_is_one_line(fleet, row) -> None:
    _, root, evil, _ = fleet
    evil.set_row(row)
    result = topdeck(root, "rollback", "--yes", NAME)
    assert_safe(result)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    if row == "huge":  # its current generation, 2^64, is no number: no generation to roll back from, nothing sent
        assert evil.commands()[-1] == "topdeck-host generations", evil.commands()[-3:]
        assert "generation" in result.stderr, result.stderr
    else:
        assert "--generation" in evil.commands()[-1], evil.commands()[-3:]


# --- the TUI -------------------------------------------------------------------------------------------


async def until(pilot, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the screen"
        await pilot.pause(0.1)


def plain_cells(table, key: str) -> list[str]:
    return [getattr(cell, "plain", str(cell)) for cell in table.get_row(key)]


@pytest.mark.asyncio
@pytest.mark.parametrize("row", ROWS)
async def test_the_tui_fleet_screen_beside_a_hostile_host_stays_up_and_draws_data(fleet, row) -> None:
    from topdeck.tui.app import TopdeckApp
    from topdeck.tui.backend import Backend

    _, root, evil, _ = fleet
    evil.set_row(row)
    app = TopdeckApp(Backend(load_inventory(root)))
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.fleet.refreshed and not app.screen.refreshing)
        await pilot.pause(0.3)
        assert app.is_running
        table = app.screen.query_one("#hosts")
        drawn = "".join("".join(plain_cells(table, key.value)) for key in table.rows)
        assert raw_controls(drawn) == [] and FORGED not in drawn.split("\n")
        assert {key.value for key in table.rows} == {NAME, "host-1", "host-2", "host-3"}
        if row == TEXT:
            assert "[/]" in "".join(plain_cells(table, NAME))


@pytest.mark.asyncio
async def test_the_tui_deploys_the_honest_host_beside_a_hostile_one(fleet) -> None:
    from topdeck.tui.app import TopdeckApp
    from topdeck.tui.backend import Backend
    from topdeck.tui.screens.deploy import DeployScreen
    from topdeck.tui.screens.plan import PlanScreen

    lab, root, evil, target = fleet
    evil.set_row(TEXT)
    app = TopdeckApp(Backend(load_inventory(root)))
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.fleet.refreshed and not app.screen.refreshing)
        app.fleet.selected.update({"host-2", NAME})
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        await pilot.press("d", "y")
        await until(pilot, lambda: isinstance(app.screen, DeployScreen))
        deploy = app.screen
        await until(pilot, lambda: not deploy.running)
        await pilot.pause(0.3)
        table = deploy.query_one("#rows")
        assert plain_cells(table, "host-2")[1] == "done" and plain_cells(table, NAME)[1] == "failed"
        drawn = "".join("".join(plain_cells(table, key.value)) for key in table.rows)
        assert "[/]" in drawn and raw_controls(drawn) == []
        assert app.is_running
    assert lab.host("host-2").current_system() == target
