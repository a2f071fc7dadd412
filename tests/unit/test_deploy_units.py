"""Unit tests of the deploy engine's logic: waves, the host script's output protocol, run records, checks
(what needs `ssh-keygen` or `nix-instantiate` is in tests/lab/test_deploy_units_tools.py)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from topdeck.core import runs, statedir
from topdeck.core.deploy import HostRules, Settings, Target, _HostRunner, _Tracker, plan_waves
from topdeck.core.errors import DeployError
from topdeck.core.events import DeployResult, HostOutcome, HostPhase, LogLine, Progress
from topdeck.core.inventory import Checks, Host, load_inventory
from topdeck.core.nix.signing import generate_keypair
from topdeck.core.nix.store import parse_store_path
from topdeck.core.remote.hostverbs import host_command

PATH = "/nix/store/" + "a" * 32 + "-nixos-system-web-1"


@pytest.mark.parametrize(("canary", "wave", "expected"), [
    (0, None, [10]),
    (1, None, [1, 9]),
    (1, "25%", [1, 3, 3, 3]),
    (2, "4", [2, 4, 4]),
    (0, "100%", [10]),
])
def test_waves(canary, wave, expected):
    waves = plan_waves([f"h{i}" for i in range(10)], canary, wave)
    assert [len(w) for w in waves] == expected
    assert [h for w in waves for h in w] == [f"h{i}" for i in range(10)]


@pytest.mark.parametrize("wave", ["0", "abc", "150%", "-1", "5.5"])
def test_bad_wave_sizes_are_refused(wave):
    with pytest.raises(DeployError, match="^wave "):
        plan_waves(["a", "b"], 0, wave)


def test_a_target_is_a_path_or_a_generation():
    with pytest.raises(ValueError):
        Target()
    with pytest.raises(ValueError):
        Target(parse_store_path(PATH), generation=3)


def test_the_tracker_turns_script_lines_into_events():
    events = []
    confirmations = []
    track = _Tracker("web-1", events.append, lambda: confirmations.append(1))
    for line in ["phase\tlock", "phase\tfetch", "progress\t1\t3\t100\t300", f"current\t{PATH}",
                 "state\tbefore\t/nix/store/old", "phase\tconfirm\t30", "log\thello\tworld", "state\tgeneration\t7",
                 f"state\tcurrent\t{PATH}", "garbage line", "result\trolled-back\tno confirmation"]:
        track.line(line)
    assert [e.phase for e in events if isinstance(e, HostPhase)] == ["lock", "fetch", "confirm"]
    progress = [e for e in events if isinstance(e, Progress)]
    assert (progress[0].paths_done, progress[0].paths_total, progress[0].bytes_done, progress[0].bytes_total) == \
        (1, 3, 100, 300)
    assert progress[-1].current == "nixos-system-web-1"
    assert [e.text for e in events if isinstance(e, LogLine)] == ["hello world", "garbage line"]
    assert (track.outcome, track.reason, track.generation, track.current, track.before) == \
        ("rolled-back", "no confirmation", 7, PATH, "/nix/store/old")
    assert confirmations == [1]  # the confirmation login started once, when the host began to wait


UNCONFIRMED = "topdeck could not confirm it, so it returns to /nix/store/old by itself within 30 s of activating"


@pytest.mark.parametrize(("mode", "confirmed", "expected"), [
    ("switch", False, UNCONFIRMED),
    ("test", False, UNCONFIRMED),
    ("switch", True, f"it finishes on {PATH} by itself (topdeck confirmed it)"),
    ("boot", False, f"it finishes on {PATH} by itself (boot has no confirmation)"),
])
def test_a_host_lost_while_it_changes_is_reported_with_where_it_ends(mode, confirmed, expected):
    settings = Settings(mode, "http://cache.invalid", generate_keypair("t")[1], 30, "run-1")
    runner = _HostRunner(settings, None, HostRules(), None, lambda _: None, None, time.monotonic)  # type: ignore[arg-type]
    track = _Tracker("web-1", lambda _: None, lambda: None)
    for line in ["state\tbefore\t/nix/store/old", f"state\ttarget\t{PATH}", "phase\tactivate\tswitch"]:
        track.line(line)
    track.confirmed = confirmed
    assert runner._where_it_ends(track) == f"{expected}; `topdeck status` shows where it ended"


def test_an_unknown_result_is_a_failure():
    track = _Tracker("web-1", lambda e: None, lambda: None)
    track.line("result\tweird\twhat")
    assert track.outcome == "failed"


def test_host_command_runs_the_script_from_stdin_and_quotes_every_argument():
    hostile = "$(touch /tmp/pwned); `id` 'x"
    command = host_command(Host("web-1", "10.0.0.1", "web"), "deploy", "run", "switch", hostile)
    argv = shlex.split(command)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["topdeck-host", "deploy", "run", "switch", hostile]
    sudo = host_command(Host("web-1", "10.0.0.1", "web", user="deploy", sudo=True), "status")
    assert shlex.split(sudo)[:4] == ["sudo", "-n", "sh", "-c"]


def test_run_records_give_the_failed_hosts_of_the_newest_run(tmp_path):
    with pytest.raises(DeployError, match="no earlier run"):
        runs.failed_hosts(tmp_path)
    older = DeployResult("a-run", "switch", (HostOutcome("h1", "failed", PATH),), started=1.0, finished=2.0)
    newer = DeployResult("b-run", "switch", (HostOutcome("h1", "done", PATH), HostOutcome("h2", "rolled-back", PATH),
                                             HostOutcome("h3", "skipped", PATH)), started=time.time(), finished=0.0)
    runs.save_run(tmp_path, newer)
    runs.save_run(tmp_path, older)
    assert runs.failed_hosts(tmp_path) == ("h2", "h3")
    assert runs.last_run(tmp_path) == newer


def test_the_state_folder_follows_xdg_state_home(tmp_path):
    assert statedir.state_home({"XDG_STATE_HOME": str(tmp_path), "HOME": "/home/x"}) == tmp_path / "topdeck"
    assert statedir.state_home({"HOME": "/home/x"}) == Path("/home/x/.local/state/topdeck")
    assert statedir.state_home({"XDG_STATE_HOME": "relative", "HOME": "/home/x"}) == Path(
        "/home/x/.local/state/topdeck")


def test_each_inventory_has_a_state_folder_of_its_own_with_a_readable_name(tmp_path):
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    one, other = tmp_path / "fleet" / "hosts", tmp_path / "lab" / "hosts"
    one.mkdir(parents=True)
    other.mkdir(parents=True)
    (tmp_path / "link").symlink_to(one)
    folder = statedir.inventory_state(one, environ)
    assert folder.parent == tmp_path / "state" / "topdeck" / "inventories"
    assert folder.name.startswith("fleet-hosts-") and folder != statedir.inventory_state(other, environ)
    assert statedir.inventory_state(tmp_path / "link", environ) == folder
    assert folder == statedir.inventory_state(one / ".", environ)
    assert (statedir.ensure_inventory_state(one, environ) / "inventory").read_text() == f"{one}\n"


def test_run_records_stay_out_of_the_inventory_and_the_old_ones_are_still_read(tmp_path):
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    inventory = tmp_path / "hosts"
    inventory.mkdir()
    kept = runs.save_run(inventory, DeployResult("a-run", "switch", (HostOutcome("h1", "failed", PATH),),
                                                 started=1.0, finished=2.0), environ=environ)
    assert kept.parent == runs.runs_dir(inventory, environ) and kept.is_relative_to(tmp_path / "state")
    assert list(inventory.iterdir()) == []
    assert runs.failed_hosts(inventory, environ) == ("h1",)
    legacy = inventory / ".topdeck" / "runs"  # where earlier versions wrote them; a newer one there wins
    legacy.mkdir(parents=True)
    runs.save_run(tmp_path / "elsewhere", DeployResult("b-run", "switch", (HostOutcome("h2", "failed", PATH),),
                                                       started=3.0, finished=4.0), environ=environ)
    moved = next(runs.runs_dir(tmp_path / "elsewhere", environ).glob("*.json"))
    moved.rename(legacy / moved.name)
    assert runs.failed_hosts(inventory, environ) == ("h2",)


def test_checks_merge_all_then_tags_then_the_host(tmp_path):
    (tmp_path / "topdeck.toml").write_text(
        '[cache]\ntype = "dir"\npath = "cache"\n\n[checks.all]\nfailed_units = true\n\n'
        '[checks.web]\nhttp = "http://localhost/health"\ncommand = "true"\n')
    (tmp_path / "web-1").mkdir()
    (tmp_path / "web-1" / "host.toml").write_text(
        'address = "10.0.0.1"\npointer = "web"\ntags = ["web"]\n[check]\ncommand = "systemctl is-active nginx"\n')
    inventory = load_inventory(tmp_path)
    assert inventory.checks_for(inventory.host("web-1")) == Checks("systemctl is-active nginx",
                                                                  "http://localhost/health", True)


@pytest.mark.parametrize(("table", "message"), [
    ('[checks.web]\nhttp = "ftp://x"\n', "http:// or https://"),
    ('[checks.web]\ncommand = ""\n', "non-empty command"),
    ('[checks.web]\nwhatever = 1\n', "unknown key"),
    ('[checks."a b"]\ncommand = "true"\n', "a tag"),
])
def test_bad_checks_are_refused_with_file_and_key(tmp_path, table, message):
    (tmp_path / "topdeck.toml").write_text(f'[cache]\ntype = "dir"\npath = "cache"\n\n{table}')
    (tmp_path / "web-1").mkdir()
    (tmp_path / "web-1" / "host.toml").write_text('address = "10.0.0.1"\npointer = "web"\n')
    with pytest.raises(Exception, match=message) as error:
        load_inventory(tmp_path)
    assert "topdeck.toml" in str(error.value)


