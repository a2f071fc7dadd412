"""The `topdeck push` and `topdeck pointers` commands."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import humanize

from topdeck.core import pointers
from topdeck.core.cache import Cache, open_cache
from topdeck.core.errors import CacheError, InventoryError
from topdeck.core.events import PublishedPointer, PushResult
from topdeck.core.inventory import Inventory, load_inventory, select_hosts
from topdeck.core.push import push
from topdeck.core.release import build_hosts, release
from topdeck.core.signing import PublicKey, SecretKey, load_public_key, load_secret_key, parse_public_key
from topdeck.core.store import StorePath, parse_store_path
from topdeck.tui.cli_output import EventPrinter, ask, selector, size, to_json


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


def signing_key(inventory: Inventory) -> SecretKey:
    if inventory.cache.signing_key is None:
        raise InventoryError(f"{inventory.root}/topdeck.toml: cache.signing_key is not set (needed to sign)")
    return load_secret_key(inventory.cache.signing_key)


def push_command(args: argparse.Namespace) -> int:
    if (args.target is None) == (not args.on):
        raise InventoryError("push: give a PATH or HOST, or --on SELECTOR (not both)")
    if args.on and args.pointer:
        raise InventoryError("push: --pointer names one pointer; with --on each host's own pointer is published")
    inventory = load_inventory(args.inventory)
    key = signing_key(inventory)
    printer = EventPrinter(json_lines=args.json)
    try:
        if args.on:
            hosts = select_hosts(inventory, args.on)
            result = release(hosts, lambda: open_cache(inventory.cache), key, emit=printer, jobs=max(1, args.jobs),
                             verify=args.verify)
        else:
            toplevel, pointer = _target(inventory, args.target, args.pointer, printer)
            result = push(toplevel, open_cache(inventory.cache), key, pointer=pointer, emit=printer,
                          jobs=max(1, args.jobs), verify=args.verify)
    finally:
        printer.close()
    if args.json:
        print(json.dumps(to_json(result)))
    else:
        print(summary(result))
    return 0


def publish_toplevel(inventory: Inventory, toplevel: StorePath, pointer: str, emit) -> PushResult:  # type: ignore[no-untyped-def]
    """Push a toplevel and point `pointer` at it, with the inventory's cache and key."""
    return push(toplevel, open_cache(inventory.cache), signing_key(inventory), pointer=pointer, emit=emit)


def _target(inventory: Inventory, target: str, pointer: str | None,
            printer: EventPrinter) -> tuple[StorePath, str | None]:
    if target.startswith("/"):
        return parse_store_path(target), pointer
    (host,) = select_hosts(inventory, [target], what="push")[:1]
    return build_hosts([host], emit=printer)[host.name], pointer or host.pointer


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
        lines.append(f"  pointer {pointer.name}: {state} (serial {pointer.serial}){_named(pointer, result)}")
    return "\n".join(lines)


def _named(pointer: PublishedPointer, result: PushResult) -> str:
    return f" -> {pointer.path.rpartition('/')[2]}" if len(result.toplevels) > 1 else ""


def pointers_command(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    if (args.history or args.rollback is not None) and not args.name:
        raise InventoryError("pointers: --history and --rollback need a pointer NAME")
    if args.name:
        pointers.check_name(args.name)
    cache = open_cache(inventory.cache)
    if args.rollback is not None:
        return _rollback(inventory, cache, args)
    if args.history:
        versions = pointers.history(cache, args.name)
        if not versions:
            raise CacheError(f"pointer {args.name} does not exist")
        _show(versions, args.json, label=lambda v: f"serial {v.serial}")
        return 0
    listing = pointers.current(cache.listing())
    if args.name:
        if args.name not in listing:
            raise CacheError(f"pointer {args.name} does not exist (pointers: {', '.join(listing) or 'none'})")
        listing = {args.name: listing[args.name]}
        # one pointer: read it as a host does, and check its signed sidecar with the trusted key
        verified = pointers.read_verified(cache, args.name, trusted_keys(inventory))
        signer = verified.sig.partition(":")[0]
    if args.json:
        document = {name: to_json(v) for name, v in listing.items()}
        if args.name:
            document[args.name] = {**document[args.name], "verified_by": signer}  # type: ignore[dict-item]
        print(json.dumps(document, indent=1))
    else:
        for name, version in listing.items():
            checked = f"  (signature verified: {signer})" if args.name else ""
            print(f"{name:<16} serial {version.serial:<4} {_when(version.uploaded_ms):<16} {version.path}{checked}")
    return 0


def trusted_keys(inventory: Inventory) -> list[PublicKey]:
    """The cache's public key from topdeck.toml (public_key or public_key_file, else the signing key's)."""
    config = inventory.cache
    if config.public_key:
        return [parse_public_key(config.public_key, f"{inventory.root}/topdeck.toml: cache.public_key")]
    if config.public_key_file is not None:
        return [load_public_key(config.public_key_file)]
    if config.signing_key is not None:
        return [load_secret_key(config.signing_key).public_key()]
    raise InventoryError(f"{inventory.root}/topdeck.toml: set cache.public_key or cache.public_key_file "
                         "(needed to check pointers)")


def _rollback(inventory: Inventory, cache: Cache, args: argparse.Namespace) -> int:
    versions = pointers.history(cache, args.name)
    target = pointers.rollback_target(versions, args.rollback or None)
    if not args.yes and not ask(f"point {args.name} back at {target} (now {versions[0].path})?"):
        print("not rolled back", file=sys.stderr)
        return 1
    published = pointers.publish(cache, args.name, target, signing_key(inventory), cache.listing())
    print(f"pointer {args.name} now names {published.path} (serial {published.serial})")
    return 0


def _show(versions: list[pointers.PointerVersion], as_json: bool, label) -> None:  # type: ignore[no-untyped-def]
    if as_json:
        print(json.dumps([to_json(v) for v in versions], indent=1))
        return
    for version in versions:
        print(f"{label(version):<12} {_when(version.uploaded_ms):<16} {version.path}")


def _when(uploaded_ms: int) -> str:
    moment = datetime.fromtimestamp(uploaded_ms / 1000, tz=UTC)
    return humanize.naturaltime(datetime.now(tz=UTC) - moment)
