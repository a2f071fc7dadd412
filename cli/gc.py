"""The `topdeck gc` command: delete from the cache what no pointer version and no host needs any more."""

from __future__ import annotations

import argparse
import sys

import humanize

from topdeck.cli.output import EventPrinter, ask, say, say_json, say_lines, size, to_json
from topdeck.core.facade import Fleet
from topdeck.core.gc import DEFAULT_MIN_AGE, GcPlan, GcRequest, GcResult, monthly_cost
from topdeck.core.inventory import load_inventory

DEFAULT_KEEP = 3


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gc = commands.add_parser(
        "gc", help="delete what no pointer and no host needs from the cache",
        description="Keeps the closures of the last N versions of every pointer, of every system a host of the "
        "inventory runs, booted or keeps as a generation (each host is asked over SSH), and of everything uploaded "
        "within --min-age (a push may be under way); deletes the other manifests, narinfos and NARs, in that order, "
        "so an interrupted gc leaves a valid cache. Needs a B2 key that may delete (cache.gc_credentials_file, or "
        "B2_GC_APPLICATION_KEY_ID and B2_GC_APPLICATION_KEY); the deploy key cannot. Shows what it would free, "
        "in bytes and in B2 storage cost per month, and asks before deleting.",
    )
    gc.add_argument("--keep", type=int, default=DEFAULT_KEEP, metavar="N",
                    help=f"versions of each pointer whose closures stay (default {DEFAULT_KEEP}; at least 1)")
    gc.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    gc.add_argument("--skip-unreachable", action="store_true",
                    help="go on when a host cannot be asked what it runs (its systems are then not kept)")
    gc.add_argument("--min-age", type=_hours, default=DEFAULT_MIN_AGE, metavar="HOURS",
                    help=f"keep everything uploaded within this many hours (default {DEFAULT_MIN_AGE / 3600:g})")
    gc.add_argument("--history-days", type=_days, default=None, metavar="DAYS",
                    help="also delete the run history's records (runs/) older than this many days (default: keep "
                    "every record)")
    gc.add_argument("--yes", action="store_true", help="do not ask before deleting")
    gc.add_argument("--json", action="store_true", help="JSON lines: progress events, then the result")
    gc.set_defaults(handler=gc_command)


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not hours >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the minimum age cannot be negative")
    return hours * 3600


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of days cannot be negative")
    return days


def gc_command(args: argparse.Namespace) -> int:
    fleet = Fleet(load_inventory(args.inventory))
    printer = EventPrinter(json_lines=args.json)
    declined = []

    def confirm(plan: GcPlan) -> bool:
        printer.close()
        if not args.json:
            say_lines(describe_plan(plan).splitlines())
        if args.yes or ask(f"delete {len(plan.deletions)} files ({size(plan.freed_bytes)}) from the cache?"):
            return True
        declined.append(True)
        return False

    try:
        request = GcRequest(args.keep, dry_run=args.dry_run, skip_unreachable=args.skip_unreachable,
                            min_age=args.min_age, history_days=args.history_days)
        result = fleet.gc(request, confirm=confirm, emit=printer)
    finally:
        printer.close()
    if declined:
        say("nothing deleted", sys.stderr)
        return 1
    if args.json:
        say_json(result_json(result))
    else:
        if args.dry_run or not result.plan.deletions:
            say_lines(describe_plan(result.plan).splitlines())
        say_lines(summary(result).splitlines())
    return 0


def result_json(result: GcResult) -> dict[str, object]:
    plan = result.plan
    return {
        "event": "GcResult", "dry_run": result.dry_run, "deleted": result.deleted,
        "freed_bytes": result.freed_bytes, "seconds": result.seconds,
        "kept": [{"toplevel": str(s.toplevel), "reasons": list(s.reasons), "in_cache": s.in_cache}
                 for s in plan.kept],
        "kept_paths": plan.kept_paths, "files_before": plan.files, "bytes_before": plan.bytes,
        "to_delete": len(plan.deletions), "bytes_to_free": plan.freed_bytes,
        "monthly_cost_before": monthly_cost(plan.bytes),
        "monthly_cost_after": monthly_cost(plan.bytes - result.freed_bytes),
        "transactions": to_json(result.transactions),
    }


def describe_plan(plan: GcPlan) -> str:
    after = plan.bytes - plan.freed_bytes
    lines = [f"keeping {len(plan.kept)} systems ({plan.kept_paths} store paths):"]
    for system in plan.kept:
        note = "" if system.in_cache else " (not in the cache)"
        lines.append(f"  {system.toplevel.name}{note}: {', '.join(system.reasons)}")
    lines.append(f"cache now: {plan.files} files, {size(plan.bytes)} ({_cost(plan.bytes)} a month)")
    lines.append(f"to delete: {len(plan.deletions)} files, {size(plan.freed_bytes)} "
                 f"({_cost(plan.freed_bytes)} a month)")
    lines.append(f"after: {size(after)} ({_cost(after)} a month)")
    return "\n".join(lines)


def summary(result: GcResult) -> str:
    t = result.transactions
    took = humanize.precisedelta(result.seconds, minimum_unit="milliseconds", format="%0.1f")
    if result.dry_run:
        done = "dry run: nothing deleted"
    elif not result.plan.deletions:
        done = "nothing to delete"
    else:
        done = f"deleted {result.deleted} files, freed {size(result.freed_bytes)}"
    return f"{done} in {took}; B2 transactions: class A {t.a}, class B {t.b}, class C {t.c}"


def _cost(nbytes: int) -> str:
    cost = monthly_cost(nbytes)
    if 0 < cost < 0.0001:
        return "under $0.0001"
    return f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"
