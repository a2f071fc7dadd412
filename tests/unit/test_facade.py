"""core/facade.py's own rules, against a folder cache and fixed run records (no SSH, no Nix): which hosts a retry
takes, which keys sign and are trusted, pointer publish and rollback; and core/planreport.py's plan model."""

from __future__ import annotations

import dataclasses

import pytest
from tui_fakes import WEB_NEW, WEB_OLD, FakeBackend, fake_inventory, toplevel

from topdeck.core.cache.manifest import Manifest, ManifestPath, manifest_name, render_manifest
from topdeck.core.cache.presence import narinfo_name
from topdeck.core.errors import CacheError, DeployError, InventoryError
from topdeck.core.facade import NEVER_DEPLOYED, Fleet, explained
from topdeck.core.inventory import CacheConfig, Inventory
from topdeck.core.nix.signing import generate_keypair, write_secret_key
from topdeck.core.operations import HostStatus
from topdeck.core.planreport import changes_by_kind, plan_view
from topdeck.core.vocabulary import HostState


def fleet_with(tmp_path, failed: tuple[str, ...] = (), signing: bool = True) -> Fleet:
    key_file = tmp_path / "cache.sec"
    if signing:
        secret, _ = generate_keypair("test-1")
        write_secret_key(key_file, secret)
    cache = CacheConfig(kind="dir", path=tmp_path / "cache", url="http://x", signing_key=key_file if signing else None)
    (tmp_path / "cache").mkdir(exist_ok=True)
    inventory: Inventory = dataclasses.replace(fake_inventory(root=tmp_path), cache=cache)
    return Fleet(inventory, failed_hosts=lambda root: failed, clock=lambda: 1_795_000_000.0)


def store_closure(cache, path) -> None:  # type: ignore[no-untyped-def]
    """The cache holds `path` as a push leaves it: its manifest and the narinfo of every path of it."""
    cache.put_bytes(manifest_name(path), render_manifest(Manifest(path, (ManifestPath(path, 1, 1, ()),))),
                    content_type="application/json")
    cache.put_bytes(narinfo_name(path), b"StorePath: x\n", content_type="text/x-nix-narinfo")


def test_a_retry_takes_the_failed_hosts_among_those_selected(tmp_path):
    assert fleet_with(tmp_path, ("web-1", "web-2")).retry_hosts() == ["web-1", "web-2"]
    assert fleet_with(tmp_path, ("web-1", "db-1")).retry_hosts(["web-*"]) == ["web-1"]


def test_a_retry_refuses_no_failures_a_stranger_and_an_empty_selection(tmp_path):
    with pytest.raises(DeployError, match="no failed hosts"):
        fleet_with(tmp_path).retry_hosts()
    with pytest.raises(DeployError, match="names host '\\*'"):  # a record must not widen the retry
        fleet_with(tmp_path, ("*",)).retry_hosts()
    with pytest.raises(DeployError, match="none of these hosts failed"):
        fleet_with(tmp_path, ("web-1",)).retry_hosts(["db-1"])


def test_one_key_rule_for_signing_and_trust(tmp_path):
    fleet = fleet_with(tmp_path)
    assert fleet.trusted_key() == fleet.signing_key().public_key()
    (tmp_path / "none").mkdir()
    unsigned = fleet_with(tmp_path / "none", signing=False)
    with pytest.raises(InventoryError, match="cache.signing_key is not set"):
        unsigned.signing_key()
    with pytest.raises(InventoryError, match="set cache.public_key or cache.public_key_file"):
        unsigned.trusted_key()


def test_publish_needs_the_path_in_the_cache_and_a_rollback_republishes_the_previous_target(tmp_path):
    fleet = fleet_with(tmp_path)
    old, new = toplevel(WEB_OLD), toplevel(WEB_NEW)
    with pytest.raises(CacheError, match="not in the cache .no manifest.: push it first; nothing published"):
        fleet.publish_pointer("web", str(old))
    for path in (old, new):
        store_closure(fleet.cache, path)
    fleet.publish_pointer("web", str(old))
    fleet.publish_pointer("web", str(new))
    rollback = fleet.pointer_rollback("web")
    assert (rollback.target, rollback.now) == (old, str(new))
    published = fleet.rollback_pointer(rollback)
    assert (published.path, published.serial) == (old, 3)
    assert fleet.pointers()["web"].path == str(old)
    assert fleet.read_pointer("web").serial == 3  # signed with the key the hosts trust


def test_a_drifted_host_no_deploy_reached_says_why():
    never = HostStatus("web-1", HostState.DRIFTED, "/nix/store/a-x", desired="/nix/store/b-y")
    assert explained(never).reason == NEVER_DEPLOYED
    deployed = dataclasses.replace(never, last_run="2026-11-24 10:00 done")
    assert explained(deployed).reason == ""
    assert explained(dataclasses.replace(never, status=HostState.BEHIND)).reason == ""


def test_the_plan_model_groups_hosts_and_does_the_closure_arithmetic_once():
    fleet_plan = FakeBackend().fleet_plan(["web-1", "db-1", "web-2"])
    view = plan_view(fleet_plan.plan, "http://cache")
    web = next(group for group in view.groups if "web-1" in group.hosts)
    assert not web.up_to_date and web.target == toplevel(WEB_NEW)
    assert web.closure.paths_before == len(WEB_OLD)
    assert web.closure.paths_after == len(WEB_NEW)
    assert web.closure.bytes_delta == sum(WEB_NEW.values()) - sum(WEB_OLD.values())
    assert next(group for group in view.groups if "db-1" in group.hosts).up_to_date
    assert [(u.host, u.reason) for u in view.unplanned] == [("web-2", "web-2 (127.0.0.12:22): connection refused")]
    assert view.class_b == fleet_plan.plan.class_b and view.fetch_url == "http://cache"
    kinds = [kind for kind, _ in changes_by_kind(web.diff)]
    assert kinds == sorted(kinds, key=["upgraded", "downgraded", "added", "removed", "changed"].index) and kinds
