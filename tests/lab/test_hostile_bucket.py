"""The hostile bucket writer against real hosts, the CLI and the TUI: someone holding the lab's B2 write key (the
inventory's credentials_file) but not the signing key uploads forged file info, bodies, sidecars and histories.
Each test asserts: no traceback, nothing shown as verified that is not, one clear line where it is refused, no host
changed (`/run/current-system`) and no pointer version published from forged info. The folder-cache half (no lab)
is tests/unit/test_pointers.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from deploytools import deploy, deploy_inventory, release, three_host_lab, topdeck

from topdeck.core.cache import pointers
from topdeck.core.cache.access import open_cache
from topdeck.core.deploy import Settings, Target, new_run_id
from topdeck.core.deploy import deploy as deploy_hosts
from topdeck.core.facade import Fleet
from topdeck.core.inventory import load_inventory
from topdeck.core.nix.signing import generate_keypair, ssh_public_key
from topdeck.core.nix.store import parse_store_path
from topdeck.lab import factory

pytestmark = pytest.mark.lab
HOSTS = ("host-1", "host-2", "host-3")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A lab of this module's own: its deploys move hosts that the session's lab keeps on generation 1."""
    with three_host_lab(tmp_path_factory.mktemp("hostilebucketlab"), "127.0.40.11") as lab:
        yield lab


@pytest.fixture
def inv(lab, tmp_path):  # type: ignore[no-untyped-def]
    """web (host-1, host-2) and db (host-3) published once (serial 1); no host deployed yet, and none remembers a
    serial of an earlier test's bucket."""
    for name in HOSTS:
        lab.host(name).sh("rm -rf /nix/var/nix/topdeck/pointers")
    return deploy_inventory(lab, tmp_path / "hosts", 8)


def systems(lab) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {name: lab.host(name).current_system() for name in HOSTS}


def bucket(inventory: Path):  # type: ignore[no-untyped-def]
    """The attacker's handle: the inventory's B2 credentials, no signing key used."""
    return open_cache(load_inventory(inventory).cache)


def versions(inventory: Path, name: str = "web") -> list[dict[str, str]]:
    return [dict(entry.info) for entry in bucket(inventory).versions(pointers.text_name(name))]


def upload_txt(inventory: Path, name: str, path: str, info: dict[str, str]) -> None:
    bucket(inventory).put_bytes(pointers.text_name(name), f"{path}\n".encode(), content_type="text/plain",
                                info=info)


def genuine(inventory: Path, name: str, serial: int) -> dict[str, str]:
    return next(info for info in versions(inventory, name) if info.get("topdeck-serial") == str(serial))


def upgrade_web(inventory: Path) -> str:
    """Publish web's next system (serial 2)."""
    return release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "2.0"))


def web_at(inventory: Path, serial: int) -> str:
    return genuine(inventory, "web", serial)["topdeck-path"]


def clean(result) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert "Illegal number" not in result.stdout + result.stderr


