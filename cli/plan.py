"""The `topdeck plan` command: per host, before anything happens, what changes and what it downloads."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence

import humanize

from topdeck.cli.output import EventPrinter, add_selector_option, open_fleet, say, say_json, say_lines, size
from topdeck.core.keys import KeyPlan, grouped
from topdeck.core.nix.diff import render_diff_closures
from topdeck.core.plan import B2_FREE_CLASS_B_PER_DAY, HostPlan, Plan
from topdeck.core.planreport import GroupView, delta_line, plan_view, reason


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "plan", help="what a deploy would do, per host (changes nothing)",
        description="For each selected host: the closure diff between what it runs and its target (grouped like "
        "`nix store diff-closures`), how many paths it would fetch, the download and unpacked sizes against its "
        "free disk, and the B2 transactions the pulls would cost. One SSH round trip per host; nothing changes. "
        "Exits 1 if a host could not be planned.",
    )
    add_selector_option(parser)
    parser.add_argument("--target", metavar="PATH", help="plan towards this store path, or "
                        "pointer:NAME (every host deploys through pointer NAME), instead of the hosts' own pointers")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.set_defaults(handler=plan_command)


def plan_command(args: argparse.Namespace) -> int:
    fleet = open_fleet(args.inventory)
    printer = EventPrinter(json_lines=False)
    try:
        fleet_plan = fleet.plan(args.on, args.target, emit=printer)
    finally:
        printer.close()
    result = fleet_plan.plan
    if args.json:
        say_json(plan_json(result, fleet_plan.fetch_url, fleet_plan.keys), indent=1)
    else:
        say_lines(render_plan(result, fleet_plan.fetch_url, fleet_plan.keys))
    for host in result.hosts:  # the plan is on stdout; what failed is also on stderr, one line per host
        if not host.planned:
            say(f"topdeck: error: {reason(host)}", sys.stderr)
    return 0 if result.ok else 1


def render_plan(result: Plan, fetch_url: str = "", keys: Mapping[str, Sequence[KeyPlan]] | None = None) -> list[str]:
    view = plan_view(result, fetch_url)
    lines: list[str] = []
    for group in view.groups:
        lines.extend(_render_group(group))
        lines.append("")
    lines.extend(render_keys(keys or {}))
    lines.extend(host.reason for host in view.unplanned)
    if view.fetch_url:
        lines.append(f"hosts fetch from {view.fetch_url}")
    lines.append(f"B2: about {view.class_b} class B transactions for the pulls "
                 f"(free allowance {humanize.intcomma(view.free_class_b)} a day)")
    lines.extend(f"warning: {note}" for note in view.warnings)
    return lines


def render_keys(keys: Mapping[str, Sequence[KeyPlan]]) -> list[str]:
    """The keys each host would receive (hosts with the same keys together) and whether each changed."""
    lines = []
    for hosts, plans in grouped(keys):
        lines.append(f"{', '.join(hosts)}: keys over SSH")
        lines.extend(f"  {plan.name} → {plan.dest} ({plan.upload}, {plan.change})" for plan in plans)
    return [*lines, ""] if lines else []


def _render_group(group: GroupView) -> list[str]:
    current = group.current.name if group.current else "nothing"
    lines = [f"{', '.join(group.hosts)}: {current} → {group.target.name}"]
    if group.up_to_date:
        return [*lines, "  already on the target: nothing to fetch"]
    lines.extend(f"  {line}" for line in render_diff_closures(group.diff) or ["no package changes"])
    closure = group.closure
    lines.append(f"  closure: {closure.paths_before} → {closure.paths_after} paths, {size(closure.bytes_before)} → "
                 f"{size(closure.bytes_after)}")
    fits = "" if group.fits else "  DOES NOT FIT"
    lines.append(f"  fetch: {group.fetch_paths} paths, {size(group.download_bytes)} download, "
                 f"{size(group.unpacked_bytes)} unpacked; {size(group.free_bytes)} free on /nix{fits}")
    if delta_line(group):
        lines.append(f"  {delta_line(group)}")
    return lines


def plan_json(result: Plan, fetch_url: str = "", keys: Mapping[str, Sequence[KeyPlan]] | None = None
              ) -> dict[str, object]:
    return {
        "keys": {host: [dataclasses.asdict(plan) for plan in plans] for host, plans in (keys or {}).items()},
        "ok": result.ok,
        "fetch_url": fetch_url,
        "hosts": [_host_json(host) for host in result.hosts],
        "groups": [list(group.hosts) for group in result.groups],
        "b2_class_b": result.class_b,
        "b2_free_class_b_per_day": B2_FREE_CLASS_B_PER_DAY,
        "warnings": list(result.warnings),
    }


def _host_json(host: HostPlan) -> dict[str, object]:
    document: dict[str, object] = {"host": host.host, "status": host.status, "reason": host.reason,
                                   "target": str(host.target) if host.target else None}
    if host.state is None or host.diff is None:
        return document
    document.update(
        current=str(host.state.current) if host.state.current else None,
        booted=str(host.state.booted) if host.state.booted else None,
        generation=host.state.generation,
        free_bytes=host.state.free_bytes,
        fetch_paths=host.fetch_paths,
        download_bytes=host.download_bytes,
        unpacked_bytes=host.unpacked_bytes,
        fits=host.fits,
        b2_class_b=host.class_b,
        delta_bytes=host.delta.size if host.delta is not None else 0,
        size_before=host.diff.size_before,
        size_after=host.diff.size_after,
        paths_added=len(host.diff.paths_added),
        paths_removed=len(host.diff.paths_removed),
        changes=[{"name": c.name, "kind": c.kind, "old": list(c.old_versions), "new": list(c.new_versions),
                  "size_delta": c.size_delta} for c in host.diff.changes if c.shown],
        diff_closures=render_diff_closures(host.diff),
    )
    return document


