"""The `topdeck history` command: every operator's runs, from the signed records in the bucket."""

from __future__ import annotations

import argparse
from collections import Counter

from topdeck.cli.output import add_selector_option, open_fleet, say, say_json, to_json
from topdeck.core.history import HistoryEntry, RunRecord, utc


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    history = commands.add_parser(
        "history", help="the fleet's shared run history: who deployed, rolled back, rebooted or published what",
        description="Every deploy, rollback, reboot, pointer publish and pointer rollback by any operator, newest "
        "first, from the signed records in the bucket (runs/): who, when, what (pointer, serial, store path, mode) "
        "and each host's outcome. A record whose signature does not verify with the trusted key is shown as "
        "unverified, never as history. Costs one listing (class C) and one download (class B) per record this "
        "machine has not read before.",
    )
    add_selector_option(history, "only runs on these hosts, and publishes of their pointers")
    history.add_argument("--json", action="store_true", help="one JSON document: a list of records")
    history.set_defaults(handler=history_command)


def history_command(args: argparse.Namespace) -> int:
    entries = open_fleet(args.inventory).run_history(args.on)
    if args.json:
        say_json([entry_json(entry) for entry in entries], indent=1)
        return 0
    if not entries:
        say("no runs recorded in the bucket yet")
    for entry in entries:
        if entry.record is None or not entry.verified:
            say(f"{utc(entry.uploaded_ms / 1000)}  {entry.name}: {entry.problem}")
            continue
        say(f"{utc(entry.record.started)}  {entry.record.who}  {describe(entry.record)}")
        for host in entry.record.hosts:
            say(f"    {host.host}  {host.outcome}  {utc(host.finished) if host.finished else '-'}"
                f"{f'  {host.reason}' if host.reason and host.outcome != 'done' else ''}")
    return 0


def describe(record: RunRecord) -> str:
    what = [record.kind]
    if record.mode:
        what.append(record.mode)
    if record.pointer:
        what.append(f"{record.pointer} #{record.serial}" if record.serial else record.pointer)
    if record.path:
        what.append(record.path)
    if record.hosts:
        counts = Counter(host.outcome for host in record.hosts)
        what.append(f"{len(record.hosts)} host{'s' if len(record.hosts) != 1 else ''}: "
                    + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())))
    return "  ".join(what)


def entry_json(entry: HistoryEntry) -> object:
    return {"name": entry.name, "uploaded_ms": entry.uploaded_ms, "verified": entry.verified,
            "problem": entry.problem, "record": to_json(entry.record) if entry.record else None}
