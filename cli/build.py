"""The `topdeck build HOST...` command: build hosts' toplevels with the local Nix, with a live log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from topdeck.cli.output import say, say_json
from topdeck.core.events import Event, LogLine
from topdeck.core.facade import Fleet
from topdeck.core.inventory import load_inventory


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    build = commands.add_parser(
        "build", help="build hosts' toplevels with a live log",
        description="Builds every selected host's toplevel with the local Nix, as its [build] in host.toml (or "
        "topdeck.toml's [build] flake) says: all flake hosts in one `nix build` (one evaluation per flake, Nix's "
        "own parallelism), each distinct Nix file once. Shows Nix's log as it goes (on stderr, each line prefixed "
        "with the host, or `flake` for the shared flake build), then prints one `HOST STORE-PATH` line per host "
        "built. Exits 1 if any build failed.",
    )
    build.add_argument("hosts", nargs="+", metavar="HOST",
                       help="host name, glob (web-*) or @tag; several may be given, or joined with commas")
    build.add_argument("-I", dest="include", action="append", default=[], metavar="PATH",
                       help="passed to nix-build as -I PATH, e.g. -I nixpkgs=/src/nixpkgs (repeatable)")
    build.add_argument("--json", action="store_true", help="print one JSON document {host: store path}")
    build.set_defaults(handler=build_command)


def build_command(args: argparse.Namespace) -> int:
    fleet = Fleet(load_inventory(args.inventory))
    hosts = fleet.hosts(args.hosts, what="build")
    nix_path_args = [part for path in args.include for part in ("-I", path)]
    built, failures = fleet.build_each(hosts, emit=_log_printer(sys.stderr), nix_path_args=nix_path_args)
    if args.json:
        say_json({name: str(path) for name, path in built.items()}, indent=1)
    else:
        for name, path in built.items():
            say(f"{name} {path}")
    for name, failure in failures.items():
        say(f"topdeck: error: {name}: {failure}", sys.stderr)
    return 1 if failures else 0


def _log_printer(stream: TextIO) -> Callable[[Event], None]:
    def emit(event: Event) -> None:
        if isinstance(event, LogLine):
            say(f"{event.host} | {event.text}", stream)

    return emit
