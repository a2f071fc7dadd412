"""The record of every deploy, rollback and reboot run: `<run id>.json` in the inventory's state folder
(core/statedir.py: `$XDG_STATE_HOME/topdeck/inventories/<inventory>/runs/`).

`--retry-failed` reads the newest record and retries the hosts that did not end on their target. Records that
earlier versions kept beside the inventory, in `.topdeck/runs/`, are still read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from topdeck.core import strict
from topdeck.core.errors import DeployError
from topdeck.core.events import DeployResult, HostOutcome
from topdeck.core.statedir import ensure_inventory_state, inventory_state
from topdeck.core.vocabulary import Mode, Outcome

LEGACY_RUNS_DIR = Path(".topdeck") / "runs"


def runs_dir(inventory_root: Path, environ: Mapping[str, str] = os.environ) -> Path:
    return inventory_state(inventory_root, environ) / "runs"


def save_run(inventory_root: Path, result: DeployResult, kind: str = "deploy",
             environ: Mapping[str, str] = os.environ) -> Path:
    """Write the run's record atomically; its name sorts by time (run ids start with the UTC time)."""
    folder = ensure_inventory_state(inventory_root, environ) / "runs"
    folder.mkdir(exist_ok=True, mode=0o700)
    record = {"run_id": result.run_id, "kind": kind, "mode": result.mode, "started": result.started,
              "finished": result.finished, "stopped": result.stopped, "ok": result.ok,
              "hosts": [dataclasses.asdict(outcome) for outcome in result.outcomes]}
    path = folder / f"{result.run_id}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, path)
    return path


def last_run(inventory_root: Path, environ: Mapping[str, str] = os.environ) -> DeployResult | None:
    folders = (runs_dir(inventory_root, environ), inventory_root / LEGACY_RUNS_DIR)
    found = [load_run(path) for folder in folders for path in folder.glob("*.json")]
    return max(found, key=lambda run: run.started) if found else None


def load_run(path: Path) -> DeployResult:
    try:
        record = strict.loads(path.read_text())
        outcomes = tuple(HostOutcome(**{**host, "outcome": Outcome(host["outcome"])}) for host in record["hosts"])
        return DeployResult(record["run_id"], Mode(record["mode"]), outcomes, started=record["started"],
                            finished=record["finished"], stopped=record.get("stopped", ""))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DeployError(f"{path}: not a readable run record ({error})") from None


def failed_hosts(inventory_root: Path, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The hosts of the newest run that did not end on their target."""
    run = last_run(inventory_root, environ)
    if run is None:
        raise DeployError(f"no earlier run to retry (none recorded in {runs_dir(inventory_root, environ)})")
    return run.failed
