"""The `topdeck push` and `topdeck pointers` commands."""

from __future__ import annotations

import argparse
import sys
import time

import humanize

from topdeck.cli.output import EventPrinter, ago, ask, say, say_json, say_lines, selector, size, to_json, until
from topdeck.core.cache.pointers import PointerVersion, check_name, is_expired
from topdeck.core.errors import CacheError, InventoryError
from topdeck.core.events import PublishedPointer, PushResult
from topdeck.core.facade import Fleet
from topdeck.core.inventory import load_inventory
from topdeck.core.nix.store import StorePath, parse_store_path


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    push_parser = commands.add_parser(
        "push", help="push a closure to the cache, then publish a pointer to it",
        description="Uploads what the cache lacks of a toplevel's closure (what is there is read from the manifests "
        "and looked up by name, never a listing of the whole cache; then the missing NARs "
        "zstd-compressed and in parallel, then their signed narinfos, then the closure manifest), and last "
        "publishes the pointer. TARGET is a store path, or a host of the inventory whose toplevel is built first; "
        "--on SELECTOR builds and pushes many hosts as one release (hosts sharing a pointer must build one "
        "toplevel). "
        "Safe to interrupt: a re-run uploads only what is missing.",
    )
    push_parser.add_argument("target", nargs="?", metavar="PATH|HOST", help="a /nix/store path, or a host to build")
    push_parser.add_argument("--on", action="append", type=selector, default=[], metavar="SELECTOR",
                             help="build every host it selects (@tag, glob, names; repeatable) in one build, push "
                             "their closures in one push, and publish each host's pointer")
    push_parser.add_argument("--pointer", metavar="NAME", help="publish toplevels/NAME.txt naming the toplevel "
                             "(default for a HOST: the pointer the host follows)")
    push_parser.add_argument("--jobs", type=int, default=8, metavar="N", help="parallel uploads (default 8)")
    push_parser.add_argument("--json", action="store_true", help="JSON lines: progress events, then the result")
    push_parser.add_argument("--verify", action="store_true", help="take no manifest's word: check every path "
                             "against one listing of the cache and upload what is missing (a repair)")
    push_parser.set_defaults(handler=push_command)

    pointers_parser = commands.add_parser(
        "pointers", help="list pointers, show one's history, or roll one back",
        description="Without NAME: every pointer with its target, serial and time. With NAME: that pointer; "
        "--history lists its versions (newest first); --rollback publishes an older target as a new version.",
    )
    pointers_parser.add_argument("name", nargs="?", metavar="NAME", help="a pointer name")
    pointers_parser.add_argument("--history", action="store_true", help="every version of NAME")
    pointers_parser.add_argument("--rollback", nargs="?", const="", metavar="TO",
                                 help="republish NAME's previous target, or the version with serial or path TO")
    pointers_parser.add_argument("--yes", action="store_true", help="do not ask before a rollback")
    pointers_parser.add_argument("--json", action="store_true", help="one JSON document")
    pointers_parser.set_defaults(handler=pointers_command)


def push_command(args: argparse.Namespace) -> int:
    if (args.target is None) == (not args.on):
        raise InventoryError("push: give a PATH or HOST, or --on SELECTOR (not both)")
    if args.on and args.pointer:
        raise InventoryError("push: --pointer names one pointer; with --on each host's own pointer is published")
    fleet = Fleet(load_inventory(args.inventory))
    fleet.signing_key()  # a missing key is refused before anything is built
    printer = EventPrinter(json_lines=args.json)
    try:
        if args.on:
            result = fleet.release(fleet.hosts(args.on), emit=printer, jobs=args.jobs, verify=args.verify)
        else:
            toplevel, pointer = _target(fleet, args.target, args.pointer, printer)
            result = fleet.push(toplevel, pointer=pointer, emit=printer, jobs=args.jobs, verify=args.verify)
    finally:
        printer.close()
    if args.json:
        say_json(to_json(result))
    else:
        say_lines(summary(result).splitlines())
    return 0


def _target(fleet: Fleet, target: str, pointer: str | None, printer: EventPrinter) -> tuple[StorePath, str | None]:
    if target.startswith("/"):
        return parse_store_path(target), pointer
    (host,) = fleet.hosts([target], what="push")[:1]
    return fleet.build(host, emit=printer), pointer or host.pointer


