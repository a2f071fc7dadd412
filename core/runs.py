"""The record of every deploy and rollback run, kept beside the inventory in .topdeck/runs/<run id>.json.

`--retry-failed` reads the newest record and retries the hosts that did not end on their target.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from topdeck.core.errors import DeployError
from topdeck.core.events import DeployResult, HostOutcome

RUNS_DIR = Path(".topdeck") / "runs"


def runs_dir(inventory_root: Path) -> Path:
    return inventory_root / RUNS_DIR


def save_run(inventory_root: Path, result: DeployResult, kind: str = "deploy") -> Path:
    """Write the run's record atomically; its name sorts by time (run ids start with the UTC time)."""
    folder = runs_dir(inventory_root)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_id": result.run_id, "kind": kind, "mode": result.mode, "started": result.started,
              "finished": result.finished, "stopped": result.stopped, "ok": result.ok,
              "hosts": [dataclasses.asdict(outcome) for outcome in result.outcomes]}
    path = folder / f"{result.run_id}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, path)
    return path


def last_run(inventory_root: Path) -> DeployResult | None:
    found = [load_run(path) for path in runs_dir(inventory_root).glob("*.json")]
    return max(found, key=lambda run: run.started) if found else None


def load_run(path: Path) -> DeployResult:
    try:
        record = json.loads(path.read_text())
        outcomes = tuple(HostOutcome(**host) for host in record["hosts"])
        return DeployResult(record["run_id"], record["mode"], outcomes, started=record["started"],
                            finished=record["finished"], stopped=record.get("stopped", ""))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DeployError(f"{path}: not a readable run record ({error})") from None


def failed_hosts(inventory_root: Path) -> tuple[str, ...]:
    """The hosts of the newest run that did not end on their target."""
    run = last_run(inventory_root)
    if run is None:
        raise DeployError(f"no earlier run to retry (none recorded in {runs_dir(inventory_root)})")
    return run.failed
