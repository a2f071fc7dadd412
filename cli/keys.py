"""`topdeck upload-keys [--on SELECTOR]`: the inventory's [[keys]] to hosts over SSH, outside any deploy."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from topdeck.cli.output import EventPrinter, add_selector_option, open_fleet, say, say_json


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "upload-keys", help="upload the inventory's [[keys]] (secrets) to hosts over SSH",
        description="Reads every key of the selected hosts ([[keys]] in topdeck.toml and host.toml: a file, or a "
        "command's stdout) on this machine first; one that cannot be read stops everything before any host is "
        "touched. Then, on each host, writes each key (pre- and post-activation alike) to its dest_dir, through "
        "the SSH session's stdin into a temporary file that already has the key's owner, group and mode, renamed "
        "over the key. The content never goes on a command line, into a log, a run record, --json or the cache. "
        "Exits 1 unless every host got every key.",
    )
    add_selector_option(parser, help="hosts (default: all): a name, a glob (web-*) or a tag (@db)")
    parser.add_argument("--json", action="store_true", help="one JSON document: each host's keys, or its error")
    parser.set_defaults(handler=upload_keys_command)


def upload_keys_command(args: argparse.Namespace) -> int:
    fleet = open_fleet(args.inventory)
    printer = EventPrinter(json_lines=False)
    try:
        results = fleet.upload_keys(args.on, emit=(lambda event: None) if args.json else printer)
    finally:
        printer.close()
    if args.json:
        say_json({"ok": all(not r.error for r in results), "hosts": [dataclasses.asdict(r) for r in results]})
    for result in results:
        if result.error:
            say(f"topdeck: error: {result.error}", sys.stderr)
    return 0 if all(not r.error for r in results) else 1
