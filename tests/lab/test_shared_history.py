"""The shared, signed run history (issue 26, item 3) end to end on hosts of every kind (host-1 native Nix 2.8,
host-2 trixie 2.26, host-3 sid 2.34) and the B2 emulator: two operators with state folders of their own each see the
other's deploy in `topdeck history` and in the fleet's last-deploy column (`status`), a pointer rollback and a
publish are recorded, a record written by the hostile bucket writer (B2 key, no signing key) is shown as unverified
and never as history, and a second reading downloads nothing it read before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from deploytools import MIXED_KINDS, deploy_inventory, release, three_host_lab

from topdeck.core import history
from topdeck.core.cache.access import open_cache
from topdeck.core.events import DeployResult, HostOutcome
from topdeck.core.inventory import load_inventory
from topdeck.core.nix.signing import generate_keypair
from topdeck.core.vocabulary import Mode, Outcome
from topdeck.lab import factory
from topdeck.lab.nixenv import lab_env
from topdeck.tui.app import TopdeckApp
from topdeck.tui.backend import Backend
from topdeck.tui.screens.fleet import FleetScreen
from topdeck.tui.screens.history import HistoryScreen

pytestmark = pytest.mark.lab
HOSTS = tuple(MIXED_KINDS)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    with three_host_lab(tmp_path_factory.mktemp("historylab"), "127.0.47.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):  # type: ignore[no-untyped-def]
    return deploy_inventory(lab, tmp_path_factory.mktemp("history") / "hosts", 8)


@pytest.fixture(scope="module")
def operators(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Alice and Bob: a name and a state folder each (their own local copies and run records)."""
    return {name: {"TOPDECK_OPERATOR": name, "XDG_STATE_HOME": str(tmp_path_factory.mktemp(f"state-{name}"))}
            for name in ("alice", "bob")}


def run(inventory, who: dict[str, str], *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    result = subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                            capture_output=True, text=True, timeout=300, env=lab_env(who),
                            stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def records(inventory, who, *args: str) -> list[dict]:  # type: ignore[no-untyped-def]
    result = run(inventory, who, "history", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def last_deploy(inventory, who) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s["host"]: s["last_deploy"] for s in json.loads(run(inventory, who, "status", "--json").stdout)}


def test_two_operators_each_see_the_others_deploy_in_history_and_the_last_deploy_column(lab, inventory, operators):
    alice, bob = operators["alice"], operators["bob"]
    web = release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "2.0"))
    deployed = run(inventory, alice, "deploy", "--yes", "--on", "host-1")
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr
    deployed = run(inventory, bob, "deploy", "--yes", "--on", "host-2,host-3")
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr
    for reader in (alice, bob):
        runs = [r["record"] for r in records(inventory, reader) if r["verified"]]
        deploys = {r["who"]: r for r in runs if r["kind"] == "deploy"}
        assert set(deploys) == {"alice", "bob"}
        assert [(h["host"], h["outcome"]) for h in deploys["alice"]["hosts"]] == [("host-1", "done")]
        assert sorted((h["host"], h["outcome"]) for h in deploys["bob"]["hosts"]) == [("host-2", "done"),
                                                                                     ("host-3", "done")]
        assert deploys["alice"]["mode"] == "switch" and deploys["alice"]["path"] == web
        assert deploys["alice"]["pointer"] == "web" and deploys["alice"]["serial"] == 2
        publishes = [r for r in runs if r["kind"] == "publish" and r["pointer"] == "web"]
        assert publishes and publishes[0]["path"] == web and publishes[0]["serial"] == 2
        column = last_deploy(inventory, reader)
        assert column["host-1"].endswith("deploy done by alice"), column
        assert column["host-2"].endswith("deploy done by bob") and column["host-3"].endswith("deploy done by bob")
    text = run(inventory, alice, "history", "--on", "host-3").stdout
    assert "bob  deploy  switch" in text and "host-3  done" in text and "host-1" not in text


def test_a_pointer_rollback_and_a_reboot_are_recorded(lab, inventory, operators):
    bob = operators["bob"]
    rolled = run(inventory, bob, "pointers", "web", "--rollback", "--yes")
    assert rolled.returncode == 0, rolled.stderr
    newest = records(inventory, operators["alice"])[0]["record"]
    assert (newest["kind"], newest["who"], newest["pointer"], newest["serial"]) == ("pointer-rollback", "bob", "web",
                                                                                    3)


