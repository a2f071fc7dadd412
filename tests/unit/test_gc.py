"""core.gc on a folder cache that core.cache.push filled (no hosts, no B2): what a plan keeps and deletes, in which
order, that deleting leaves a cache a push finds whole, and the price (hosts and B2: tests/lab/test_gc_lab.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_push import APP, LIBC, OTHER_TOP, SECRET, TOP, closure_of, nar_source

from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.manifest import manifest_name
from topdeck.core.cache.presence import nar_name, narinfo_name
from topdeck.core.cache.push import push
from topdeck.core.errors import GcError
from topdeck.core.gc import check_keep, collect, monthly_cost, plan_gc
from topdeck.core.nix.store import StorePath

LATER = time.time() + 10 * 24 * 3600  # every file older than the minimum age


@pytest.fixture
def cache(tmp_path: Path) -> DirCache:
    cache = DirCache(tmp_path / "cache", "file:///cache")
    push(TOP.path, cache, SECRET, pointer="web", closure_of=closure_of, nar_source=nar_source)
    push(OTHER_TOP.path, cache, SECRET, pointer="db", closure_of=closure_of, nar_source=nar_source)
    return cache


def test_a_plan_deletes_only_what_no_kept_system_needs_manifests_first_nars_last(cache: DirCache) -> None:
    plan = plan_gc(cache, {TOP.path: ["pointer web (serial 1)"]}, cache.all_versions(), min_age=3600, now=LATER)
    assert [name for name in (e.name for e in plan.deletions)] == [
        manifest_name(OTHER_TOP.path), narinfo_name(OTHER_TOP.path), nar_name(OTHER_TOP)]
    (kept,) = plan.kept
    assert kept.toplevel == TOP.path and kept.in_cache and kept.reasons == ("pointer web (serial 1)",)
    assert plan.kept_paths == 3 and plan.files == len(cache.all_versions())
    assert plan.freed_bytes == sum(e.size for e in plan.deletions) > 0


def test_after_collecting_a_push_of_the_kept_system_finds_it_whole(cache: DirCache) -> None:
    plan = plan_gc(cache, {TOP.path: ["web-1 current"]}, cache.all_versions(), min_age=3600, now=LATER)
    deleted, freed = collect(cache, plan)
    assert (deleted, freed) == (len(plan.deletions), plan.freed_bytes)
    names = set(cache.listing())
    assert {narinfo_name(i.path) for i in (LIBC, APP, TOP)} <= names and narinfo_name(OTHER_TOP.path) not in names
    again = push(TOP.path, cache, SECRET, closure_of=closure_of, nar_source=nar_source)
    assert again.paths_uploaded == 0
    back = push(OTHER_TOP.path, cache, SECRET, closure_of=closure_of, nar_source=nar_source)
    assert (back.paths_uploaded, back.paths_skipped) == (1, 1)  # glibc stayed: only the db toplevel comes back


def test_young_files_stay_whatever_refers_to_them(cache: DirCache) -> None:
    plan = plan_gc(cache, {}, cache.all_versions(), min_age=3600, now=time.time())
    assert plan.deletions == () and plan.kept == ()


def test_a_system_the_cache_never_held_is_kept_as_not_in_the_cache(cache: DirCache) -> None:
    missing = StorePath("9" * 32, "nixos-system-never-pushed")
    plan = plan_gc(cache, {missing: ["web-9 booted"], TOP.path: ["x"], OTHER_TOP.path: ["y"]}, cache.all_versions(),
                   min_age=0, now=LATER)
    assert [(k.toplevel.name, k.in_cache) for k in plan.kept] == [
        ("nixos-system-web", True), ("nixos-system-db", True), ("nixos-system-never-pushed", False)]
    assert plan.deletions == ()


def test_the_monthly_price_and_the_least_to_keep() -> None:
    assert monthly_cost(0) == 0 and monthly_cost(10**9) == pytest.approx(0.006)
    check_keep(1)
    with pytest.raises(GcError) as caught:
        check_keep(0)
    assert (caught.value.setting, str(caught.value)) == (
        "keep", "keep 0: must keep at least the current version of each pointer (1 or more)")