def one_error_line(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    clean(result)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("topdeck: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def deployed_to(inventory: Path, lab, host: str) -> dict:  # type: ignore[no-untyped-def]
    result, _, outcomes = deploy(inventory, "--on", host)
    clean(result)
    return outcomes[host]


# --- forged file info -------------------------------------------------------------------------------------------------


def test_forged_info_naming_a_lagging_hosts_system_shows_nothing_verified_and_changes_nothing(lab, inv):
    lagging = lab.host("host-2").current_system()  # the lab's first system, never published
    newest = genuine(inv, "web", 1)
    upload_txt(inv, "web", lagging, {**newest, "topdeck-path": lagging, "topdeck-serial": "7"})
    before, count = systems(lab), len(versions(inv))

    listed = topdeck(inv, "pointers")
    clean(listed)
    web = next(line for line in listed.stdout.splitlines() if line.startswith("web "))
    assert "unverified: its file info's signature does not verify" in web and lagging not in web
    one_error_line(topdeck(inv, "pointers", "web"), "but its signed sidecar names")
    status = topdeck(inv, "status", "--on", "host-2")
    clean(status)
    assert status.returncode == 1 and "up to date" not in status.stdout  # not exit 0 on forged info
    plan = topdeck(inv, "plan", "--json", "--on", "host-2")
    clean(plan)
    assert lagging not in plan.stdout and "unverified" in plan.stdout
    result, _, outcomes = deploy(inv, "--on", "host-2")
    clean(result)
    assert outcomes["host-2"]["outcome"] == "failed" and "unverified" in outcomes["host-2"]["reason"]
    assert systems(lab) == before and len(versions(inv)) == count


def test_info_copied_from_another_pointer_is_no_target(lab, inv):
    db = genuine(inv, "db", 1)
    upload_txt(inv, "web", db["topdeck-path"], db)  # genuinely signed, for `db`
    plan = topdeck(inv, "plan", "--json", "--on", "host-1")
    clean(plan)
    hosts = json.loads(plan.stdout)["hosts"]
    assert all(host.get("target") != db["topdeck-path"] for host in hosts), plan.stdout
    assert "unverified" in plan.stdout


@pytest.mark.parametrize("serial", ["0", str(2**63 - 1)], ids=["zero-refused-as-replay", "2^63-1-illegal-number"])
def test_a_forged_serial_in_file_info_neither_makes_hosts_refuse_the_next_publish_nor_freezes_the_fleet(lab, inv,
                                                                                                      serial):
    upgrade_web(inv)
    assert deployed_to(inv, lab, "host-1")["outcome"] == "done"  # host-1 remembers serial 2
    upload_txt(inv, "web", web_at(inv, 2), {**genuine(inv, "web", 2), "topdeck-serial": serial})
    rolled = topdeck(inv, "pointers", "web", "--rollback", "--yes")
    clean(rolled)
    assert rolled.returncode == 0 and "(serial 3)" in rolled.stdout, rolled.stdout + rolled.stderr
    outcome = deployed_to(inv, lab, "host-1")
    assert outcome["outcome"] == "done", outcome
    assert lab.host("host-1").current_system() == web_at(inv, 1)


def test_rollback_to_a_path_only_forged_info_names_is_refused_and_publishes_nothing(lab, inv):
    upgrade_web(inv)
    db = genuine(inv, "db", 1)["topdeck-path"]  # a genuinely pushed system, named by forged info of `web`
    upload_txt(inv, "web", web_at(inv, 2), {**genuine(inv, "web", 2), "topdeck-path": db, "topdeck-serial": "3"})
    count = len(versions(inv))
    for to in (db, "3"):
        one_error_line(topdeck(inv, "pointers", "web", "--rollback", to, "--yes"), "never had a verified version")
    assert len(versions(inv)) == count
    history = topdeck(inv, "pointers", "web", "--history")
    clean(history)
    assert db not in history.stdout and "unverified" in history.stdout.splitlines()[0]


def test_push_publishes_when_forged_info_already_names_the_new_toplevel(lab, inv):
    staged = release(inv, "web", lambda s: factory.upgrade(s, "web-app", "3.0"), via="host-2")  # also web's push
    before = bucket(inv).get_bytes(pointers.sidecar_name("web"))
    # put web back on serial 1's system, then forge info claiming web already names `staged`
    assert topdeck(inv, "pointers", "web", "--rollback", "--yes").returncode == 0
    upload_txt(inv, "web", staged, {**genuine(inv, "web", 3), "topdeck-path": staged})
    pushed = topdeck(inv, "push", staged, "--pointer", "web", "--json")
    clean(pushed)
    assert json.loads(pushed.stdout.splitlines()[-1])["pointer_changed"] is True
    assert bucket(inv).get_bytes(pointers.sidecar_name("web")) != before
    assert Fleet(load_inventory(inv)).read_pointer("web").path == parse_store_path(staged)


# --- sidecars and bodies ----------------------------------------------------------------------------------------------


def test_a_sidecar_with_a_duplicated_key_is_refused_by_the_cli_and_the_host(lab, inv):
    older = lab.host("host-1").current_system()
    genuine_sidecar = bucket(inv).get_bytes(pointers.sidecar_name("web")).decode()
    doubled = genuine_sidecar.replace(' "path"', f' "path": "{older}",\n "path"', 1)  # sed reads the first
    bucket(inv).put_bytes(pointers.sidecar_name("web"), doubled.encode(), content_type="application/json")
    before = systems(lab)
    one_error_line(topdeck(inv, "pointers", "web"), "key 'path' appears twice")
    outcome = deployed_to(inv, lab, "host-1")
    assert outcome["outcome"] == "failed" and "names a field twice" in outcome["reason"], outcome
    assert systems(lab) == before


def test_a_sidecar_with_a_huge_serial_is_one_line_on_the_host_not_illegal_number(lab, inv):
    genuine_sidecar = bucket(inv).get_bytes(pointers.sidecar_name("web")).decode()
    huge = genuine_sidecar.replace('"serial": 1,', f'"serial": {2**63 + 5},', 1)
    bucket(inv).put_bytes(pointers.sidecar_name("web"), huge.encode(), content_type="application/json")
    before = systems(lab)
    one_error_line(topdeck(inv, "pointers", "web"), "serial must be an integer from 0 to 2^53")
    outcome = deployed_to(inv, lab, "host-1")
    assert outcome["outcome"] == "failed" and "serial is above 2^53" in outcome["reason"], outcome
    assert systems(lab) == before


def test_a_replayed_older_genuine_sidecar_and_txt_are_refused(lab, inv):
    old_sidecar = bucket(inv).get_bytes(pointers.sidecar_name("web"))
    old_info = genuine(inv, "web", 1)
    upgrade_web(inv)
    assert deployed_to(inv, lab, "host-1")["outcome"] == "done"
    bucket(inv).put_bytes(pointers.sidecar_name("web"), old_sidecar, content_type="application/json")
    upload_txt(inv, "web", old_info["topdeck-path"], old_info)
    before = systems(lab)
    one_error_line(topdeck(inv, "pointers", "web"), "older than serial 2 of its history (a replayed sidecar)")
    status = topdeck(inv, "status", "--on", "host-1", "--json")
    clean(status)
    assert json.loads(status.stdout)[0]["desired"] == web_at(inv, 2)  # the newest verified, not the replay
    outcome = deployed_to(inv, lab, "host-1")
    assert outcome["outcome"] == "failed" and "replayed or downgraded pointer" in outcome["reason"], outcome
    assert systems(lab) == before


def test_a_forged_sidecar_signed_by_another_key_is_refused(lab, inv):
    forger, _ = generate_keypair("topdeck-lab-1")  # the trusted key's name, another key
    path = parse_store_path(lab.host("host-1").current_system())
    fake = pointers.signed(pointers.Pointer("web", path, 99, int(time.time())), forger)
    bucket(inv).put_bytes(pointers.sidecar_name("web"), pointers.render_sidecar(fake), content_type="application/json")
    upload_txt(inv, "web", str(path), {"topdeck-path": str(path), "topdeck-serial": "99",
                                       "topdeck-time": str(fake.time), "topdeck-expires": "0", "topdeck-sig": fake.sig})
    before = systems(lab)
    one_error_line(topdeck(inv, "pointers", "web"), "does not verify with the trusted key")
    assert "unverified" in topdeck(inv, "pointers").stdout
    assert deployed_to(inv, lab, "host-1")["outcome"] == "failed"
    assert systems(lab) == before


# --- the freshness window ---------------------------------------------------------------------------------------------


def test_an_expired_pointer_is_refused_by_the_host_and_the_agent(lab, inv):
    inventory = load_inventory(inv)
    fleet = Fleet(inventory, clock=lambda: time.time() - 7200)  # signed two hours ago, valid for one
    fleet_inventory = fleet.inventory
    path = web_at(inv, 1)
    signed = pointers.publish(fleet.cache, "web", parse_store_path(path), fleet.signing_key(),
                              clock=lambda: time.time() - 7200, valid_for=3600)
    assert signed.expires and signed.expires < time.time()
    before = systems(lab)
    plan = topdeck(inv, "plan", "--json", "--on", "host-1")
    clean(plan)
    assert "pointer web: expired at" in plan.stdout
    status = topdeck(inv, "status", "--on", "host-1")
    clean(status)
    assert "pointer signed 2 hours ago, expired an hour ago: hosts refuse it, publish it again" in status.stdout, \
        status.stdout
    settings = Settings("switch", fleet.cache.substituter_url, fleet.trusted_key(), 8, new_run_id(time.time))
    result = deploy_hosts((inventory.host("host-1"),), {"host-1": Target(parse_store_path(path), pointer="web")},
                          settings, fleet_inventory.ssh)
    reason = result.outcomes[0].reason
    assert result.outcomes[0].outcome == "failed" and reason.startswith("pointer web: expired at "), reason
    assert "(signed " in reason and reason.endswith("; publish it again")
    agent = lab.host("host-2").sh(
        f"sh {REPO}/core/remote/host.sh agent --cache '{fleet.cache.substituter_url}' "
        f"--key '{fleet.trusted_key().to_text()}' --pointer web "
        f"--sidecar '{fleet.cache.substituter_url}/toplevels/web.json' "
        f"--signer '{ssh_public_key(fleet.trusted_key())}'", check=False)
    assert "result\tfailed\tpointer web: expired at " in agent, agent
    assert systems(lab) == before


# --- the TUI ----------------------------------------------------------------------------------------------------------


async def until(pilot, condition, timeout: float = 120.0, what: str = "the screen") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.1)


def plain(cell) -> str:  # type: ignore[no-untyped-def]
    return getattr(cell, "plain", str(cell))


async def test_tui_target_pointer_deploys_through_the_pointer_so_a_replayed_txt_downgrades_no_host(lab, inv):
    from textual.widgets import OptionList

    from topdeck.tui.app import TopdeckApp
    from topdeck.tui.backend import Backend
    from topdeck.tui.screens.deploy import DeployScreen
    from topdeck.tui.screens.plan import PlanScreen
    from topdeck.tui.widgets.dialogs import ChoiceScreen, ConfirmScreen

    upgrade_web(inv)
    assert deployed_to(inv, lab, "host-1")["outcome"] == "done"  # host-1 runs serial 2 and remembers it
    old_info = genuine(inv, "web", 1)  # the attacker replays serial 1's genuine .txt: its info names the older system
    upload_txt(inv, "web", old_info["topdeck-path"], old_info)
    before = systems(lab)
    app = TopdeckApp(Backend(load_inventory(inv)))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.fleet.refreshed, what="the first refresh")
        await pilot.press("space", "p")
        await until(pilot, lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None,
                    what="the plan")
        plan = app.screen
        await pilot.press("t")
        assert isinstance(app.screen, ChoiceScreen)
        options = app.screen.query_one("#choices", OptionList)
        options.highlighted = next(i for i in range(options.option_count)
                                   if options.get_option_at_index(i).id == "pointer:web")
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is plan and plan.target is not None and not plan.planning
                    and plan.fleet_plan is not None, what="the plan towards pointer web")
        through = getattr(plan.fleet_plan, "pointer", "")
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, DeployScreen), what="the deploy screen")
        deploy_screen = app.screen
        await until(pilot, lambda: not deploy_screen.running, timeout=300, what="the deploy")
        await pilot.pause(0.3)
        outcome = plain(deploy_screen.query_one("#outcome").content)
        assert "failed" in outcome, outcome
    assert systems(lab) == before  # the host read the signed sidecar (serial 2) and refused to move
    assert through == "web"