def test_a_forged_record_is_shown_as_unverified_never_as_history(lab, inventory, operators):
    alice = operators["alice"]
    bucket = open_cache(load_inventory(inventory).cache)  # the hostile writer: the B2 key, not the signing key
    forger, _ = generate_keypair("topdeck-lab-1")
    claim = DeployResult("29991231-235959-f0f0f0", Mode.SWITCH, (HostOutcome("host-1", Outcome.DONE, "x",
                                                                             finished=32503680000.0),),
                         started=32503680000.0)
    forged = history.from_result(claim, "deploy", "mallory")
    bucket.put_bytes(history.record_name(forged), history.render(forged, forger), content_type="application/json")
    bucket.put_bytes("runs/29991231-235959-0a0a0a.json", b'{"record": {"who": "mallory"}}',
                     content_type="application/json")
    entries = records(inventory, alice)
    unverified = [e for e in entries if not e["verified"]]
    assert sorted(e["name"] for e in unverified) == ["runs/29991231-235959-0a0a0a.json",
                                                     "runs/29991231-235959-f0f0f0.json"]
    assert all(e["record"] is None and e["problem"].startswith("unverified") for e in unverified)
    assert "mallory" not in json.dumps([e for e in entries if e["verified"]])
    text = run(inventory, alice, "history").stdout
    assert "runs/29991231-235959-f0f0f0.json: unverified: its signature does not verify" in text
    assert "mallory" not in text
    assert "mallory" not in json.dumps(last_deploy(inventory, alice))


def test_a_second_reading_costs_one_listing_and_no_download(lab, inventory, operators):
    bob = operators["bob"]
    records(inventory, bob)
    control = f"{lab.emulator.url}/_emulator"
    urllib.request.urlopen(urllib.request.Request(f"{control}/counters/reset", data=b"", method="POST"), timeout=10)
    count = len(records(inventory, bob))
    calls = json.loads(urllib.request.urlopen(f"{control}/counters", timeout=10).read())["calls"]
    print(f"history of {count} records, read again: {calls}")
    assert not any("download" in call for call in calls), calls
    assert calls.get("b2_list_file_names", 0) == 1, calls


def plain_cells(table, key: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [getattr(cell, "plain", str(cell)) for cell in table.get_row(key)]


async def until(pilot, condition, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the screen"
        await pilot.pause(0.1)


@pytest.mark.asyncio
async def test_alices_tui_shows_bobs_deploy_in_the_last_deploy_column_and_the_history_screen(lab, inventory, operators,
                                                                                           monkeypatch):
    for name, value in operators["alice"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NIX_CONFIG", lab_env()["NIX_CONFIG"])
    app = TopdeckApp(Backend(load_inventory(inventory)))
    async with app.run_test(size=(200, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        await until(pilot, lambda: not screen.refreshing and plain_cells(screen.query_one("#hosts"), "host-2")[-1]
                    != "-")
        hosts = screen.query_one("#hosts")
        assert plain_cells(hosts, "host-2")[-1].endswith("deploy done by bob")
        assert plain_cells(hosts, "host-1")[-1].endswith("deploy done by alice")
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen) and app.screen.entries is not None)
        runs = app.screen.query_one("#runs")
        rows = [plain_cells(runs, key) for key in runs.rows]
        assert ["bob", "deploy switch"] in [row[1:3] for row in rows]
        forged = plain_cells(runs, "runs/29991231-235959-f0f0f0.json")
        assert forged[2] == "unverified" and "mallory" not in " ".join(forged)
        await pilot.press("slash", *"host-3", "enter")
        await until(pilot, lambda: all("alice" not in plain_cells(runs, key)[1] or
                                       "publish" in plain_cells(runs, key)[2] for key in runs.rows))
        bob = next(key for key in runs.rows if plain_cells(runs, key)[1:3] == ["bob", "deploy switch"])
        runs.move_cursor(row=runs.get_row_index(bob))
        await until(pilot, lambda: app.screen.query_one("#runhosts").row_count == 2)
        assert sorted(key.value for key in app.screen.query_one("#runhosts").rows) == ["host-2", "host-3"]
