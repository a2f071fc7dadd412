"""core.planreport: what both front ends show of a plan, built once from it (groups, closures, unplanned hosts)."""

from __future__ import annotations

from test_plan import MANIFEST, NEW, OLD_CLOSURE, host_plan, state

from topdeck.core.nix.diff import ADDED, CHANGED, REMOVED, UPGRADED, ClosureDiff, PackageChange
from topdeck.core.plan import HostPlan, Plan, group
from topdeck.core.planreport import changes_by_kind, plan_view, reason
from topdeck.core.vocabulary import PlanStatus


def test_a_group_shows_the_closure_before_and_after_and_the_fetch() -> None:
    web = (host_plan("web-1", NEW, MANIFEST, state()), host_plan("web-2", NEW, MANIFEST, state()))
    lost = HostPlan("db-1", PlanStatus.UNREACHABLE, "connection refused")
    key = HostPlan("db-2", PlanStatus.HOST_KEY, "db-2: unknown host key SHA256:abc")
    view = plan_view(Plan((*web, lost, key), group(web)), fetch_url="https://cache.example/file/b")
    (only,) = view.groups
    assert only.hosts == ("web-1", "web-2") and only.target == NEW and not only.up_to_date
    assert (only.closure.paths_before, only.closure.paths_after) == (3, 3)
    assert (only.closure.bytes_before, only.closure.bytes_after) == (sum(OLD_CLOSURE.values()), 51_000)
    assert only.closure.bytes_delta == 51_000 - 41_000
    assert (only.fetch_paths, only.download_bytes, only.unpacked_bytes, only.fits) == (2, 5_400, 21_000, True)
    assert [(u.host, u.reason, u.host_key) for u in view.unplanned] == [
        ("db-1", "db-1: connection refused", False), ("db-2", "db-2: unknown host key SHA256:abc", True)]
    assert view.class_b == 8 and view.fetch_url == "https://cache.example/file/b"


def test_a_reason_names_its_host_once() -> None:
    assert reason(HostPlan("web-1", PlanStatus.ERROR, "pointer web not found")) == "web-1: pointer web not found"
    assert reason(HostPlan("web-1", PlanStatus.ERROR, "web-1: refused")) == "web-1: refused"


def test_changes_grouped_by_kind_in_order_rebuilds_only_when_asked() -> None:
    changes = (
        PackageChange("zlib", ("1.3",), (), -80_000, REMOVED),
        PackageChange("bash", ("5.1",), ("5.2",), 9_000, UPGRADED),
        PackageChange("rebuilt", ("1.0",), ("1.0",), 0, CHANGED),  # same versions, no size: not shown
        PackageChange("hello", (), ("2.12",), 60_000, ADDED),
    )
    diff = ClosureDiff(changes, 0, 0, (), ())
    assert [(kind, [c.name for c in group]) for kind, group in changes_by_kind(diff)] == [
        ("upgraded", ["bash"]), ("added", ["hello"]), ("removed", ["zlib"])]
    assert changes_by_kind(diff, rebuilds=True)[-1][0] == "changed"
    assert changes_by_kind(ClosureDiff((), 0, 0, (), ())) == []