async def test_tui_pointers_screen_shows_forged_info_as_unverified_and_refuses_a_rollback_to_it(lab, inv):
    from topdeck.tui.app import TopdeckApp
    from topdeck.tui.backend import Backend
    from topdeck.tui.screens.pointers import PointersScreen

    upload_txt(inv, "web", lab.host("host-2").current_system(),
               {**genuine(inv, "web", 1), "topdeck-path": lab.host("host-2").current_system()})
    count = len(versions(inv))
    app = TopdeckApp(Backend(load_inventory(inv)))
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.fleet.refreshed, what="the first refresh")
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, PointersScreen) and bool(app.screen.pointers),
                    what="the pointers")
        screen = app.screen
        table = screen.query_one("#pointers")
        table.move_cursor(row=table.get_row_index("web"))
        await until(pilot, lambda: "web" in screen.histories and screen.pointer_name == "web", what="web's history")
        row = [plain(cell) for cell in table.get_row("web")]
        assert "unverified: its file info's signature does not verify" in row[-1], row
        assert lab.host("host-2").current_system() not in " ".join(row)
        title = screen.query_one("#historytitle")
        await until(pilot, lambda: "not verified" in plain(title.content), what="web's sidecar checked")
        assert "but its signed sidecar names" in plain(title.content)  # the forged .txt body, caught
        history = screen.query_one("#history")
        history.focus()
        history.move_cursor(row=0)
        await pilot.press("b")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, type(None)) and app.screen is screen  # no confirmation offered
    assert len(versions(inv)) == count
