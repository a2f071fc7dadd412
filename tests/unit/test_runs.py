"""core.runs: run records written atomically in the inventory's state folder, read back strictly."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from topdeck.core import runs
from topdeck.core.errors import DeployError
from topdeck.core.events import DeployResult, HostOutcome
from topdeck.core.vocabulary import Mode, Outcome

PATH = "/nix/store/" + "a" * 32 + "-nixos-system-web-1"


def result(run_id: str, started: float, *outcomes: tuple[str, Outcome]) -> DeployResult:
    return DeployResult(run_id, Mode.SWITCH, tuple(HostOutcome(host, outcome, PATH) for host, outcome in outcomes),
                        started=started, finished=started + 1)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def test_a_record_is_written_whole_in_a_private_folder_and_reads_back(tmp_path: Path, environ) -> None:
    run = result("20260101T000000Z-1", 5.0, ("web-1", Outcome.DONE), ("web-2", Outcome.ROLLED_BACK))
    path = runs.save_run(tmp_path / "hosts", run, kind="rollback", environ=environ)
    assert path.parent == runs.runs_dir(tmp_path / "hosts", environ)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left beside it
    record = json.loads(path.read_text())
    assert (record["kind"], record["mode"], record["ok"]) == ("rollback", "switch", False)
    assert [host["outcome"] for host in record["hosts"]] == ["done", "rolled-back"]
    assert runs.load_run(path) == run


def test_no_record_is_no_last_run_and_nothing_to_retry(tmp_path: Path, environ) -> None:
    assert runs.last_run(tmp_path / "hosts", environ) is None
    with pytest.raises(DeployError, match=r"no earlier run to retry \(none recorded in .*/runs\)"):
        runs.failed_hosts(tmp_path / "hosts", environ)


def test_the_newest_by_start_is_the_last_run_whatever_the_file_names(tmp_path: Path, environ) -> None:
    inventory = tmp_path / "hosts"
    runs.save_run(inventory, result("z-oldest", 1.0, ("web-1", Outcome.FAILED)), environ=environ)
    runs.save_run(inventory, result("a-newest", 9.0, ("web-1", Outcome.DONE), ("web-2", Outcome.CANCELLED)),
                  environ=environ)
    assert runs.last_run(inventory, environ).run_id == "a-newest"
    assert runs.failed_hosts(inventory, environ) == ("web-2",)


@pytest.mark.parametrize("text", [
    "not json",
    '{"run_id": "r"}',  # fields missing
    '{"run_id": "r", "run_id": "r", "mode": "switch", "started": 1, "finished": 2, "hosts": []}',
    '{"run_id": "r", "mode": "sideways", "started": 1, "finished": 2, "hosts": []}',
    '{"run_id": "r", "mode": "switch", "started": 1, "finished": 2, "hosts": [{"host": "h", "outcome": "won"}]}',
    '{"run_id": "r", "mode": "switch", "started": 1, "finished": 2, "hosts": [{"host": "h", "outcome": "done",'
    ' "target": "t", "colour": "red"}]}',
])
def test_an_unreadable_record_is_one_line_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(DeployError) as caught:
        runs.load_run(path)
    assert str(caught.value).startswith(f"{path}: not a readable run record (") and "\n" not in str(caught.value)
