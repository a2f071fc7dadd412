"""core.statedir: where topdeck keeps its state (XDG), one folder per inventory, one b2sdk database per key."""

from __future__ import annotations

import stat
from pathlib import Path

from topdeck.core import statedir


def test_state_home_is_xdg_state_home_or_the_default_under_home(tmp_path: Path) -> None:
    assert statedir.state_home({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "topdeck"
    assert statedir.state_home({"HOME": "/home/op"}) == Path("/home/op/.local/state/topdeck")
    # a relative XDG_STATE_HOME is ignored, as the spec asks
    assert statedir.state_home({"XDG_STATE_HOME": "rel/state", "HOME": "/home/op"}) == Path(
        "/home/op/.local/state/topdeck")


def test_each_inventory_has_its_own_readable_folder_keyed_by_its_absolute_path(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    one, two = tmp_path / "site a" / "hosts", tmp_path / "site-b" / "hosts"
    folder = statedir.inventory_state(one, environ)
    assert folder.parent == tmp_path / "state" / "topdeck" / "inventories"
    assert folder.name.startswith("site_a-hosts-") and len(folder.name) == len("site_a-hosts-") + 12
    assert statedir.inventory_state(two, environ) != folder
    assert statedir.inventory_state(one / ".." / "hosts", environ) == folder  # the resolved path counts


def test_ensure_inventory_state_creates_a_private_folder_with_a_note_of_its_inventory(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    inventory = tmp_path / "hosts"
    folder = statedir.ensure_inventory_state(inventory, environ)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "inventory").read_text() == f"{inventory.resolve()}\n"
    assert statedir.ensure_inventory_state(inventory, environ) == folder


def test_each_realm_and_key_has_its_own_b2_account_file(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    first = statedir.b2_account_file("https://realm", "id", "secret", environ)
    assert first.parent == tmp_path / "topdeck" / "b2" and first.suffix == ".sqlite"
    assert "secret" not in str(first) and "id" not in first.stem
    others = {statedir.b2_account_file(*args, environ) for args in
              [("https://other", "id", "secret"), ("https://realm", "id2", "secret"), ("https://realm", "id", "s2")]}
    assert first not in others and len(others) == 3
    # the three are joined with a separator no value holds: shifting text from one to the next is another file
    assert statedir.b2_account_file("a", "bc", "d", environ) != statedir.b2_account_file("ab", "c", "d", environ)
