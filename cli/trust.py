"""`topdeck trust HOST...`: show each host's SSH key (and its jump hosts') and pin the new ones on purpose."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from topdeck.cli.output import ask, open_fleet, say, say_json, say_lines
from topdeck.core.errors import TopdeckError
from topdeck.core.remote.trust import Decide, HopKey, expect

FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "trust", help="pin hosts' SSH host keys (after checking their fingerprints)",
        description="Connects to each HOST (through its ProxyJump hosts, as a deploy would), shows the key type "
        "and SHA256 fingerprint every hop presents, and after confirmation appends the new ones to the "
        "known_hosts that topdeck reads ([ssh] known_hosts, else ssh_config's UserKnownHostsFile, else "
        "~/.ssh/known_hosts). Jump hosts with unknown keys are shown and pinned as hops of their own. Keys already "
        "pinned (also in /etc/ssh/ssh_known_hosts) are reported as trusted; a changed key is refused and never "
        "replaced. Nothing is written unless every hop is accepted.",
        epilog="Compare a fingerprint with the host's own: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub",
    )
    parser.add_argument("hosts", nargs="+", metavar="HOST", help="host names, globs (web-*) or tags (@db)")
    parser.add_argument("--fingerprint", action="append", default=[], type=fingerprint_arg, metavar="SHA256:...",
                        help="accept a new key only if it has this fingerprint (repeatable, e.g. for a jump host "
                        "too); no prompt: for CI, which knows its hosts' keys")
    parser.add_argument("--yes", action="store_true", help="accept every new key without asking (trust on first use)")
    parser.add_argument("--json", action="store_true", help="print the keys as one JSON document")
    parser.set_defaults(handler=trust_command)


def fingerprint_arg(value: str) -> str:
    if not FINGERPRINT_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a SHA256 fingerprint (SHA256: and 43 base64 characters, "
                                         "as ssh-keygen -lf prints it)")
    return value


def trust_command(args: argparse.Namespace) -> int:
    fleet = open_fleet(args.inventory)
    hosts = fleet.hosts(args.hosts, what="trust")
    decide = _decider(args)
    results: list[HopKey] = []
    failed = 0
    for host in hosts:
        try:
            found = fleet.trust(host, decide)
        except TopdeckError as error:
            failed += 1
            say(f"topdeck: error: {error}", sys.stderr)
            continue
        results.extend(found)
        if not args.json:
            for item in found:
                say_lines(_describe(item).splitlines())
    if args.json:
        say_json([{k: str(v) if k == "known_hosts" else v for k, v in dataclasses.asdict(item).items()
                   if k != "key"} for item in results], indent=2)
    return 1 if failed else 0


def _decider(args: argparse.Namespace) -> Decide:
    if args.fingerprint:
        return expect(args.fingerprint)
    if args.yes:
        return lambda item: True
    return _ask


def _ask(item: HopKey) -> bool:
    where = f"jump host {item.hop} (for {item.host})" if item.jump else item.host
    question = f"{where}: new host key {item.key_type} {item.fingerprint} for {item.key_name}. Pin it into " \
               f"{item.known_hosts}?"
    return ask(question, unasked="pass --fingerprint or --yes")


def _describe(item: HopKey) -> str:
    where = f"{item.host} via jump host {item.hop}" if item.jump else item.host
    if item.status == "certified":
        return (f"{where}: {item.key_type} {item.fingerprint} ({item.key_name}) has a host certificate signed by a "
                f"trusted CA: {item.vouched}; nothing to pin")
    state = f"pinned into {item.known_hosts}" if item.pinned else "already trusted"
    return f"{where}: {item.key_type} {item.fingerprint} ({item.key_name}) {state}"
