"""Where topdeck keeps its own state on the operator's machine: `$XDG_STATE_HOME/topdeck/` (by default
`~/.local/state/topdeck/`), as the XDG Base Directory spec says, never inside an inventory (often a git checkout).

Each inventory has a folder of its own there, named after it and keyed by its absolute path, so two inventories
never share records.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path


def state_home(environ: Mapping[str, str] = os.environ) -> Path:
    """topdeck's state folder. A relative $XDG_STATE_HOME is ignored, as the spec asks."""
    base = environ.get("XDG_STATE_HOME", "")
    if not base or not os.path.isabs(base):
        home = environ.get("HOME") or str(Path.home())
        base = os.path.join(home, ".local", "state")
    return Path(base) / "topdeck"


def inventory_state(inventory_root: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """The state folder of one inventory: `inventories/<parent>-<folder>-<12 hex of its absolute path's sha256>`."""
    resolved = inventory_root.resolve()
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{resolved.parent.name}-{resolved.name}".strip("-"))[:60]
    return state_home(environ) / "inventories" / f"{readable or 'root'}-{digest}"


def ensure_inventory_state(inventory_root: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """The inventory's state folder, created (private to the user) with a note of which inventory it belongs to."""
    folder = inventory_state(inventory_root, environ)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    note = folder / "inventory"
    if not note.exists():
        note.write_text(f"{inventory_root.resolve()}\n")
    return folder


def b2_account_file(realm: str, key_id: str, key: str, environ: Mapping[str, str] = os.environ) -> Path:
    """b2sdk's account-info database for one realm and application key: `b2/<24 hex>.sqlite`, named by a hash of
    the three so that two keys (or two B2 endpoints) never share an authorization. It holds the key: 0600."""
    digest = hashlib.sha256("\0".join((realm, key_id, key)).encode()).hexdigest()[:24]
    return state_home(environ) / "b2" / f"{digest}.sqlite"
