"""Pointers against a hostile bucket writer, with a folder cache (no lab, no Nix, no SSH): someone who can write the
bucket but holds no signing key uploads forged file info, bodies, sidecars and histories. Nothing the operator's side
reads from them may be shown or used as verified, move a serial, or get re-signed. The same attacks against real
hosts, the CLI and the TUI are in tests/lab/test_hostile_bucket.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tui_fakes import DB, WEB_NEW, WEB_OLD, fake_inventory, toplevel

from topdeck.core import strict
from topdeck.core.cache import pointers
from topdeck.core.cache.manifest import Manifest, ManifestPath, manifest_name, render_manifest
from topdeck.core.cache.presence import narinfo_name
from topdeck.core.cache.push import _publish_pointer
from topdeck.core.errors import CacheError, InventoryError, PointerError
from topdeck.core.facade import Fleet
from topdeck.core.gc import pointer_systems
from topdeck.core.inventory import CacheConfig, Inventory, load_inventory
from topdeck.core.nix.signing import generate_keypair, write_secret_key
from topdeck.core.plan import targets_from_pointers

NOW = 1_795_000_000.0
OLD, NEW, OTHER = toplevel(WEB_OLD), toplevel(WEB_NEW), toplevel(DB)


def fleet_with(tmp_path, valid_for: int = 0, clock=lambda: NOW) -> Fleet:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "cache.sec"
    if not key_file.exists():
        secret, _ = generate_keypair("test-1")
        write_secret_key(key_file, secret)
    cache = CacheConfig(kind="dir", path=tmp_path / "cache", url="http://x", signing_key=key_file)
    (tmp_path / "cache").mkdir(exist_ok=True)
    inventory: Inventory = dataclasses.replace(fake_inventory(root=tmp_path), cache=cache)
    inventory = dataclasses.replace(inventory, deploy=dataclasses.replace(inventory.deploy,
                                                                          pointer_valid_for=valid_for))
    return Fleet(inventory, failed_hosts=lambda root: (), clock=clock)


def store_closure(cache, path) -> None:  # type: ignore[no-untyped-def]
    cache.put_bytes(manifest_name(path), render_manifest(Manifest(path, (ManifestPath(path, 1, 1, ()),))),
                    content_type="application/json")
    cache.put_bytes(narinfo_name(path), b"StorePath: x\n", content_type="text/x-nix-narinfo")


@pytest.fixture
def published(tmp_path) -> Fleet:  # type: ignore[no-untyped-def]
    """web: OLD (serial 1) then NEW (serial 2); db: OTHER (serial 1); every closure complete in the cache."""
    fleet = fleet_with(tmp_path)
    for path in (OLD, NEW, OTHER):
        store_closure(fleet.cache, path)
    fleet.publish_pointer("web", str(OLD))
    fleet.publish_pointer("web", str(NEW))
    fleet.publish_pointer("db", str(OTHER))
    return fleet


def write_txt(fleet: Fleet, name: str, path, info: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """What a bucket writer without the signing key can do: upload a .txt with any body and any file info."""
    fleet.cache.put_bytes(pointers.text_name(name), f"{path}\n".encode(), content_type="text/plain", info=info)


def genuine_info(fleet: Fleet, name: str, serial: int) -> dict[str, str]:
    entry = next(e for e in fleet.cache.versions(pointers.text_name(name))
                 if e.info.get(pointers.INFO_SERIAL) == str(serial))
    return dict(entry.info)


def forged(info: dict[str, str], **changes: str) -> dict[str, str]:
    return {**info, **{f"topdeck-{key}": value for key, value in changes.items()}}


def history_size(fleet: Fleet, name: str = "web") -> int:
    return len(fleet.cache.versions(pointers.text_name(name)))


# --- forged file info ------------------------------------------------------------------------------------------------


def test_forged_info_naming_an_older_genuine_system_is_unverified_and_never_a_target(published):
    newest = genuine_info(published, "web", 2)
    write_txt(published, "web", OLD, forged(newest, path=str(OLD)))  # the newest signature, an older path
    version = published.pointers()["web"]
    assert not version.verified and version.path == "" and version.serial == 0
    assert "signature does not verify" in version.problem
    targets = targets_from_pointers(published.inventory.hosts, published.cache.listing(), [published.trusted_key()],
                                    NOW)
    assert all(isinstance(t, str) and "unverified" in t for t in targets.values() if "web" in str(t)), targets
    assert str(OLD) not in {str(t) for t in targets.values()}


def test_forged_info_without_a_signature_reads_as_older_topdeck(published):
    write_txt(published, "web", OLD, {"topdeck-serial": "9", "topdeck-path": str(OLD)})
    assert published.pointers()["web"].problem == pointers.OLDER_TOPDECK


def test_info_copied_from_another_pointer_does_not_verify(published):
    write_txt(published, "web", OTHER, genuine_info(published, "db", 1))  # genuinely signed, but for `db`
    assert not published.pointers()["web"].verified


def test_forged_serial_zero_does_not_lower_the_next_serial(published):
    write_txt(published, "web", NEW, forged(genuine_info(published, "web", 2), serial="0"))
    assert published.publish_pointer("web", str(OLD)).serial == 3


def test_forged_serial_2_63_does_not_raise_the_next_serial(published):
    write_txt(published, "web", NEW, forged(genuine_info(published, "web", 2), serial=str(2**63 - 1)))
    version = published.pointers()["web"]
    assert "not a number from 0 to 2^53" in version.problem
    assert published.publish_pointer("web", str(OLD)).serial == 3


def test_unicode_digits_in_a_forged_serial_are_no_number(published):
    write_txt(published, "web", NEW, forged(genuine_info(published, "web", 2), serial="٣"))
    assert not published.pointers()["web"].verified


def test_push_does_not_skip_publishing_when_forged_info_names_the_new_toplevel(published):
    write_txt(published, "web", OTHER, forged(genuine_info(published, "web", 2), path=str(OTHER)))
    result = _publish_pointer(published.cache, "web", OTHER, published.signing_key(), published.cache.listing(),
                              lambda: NOW, 0)
    assert result.changed and result.serial == 3
    assert published.read_pointer("web").path == OTHER


def test_push_skips_publishing_when_the_verified_info_already_names_the_toplevel(published):
    result = _publish_pointer(published.cache, "web", NEW, published.signing_key(), published.cache.listing(),
                              lambda: NOW, 0)
    assert not result.changed and result.serial == 2


def test_gc_keeps_no_system_for_forged_info(published):
    write_txt(published, "web", OTHER, forged(genuine_info(published, "web", 2), path=str(OTHER), serial="99"))
    kept = pointer_systems(published.cache.all_versions(), 1, [published.trusted_key()])  # type: ignore[attr-defined]
    assert {str(p): r for p, r in kept.items()} == {str(NEW): ["pointer web (serial 2)"],
                                                    str(OTHER): ["pointer db (serial 1)"]}


# --- rollback --------------------------------------------------------------------------------------------------------


def test_rollback_skips_a_tampered_history_and_republishes_a_verified_version(published):
    for serial in ("7", "8"):  # forged newer versions naming OTHER
        write_txt(published, "web", OTHER, forged(genuine_info(published, "web", 2), path=str(OTHER), serial=serial))
    rollback = published.pointer_rollback("web")
    assert (rollback.target, rollback.now) == (OLD, str(NEW))
    assert published.rollback_pointer(rollback).serial == 3


def test_rollback_refuses_a_forged_version_by_serial_or_path(published):
    write_txt(published, "web", OTHER, forged(genuine_info(published, "web", 1), path=str(OTHER), serial="5"))
    before = history_size(published)
    for to in ("5", str(OTHER)):
        with pytest.raises(PointerError, match="never had a verified version"):
            published.pointer_rollback("web", to)
    assert history_size(published) == before


def test_rollback_refuses_a_pointer_published_by_older_topdeck(tmp_path):
    fleet = fleet_with(tmp_path)
    write_txt(fleet, "web", OLD, {"topdeck-serial": "1", "topdeck-path": str(OLD)})
    with pytest.raises(PointerError, match=r"no verified version to roll back to \(unverified: published without"):
        fleet.pointer_rollback("web")


def test_rollback_refuses_a_verified_version_whose_closure_is_incomplete(published):
    published.cache.delete_version(published.cache.listing()[narinfo_name(OLD)])  # type: ignore[attr-defined]
    before = history_size(published)
    with pytest.raises(CacheError, match="the cache lacks 1 of the 1 paths.*nothing published"):
        published.rollback_pointer(published.pointer_rollback("web"))
    published.cache.delete_version(published.cache.listing()[manifest_name(OLD)])  # type: ignore[attr-defined]
    with pytest.raises(CacheError, match="no manifest.*nothing published"):
        published.rollback_pointer(published.pointer_rollback("web"))
    assert history_size(published) == before


# --- sidecars --------------------------------------------------------------------------------------------------------


def sidecar(fleet: Fleet, name: str = "web") -> bytes:
    return fleet.cache.get_bytes(pointers.sidecar_name(name))


def test_a_sidecar_with_a_duplicated_key_is_refused(published):
    genuine = sidecar(published).decode()
    doubled = genuine.replace(' "path"', f' "path": "{OLD}",\n "path"', 1)
    published.cache.put_bytes(pointers.sidecar_name("web"), doubled.encode(), content_type="application/json")
    with pytest.raises(PointerError, match="key 'path' appears twice"):
        published.read_pointer("web")


def test_a_sidecar_serial_above_2_53_is_refused():
    fields = {"name": "web", "path": str(NEW), "serial": 2**53 + 1, "time": 1, "sig": "x:y"}
    with pytest.raises(PointerError, match="serial must be an integer from 0 to 2\\^53"):
        pointers.parse_sidecar(json.dumps(fields).encode(), "web.json")


def test_a_replayed_older_genuine_sidecar_is_refused(published):
    older = dataclasses.replace(published.read_pointer("web"))  # serial 2 now
    published.publish_pointer("web", str(OLD))  # serial 3
    published.cache.put_bytes(pointers.sidecar_name("web"), pointers.render_sidecar(older),
                              content_type="application/json")
    write_txt(published, "web", older.path, genuine_info(published, "web", 2))
    with pytest.raises(PointerError, match="serial 2, older than serial 3 of its history .a replayed sidecar."):
        published.read_pointer("web")


def test_a_tampered_txt_body_is_refused(published):
    write_txt(published, "web", OLD, genuine_info(published, "web", 2))
    with pytest.raises(PointerError, match="but its signed sidecar names"):
        published.read_pointer("web")


def test_a_v1_sidecar_without_expires_still_verifies_and_stripping_expires_does_not(published):
    key = published.signing_key()
    v1 = pointers.signed(pointers.Pointer("web", NEW, 5, 100, expires=None), key)
    assert pointers.fingerprint(v1).startswith("topdeck-pointer-1;web;")
    assert b'"expires"' not in pointers.render_sidecar(v1)
    read = pointers.parse_sidecar(pointers.render_sidecar(v1), "web.json")
    assert pointers.verify_pointer(read, [key.public_key()]) == read
    v2 = pointers.signed(pointers.Pointer("web", NEW, 5, 100, expires=200), key)
    stripped = strict.loads(pointers.render_sidecar(v2))
    del stripped["expires"]
    with pytest.raises(PointerError, match="does not verify"):
        pointers.verify_pointer(pointers.parse_sidecar(json.dumps(stripped).encode(), "web.json"),
                                [key.public_key()])


# --- the freshness window --------------------------------------------------------------------------------------------


def test_an_expired_pointer_is_refused_by_the_plan_and_by_pointers_name(tmp_path):
    fleet = fleet_with(tmp_path, valid_for=3600)
    store_closure(fleet.cache, NEW)
    pointer = fleet.publish_pointer("web", str(NEW))
    assert (pointer.time, pointer.expires) == (int(NOW), int(NOW) + 3600)
    assert fleet.pointers()["web"].expires == int(NOW) + 3600
    later = fleet_with(tmp_path, valid_for=3600, clock=lambda: NOW + 3600)
    with pytest.raises(PointerError, match=r"^pointer web: expired at 2026-11-18T12:06:40Z "
                                           r"\(signed 2026-11-18T11:06:40Z\); publish it again$"):
        later.read_pointer("web")
    targets = targets_from_pointers(later.inventory.hosts, later.cache.listing(), [later.trusted_key()], NOW + 3600)
    assert any(str(t).startswith("pointer web: expired at") for t in targets.values())


def test_a_push_republishes_an_expired_pointer_that_names_the_toplevel(tmp_path):
    fleet = fleet_with(tmp_path, valid_for=60)
    store_closure(fleet.cache, NEW)
    fleet.publish_pointer("web", str(NEW))
    result = _publish_pointer(fleet.cache, "web", NEW, fleet.signing_key(), fleet.cache.listing(),
                              lambda: NOW + 61, 60)
    assert result.changed and result.serial == 2


def write_config(root, value: str) -> None:  # type: ignore[no-untyped-def]
    (root / "topdeck.toml").write_text(f'[cache]\ntype = "dir"\npath = "c"\n\n[deploy]\npointer_valid_for = {value}\n')
    (root / "web-1").mkdir()
    (root / "web-1" / "host.toml").write_text('address = "192.0.2.1"\npointer = "web"\n')


@pytest.mark.parametrize("value, seconds", [('"7d"', 7 * 86400), ('"12h"', 12 * 3600), ("3600", 3600), ("0", 0),
                                            ('"2w"', 14 * 86400)])
def test_pointer_valid_for_reads_durations_and_seconds(tmp_path, value, seconds):
    write_config(tmp_path, value)
    assert load_inventory(tmp_path).deploy.pointer_valid_for == seconds


@pytest.mark.parametrize("value", ['"soon"', "-5", '"7 days"', "true", '"0"'])
def test_a_bad_pointer_valid_for_is_one_line_naming_the_setting(tmp_path, value):
    write_config(tmp_path, value)
    with pytest.raises(InventoryError, match=r"deploy.*pointer_valid_for.*duration such as"):
        load_inventory(tmp_path)
