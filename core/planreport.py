"""What a plan shows, built once for both front ends: per group of identical hosts the change, the closure before
and after, the fetch against the free disk; the hosts that could not be planned, with why; the B2 line and the
warnings. Pure data: the CLI draws it as text, the TUI as Rich."""

from __future__ import annotations

from dataclasses import dataclass

from humanize import naturalsize

from topdeck.core.nix.diff import ClosureDiff, PackageChange
from topdeck.core.nix.store import StorePath
from topdeck.core.plan import B2_FREE_CLASS_B_PER_DAY, HostPlan, Plan
from topdeck.core.vocabulary import PlanStatus

KIND_ORDER = ("upgraded", "downgraded", "added", "removed", "changed")


@dataclass(frozen=True)
class Closure:
    """A host's closure before and after the change: paths and bytes."""

    paths_before: int
    paths_after: int
    bytes_before: int
    bytes_after: int

    @property
    def bytes_delta(self) -> int:
        return self.bytes_after - self.bytes_before


@dataclass(frozen=True)
class GroupView:
    """Hosts whose change is identical, and that change."""

    hosts: tuple[str, ...]
    current: StorePath | None
    target: StorePath
    up_to_date: bool
    diff: ClosureDiff
    closure: Closure
    fetch_paths: int
    download_bytes: int
    unpacked_bytes: int
    free_bytes: int
    fits: bool
    delta_bytes: int = 0  # the hosts fetch one delta object of this size instead of path by path (0: no delta)


@dataclass(frozen=True)
class Unplanned:
    """A host that could not be planned: its one line (naming the host) and its status."""

    host: str
    status: str
    reason: str

    @property
    def host_key(self) -> bool:
        return self.status == PlanStatus.HOST_KEY


@dataclass(frozen=True)
class PlanView:
    groups: tuple[GroupView, ...]
    unplanned: tuple[Unplanned, ...]
    fetch_url: str
    class_b: int
    warnings: tuple[str, ...]
    free_class_b: int = B2_FREE_CLASS_B_PER_DAY


def plan_view(plan: Plan, fetch_url: str = "") -> PlanView:
    return PlanView(tuple(group_view(group.hosts, group.plan) for group in plan.groups),
                    tuple(Unplanned(h.host, h.status, reason(h)) for h in plan.hosts if not h.planned),
                    fetch_url, plan.class_b, tuple(plan.warnings))


def group_view(hosts: tuple[str, ...], host: HostPlan) -> GroupView:
    assert host.state is not None and host.diff is not None and host.target is not None
    diff = host.diff
    before = len(host.state.closure)
    closure = Closure(before, before + len(diff.paths_added) - len(diff.paths_removed), diff.size_before,
                      diff.size_after)
    return GroupView(hosts, host.state.current, host.target, host.status == PlanStatus.UP_TO_DATE, diff, closure,
                     host.fetch_paths, host.download_bytes, host.unpacked_bytes, host.state.free_bytes, host.fits,
                     host.delta.size if host.delta is not None else 0)


def delta_line(group: GroupView) -> str:
    """The line both front ends show for hosts that take the delta object ("" for hosts that fetch path by path)."""
    if not group.delta_bytes:
        return ""
    return f"fetched through the delta object: one request of {naturalsize(group.delta_bytes, binary=True)}"


def reason(host: HostPlan) -> str:
    """Why a host was not planned, as one line that names the host."""
    return host.reason if host.reason.startswith(host.host) else f"{host.host}: {host.reason}"


def changes_by_kind(diff: ClosureDiff, *, rebuilds: bool = False) -> list[tuple[str, list[PackageChange]]]:
    """The diff's shown changes (and, with `rebuilds`, the rebuilt packages) grouped by kind, in KIND_ORDER."""
    shown = [c for c in diff.changes if c.shown or (rebuilds and c.kind == "changed")]
    grouped = [(kind, [c for c in shown if c.kind == kind]) for kind in KIND_ORDER]
    return [(kind, changes) for kind, changes in grouped if changes]
