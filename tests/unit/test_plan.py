"""core.plan without hosts: a host's plan from what its probe read, groups of identical changes, the probe's answer
read strictly, and the manifests a plan downloads (the probe on real hosts is in tests/lab/test_plan_lab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.manifest import Manifest, ManifestPath, manifest_name, render_manifest
from topdeck.core.errors import CacheError, TopdeckError
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.plan import (
    B2_FREE_CLASS_B_PER_DAY,
    HostPlan,
    Plan,
    ProbeState,
    group,
    host_plan,
    load_manifests,
    parse_probe,
)
from topdeck.core.vocabulary import PlanStatus


def path(name: str, digit: str) -> StorePath:
    return parse_store_path(f"/nix/store/{digit * 32}-{name}")


LIBC, OLD_APP, NEW_APP = path("glibc-2.40", "1"), path("app-1.0", "2"), path("app-2.0", "3")
OLD, NEW = path("nixos-system-web-24.05", "4"), path("nixos-system-web-24.11", "5")
MANIFEST = Manifest(NEW, (ManifestPath(LIBC, 30_000, 9_000, ()), ManifestPath(NEW_APP, 20_000, 5_000, (LIBC,)),
                          ManifestPath(NEW, 1_000, 400, (LIBC, NEW_APP))))
OLD_CLOSURE = {LIBC: 30_000, OLD_APP: 10_000, OLD: 1_000}


def state(current: StorePath | None = OLD, missing=(NEW_APP, NEW), free: int = 10**9) -> ProbeState:
    return ProbeState(current, current, 3, free, frozenset(missing), OLD_CLOSURE if current == OLD else {})


def test_a_change_counts_only_what_the_host_lacks() -> None:
    plan = host_plan("web-1", NEW, MANIFEST, state())
    assert plan.status is PlanStatus.CHANGE and plan.planned
    assert (plan.fetch_paths, plan.download_bytes, plan.unpacked_bytes) == (2, 5_400, 21_000)
    assert plan.class_b == 4 and plan.fits and plan.space_note == ""
    assert plan.diff is not None and [c.name for c in plan.diff.shown_changes] == ["app", "nixos-system-web"]


def test_a_host_on_its_target_is_up_to_date() -> None:
    plan = host_plan("web-1", NEW, MANIFEST, ProbeState(NEW, NEW, 4, 10**9, frozenset(), {}))
    assert plan.status is PlanStatus.UP_TO_DATE and plan.fetch_paths == 0


def test_a_fetch_larger_than_the_free_space_does_not_fit_and_says_so() -> None:
    plan = host_plan("web-1", NEW, MANIFEST, state(free=20_000))
    assert not plan.fits
    assert plan.space_note == "/nix has 19.5 KiB free, the fetch unpacks to 20.5 KiB"
    assert Plan((plan,)).warnings == (f"web-1: {plan.space_note}: the deploy would stop there",)


def test_hosts_with_the_same_change_share_a_group_and_unplanned_hosts_none() -> None:
    same_a, same_b = host_plan("web-1", NEW, MANIFEST, state()), host_plan("web-2", NEW, MANIFEST, state())
    fresh = host_plan("web-3", NEW, MANIFEST, state(current=None, missing=(LIBC, NEW_APP, NEW)))
    broken = HostPlan("web-4", PlanStatus.UNREACHABLE, "web-4: connection refused")
    groups = group((same_a, fresh, broken, same_b))
    assert [g.hosts for g in groups] == [("web-1", "web-2"), ("web-3",)]
    plan = Plan((same_a, fresh, broken, same_b), groups)
    assert not plan.ok and plan.class_b == 4 + 6 + 4 and not plan.exceeds_free_class_b


def test_a_plan_that_costs_more_than_a_days_free_downloads_says_so() -> None:
    many = HostPlan("big", PlanStatus.CHANGE, fetch_paths=B2_FREE_CLASS_B_PER_DAY // 2 + 1)
    assert Plan((many,)).exceeds_free_class_b
    assert Plan((many,)).warnings == ("the deploy would cost about 2502 B2 class B transactions, more than the 2500 "
                                      "free per day",)


def test_the_probe_answer_is_read() -> None:
    answer = "\n".join([f"current\t{OLD}", "booted\t", "generation\t3", "free_kib\t2048", f"missing\t{NEW}",
                        f"have\t{LIBC}\t30000", "future-field\tignored"])
    probed = parse_probe(answer, "web-1")
    assert probed == ProbeState(OLD, None, 3, 2048 * 1024, frozenset({NEW}), {LIBC: 30000})


@pytest.mark.parametrize(("answer", "message"), [
    ("error\tno /nix/var/nix/profiles/system", "web-1: no /nix/var/nix/profiles/system"),
    (f"have\t{LIBC}\tbusy", f"web-1: the probe could not read the size of {LIBC} (is the host's Nix busy?)"),
    ("current\t/tmp/x\nfree_kib\t1", "web-1: the probe's answer is malformed ("),
    ("generation\t1", "web-1: the probe's answer is malformed (free_kib '' is not a number)"),
    ("free_kib\t9007199254740993", "web-1: the probe's answer is malformed (free_kib '9007199254740993' is not"),
])
def test_a_bad_probe_answer_is_one_line_naming_the_host(answer: str, message: str) -> None:
    with pytest.raises(TopdeckError) as caught:
        parse_probe(answer, "web-1")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_manifests_are_downloaded_once_per_target_and_a_missing_one_says_push_it(tmp_path: Path) -> None:
    cache = DirCache(tmp_path, "file:///x")
    cache.put_bytes(manifest_name(NEW), render_manifest(MANIFEST), content_type="application/json")
    assert load_manifests({NEW}, cache) == {NEW: MANIFEST}
    with pytest.raises(CacheError, match=f"^{OLD} is not in the cache \\(no manifest\\): push it first$"):
        load_manifests({OLD}, cache)