def summary(result: PushResult) -> str:
    t = result.transactions
    lines = [
        f"pushed {', '.join(result.toplevels or (result.toplevel,))}",
        f"  {result.paths_uploaded} of {result.paths_total} paths uploaded "
        f"({size(result.nar_bytes_uploaded)}, {size(result.file_bytes_uploaded)} compressed), "
        f"{result.paths_skipped} already in the cache ({size(result.nar_bytes_skipped)}), "
        f"in {humanize.precisedelta(result.seconds, minimum_unit='milliseconds', format='%0.1f')}",
        f"  B2 transactions: class A {t.a}, class B {t.b}, class C {t.c}",
    ]
    for pointer in result.pointers:
        state = "published" if pointer.changed else "already named it"
        delta = f"; a delta object of {size(pointer.delta_bytes)} from its previous target" if pointer.delta_bytes \
            else ""
        lines.append(f"  pointer {pointer.name}: {state} (serial {pointer.serial}){_named(pointer, result)}{delta}")
    return "\n".join(lines)


def _named(pointer: PublishedPointer, result: PushResult) -> str:
    return f" -> {pointer.path.rpartition('/')[2]}" if len(result.toplevels) > 1 else ""


def pointers_command(args: argparse.Namespace) -> int:
    fleet = Fleet(load_inventory(args.inventory))
    if (args.history or args.rollback is not None) and not args.name:
        raise InventoryError("pointers: --history and --rollback need a pointer NAME")
    if args.name:
        check_name(args.name)
    if args.rollback is not None:
        return _rollback(fleet, args)
    if args.history:
        versions = fleet.history(args.name)
        if not versions:
            raise CacheError(f"pointer {args.name} does not exist")
        _show(versions, args.json)
        return 0
    listing = fleet.pointers()
    if args.name:
        if args.name not in listing:
            raise CacheError(f"pointer {args.name} does not exist (pointers: {', '.join(listing) or 'none'})")
        return _one(fleet, args.name, listing[args.name], args.json)
    if args.json:
        say_json({name: to_json(v) for name, v in listing.items()}, indent=1)
    else:
        for name, version in listing.items():
            say(f"{name:<16} {_version(version)}")
    return 0


def _one(fleet: Fleet, name: str, info: PointerVersion, as_json: bool) -> int:
    """One pointer read as a host reads it (the .txt and its signed sidecar): only that is shown as verified."""
    pointer = fleet.read_pointer(name)
    signer = pointer.sig.partition(":")[0]
    if as_json:
        say_json({name: {"path": str(pointer.path), "serial": pointer.serial, "time": pointer.time,
                        "expires": pointer.expires or 0, "verified_by": signer, "file_info_problem": info.problem}},
                 indent=1)
        return 0
    say(f"{name:<16} serial {pointer.serial:<4} signed {ago(pointer.time)}{_expiry(pointer.expires or 0)}  "
        f"{pointer.path}  (signature verified: {signer})")
    if not info.verified:
        say(f"topdeck: warning: pointer {name}: the .txt's file info is {info.problem} (hosts read the signed "
            "sidecar shown above)", sys.stderr)
    return 0


def _rollback(fleet: Fleet, args: argparse.Namespace) -> int:
    rollback = fleet.pointer_rollback(args.name, args.rollback or None)
    if not args.yes and not ask(f"point {args.name} back at {rollback.target} (now {rollback.now or 'unverified'})?"):
        say("not rolled back", sys.stderr)
        return 1
    published = fleet.rollback_pointer(rollback)
    say(f"pointer {args.name} now names {published.path} (serial {published.serial})")
    return 0


def _show(versions: list[PointerVersion], as_json: bool) -> None:
    if as_json:
        say_json([{**to_json(v), "delta": v.delta.field if v.delta else None}  # type: ignore[dict-item]
                  for v in versions], indent=1)
        return
    for version in versions:
        say(_version(version))


def _version(version: PointerVersion) -> str:
    if not version.verified:
        return f"{'serial -':<12} {ago(version.uploaded_ms / 1000):<16} {version.problem}"
    delta = f" (delta from {version.delta.source.name}, {size(version.delta.size)})" if version.delta else ""
    return (f"{f'serial {version.serial}':<12} {ago(version.uploaded_ms / 1000):<16} {version.path}"
            f"{_expiry(version.expires)}{delta}")


def _expiry(expires: int) -> str:
    if not expires:
        return ""
    if is_expired(expires, time.time()):
        return f" (expired {ago(expires)})"
    return f" (expires {until(expires)})"
