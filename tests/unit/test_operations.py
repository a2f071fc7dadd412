"""core.operations's own rules without hosts: the completeness gate before a deploy, and which key hosts trust (status,
generations and gc's questions against fake hosts are in test_engine_units.py; the whole flows in tests/lab/)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from topdeck.core.cache.interface import Entry
from topdeck.core.cache.manifest import Manifest, ManifestPath
from topdeck.core.errors import DeployError, InventoryError, SigningKeyError
from topdeck.core.inventory import CacheConfig, Inventory, load_inventory
from topdeck.core.nix.signing import generate_keypair, write_secret_key
from topdeck.core.nix.store import parse_store_path
from topdeck.core.operations import require_complete, trusted_key

LIBC = parse_store_path("/nix/store/" + "1" * 32 + "-glibc-2.40")
TOP = parse_store_path("/nix/store/" + "2" * 32 + "-nixos-system-web")
MANIFEST = Manifest(TOP, (ManifestPath(LIBC, 100, 50, ()), ManifestPath(TOP, 10, 5, (LIBC,))))
SECRET, PUBLIC = generate_keypair("fleet-test-1")


def listing(*paths) -> dict[str, Entry]:  # type: ignore[no-untyped-def]
    return {f"{p.hash_part}.narinfo": Entry(f"{p.hash_part}.narinfo", 1) for p in paths}


def test_a_deploy_starts_only_when_every_narinfo_of_every_target_is_stored() -> None:
    require_complete(listing(LIBC, TOP), {TOP: MANIFEST})
    require_complete({}, {})
    with pytest.raises(DeployError) as caught:
        require_complete(listing(TOP), {TOP: MANIFEST})
    assert str(caught.value) == (f"the cache lacks 1 of the 2 paths of nixos-system-web (first: {LIBC}): push it "
                                 "again before deploying")


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    (tmp_path / "topdeck.toml").write_text('[cache]\ntype = "dir"\npath = "cache"\n')
    (tmp_path / "web-1").mkdir()
    (tmp_path / "web-1" / "host.toml").write_text('address = "10.0.0.1"\npointer = "web"\n')
    return load_inventory(tmp_path)


def with_cache(inventory: Inventory, **settings: object) -> Inventory:
    return dataclasses.replace(inventory, cache=CacheConfig("dir", path=inventory.root / "cache", **settings))  # type: ignore[arg-type]


def test_the_trusted_key_is_the_public_key_its_file_or_the_signing_keys_half(inventory: Inventory) -> None:
    assert trusted_key(with_cache(inventory, public_key=PUBLIC.to_text())) == PUBLIC
    key_file = inventory.root / "cache.pub"
    key_file.write_text(PUBLIC.to_text())
    assert trusted_key(with_cache(inventory, public_key_file=key_file)) == PUBLIC
    secret_file = inventory.root / "cache.sec"
    write_secret_key(secret_file, SECRET)
    assert trusted_key(with_cache(inventory, signing_key=secret_file)) == PUBLIC


def test_no_key_or_a_bad_one_is_one_line_naming_the_setting(inventory: Inventory) -> None:
    with pytest.raises(InventoryError) as caught:
        trusted_key(inventory)
    assert str(caught.value) == (f"{inventory.root}/topdeck.toml: set cache.public_key or cache.public_key_file (the "
                                 "key hosts trust)")
    with pytest.raises(SigningKeyError, match=r"topdeck\.toml: cache\.public_key"):
        trusted_key(with_cache(inventory, public_key="not a key"))
