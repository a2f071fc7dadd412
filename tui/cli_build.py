"""The `topdeck build HOST...` command: build hosts' toplevels with the local Nix, with a live log."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TextIO

from topdeck.core import localnix
from topdeck.core.errors import InventoryError, NixError
from topdeck.core.inventory import Host, Inventory, load_inventory, select_hosts


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    build = commands.add_parser(
        "build", help="build hosts' toplevels with a live log",
        description="Builds each selected host's toplevel with the local Nix, as its [build] in host.toml "
        "says, showing nix-build's log as it goes (on stderr, each line prefixed with the host), then prints "
        "one `HOST STORE-PATH` line per host built. Exits 1 if any build failed.",
    )
    build.add_argument("hosts", nargs="+", metavar="HOST",
                       help="host name, glob (web-*) or @tag; several may be given, or joined with commas")
    build.add_argument("-I", dest="include", action="append", default=[], metavar="PATH",
                       help="passed to nix-build as -I PATH, e.g. -I nixpkgs=/src/nixpkgs (repeatable)")
    build.add_argument("--json", action="store_true", help="print one JSON document {host: store path}")
    build.set_defaults(handler=build_command)


def build_command(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    hosts = _selected(inventory, args.hosts)
    nix_path_args = [part for path in args.include for part in ("-I", path)]
    built: dict[str, str] = {}
    failures: list[str] = []
    for host in hosts:
        assert host.build is not None
        try:
            path = localnix.build(host.build, log=_prefixed(host.name, sys.stderr), nix_path_args=nix_path_args)
        except NixError as error:
            failures.append(f"{host.name}: {error}")
            continue
        built[host.name] = str(path)
    if args.json:
        print(json.dumps(built, indent=1))
    else:
        for name, path in built.items():
            print(f"{name} {path}")
    for failure in failures:
        print(f"topdeck: error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _selected(inventory: Inventory, selectors: list[str]) -> tuple[Host, ...]:
    """The hosts the selectors name, each of which must have a [build]; no build starts otherwise."""
    hosts = select_hosts(inventory, selectors, what="build")
    for host in hosts:
        if host.build is None:
            raise InventoryError(f"{host.source}: host {host.name} has no [build] section, so topdeck "
                                 "cannot build its toplevel")
    return hosts


def _prefixed(name: str, stream: TextIO) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"{name} | {line}", file=stream, flush=True)

    return log
