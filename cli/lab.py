"""The `topdeck lab ...` and `topdeck demo` commands: the only part of the product that reaches into lab/."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from dataclasses import asdict
from pathlib import Path

from topdeck.cli.output import say, say_json
from topdeck.core.inventory import Inventory, load_inventory


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = commands.add_parser("lab", help="manage the local lab (namespaced sshd hosts and a B2 emulator)",
                              description="The local lab: real sshd hosts on 127.0.0.x, each in its own "
                              "mount namespace with its own /nix and /run, and a B2 emulator on 127.0.0.1. "
                              "Needs root on Linux.")
    lab.add_argument("--root", type=Path, default=None, metavar="DIR",
                     help="lab folder (default: $TOPDECK_LAB_DIR or /var/lib/topdeck-lab)")
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="start the lab (whatever is missing of it)")
    up.add_argument("--hosts", type=_host_count, default=3, metavar="N", help="number of hosts (default 3)")
    up.add_argument("--base-address", default="127.0.0.11", metavar="IP",
                    help="first host's loopback address (default 127.0.0.11)")
    up.add_argument("--emulator-port", type=int, default=17890, metavar="PORT",
                    help="B2 emulator port on 127.0.0.1 (default 17890; 0 picks a free one)")
    _add_image_option(up)
    up.add_argument("--rtt", type=_rtt, default=None, metavar="LEG=TIME,...",
                    help="round trips on the lab's legs: cache (hosts to the bucket's downloads), ssh (operator to "
                    "hosts), api (operator to the B2 API); say cache=100ms,ssh=40ms. With --uplink and --downlink, "
                    "replaces what a running lab has (none given: kept)")
    up.add_argument("--uplink", type=_rate("uplink"), default=None, metavar="RATE",
                    help="cap what the operator sends (SSH and B2 API), say 20mbit (tc htb on lo)")
    up.add_argument("--downlink", type=_rate("downlink"), default=None, metavar="RATE",
                    help="cap what the cache sends to the hosts, all together, say 100mbit")
    up.set_defaults(handler=lab_up)

    images = actions.add_parser("images", help="the kinds of lab host and what each has (Nix, OpenSSH, systemd)",
                                description="Lists the kinds of lab host: native (this machine's Nix, no init "
                                "system) and the Debian roots booted with systemd as PID 1 (built once with "
                                "debootstrap and cached in $TOPDECK_IMAGE_DIR or /var/cache/topdeck-lab/images).")
    images.add_argument("--build", nargs="*", metavar="NAME", default=None,
                        help="build these images (all when no name is given) if missing or outdated, then list")
    images.add_argument("--json", action="store_true", help="one JSON document")
    images.set_defaults(handler=lab_images)

    down = actions.add_parser("down", help="stop every lab process and remove the hosts' stores")
    down.set_defaults(handler=lab_down)

    status = actions.add_parser("status", help="which hosts run, their systems, the emulator and its counters")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(handler=lab_status)

    for verb, text in (("stop-host", "stop a host's sshd (the host becomes unreachable)"),
                       ("start-host", "start a stopped host's sshd again"),
                       ("reboot-host", "reboot an image host (systemctl reboot inside) and wait until it is up")):
        control = actions.add_parser(verb, help=text)
        control.add_argument("name", help="lab host name")
        control.set_defaults(handler=lab_host_control, verb=verb)

    demo = commands.add_parser("demo", help="start the lab for the inventory's hosts and show it",
                               description="Starts the local lab if needed, with one lab host per host of "
                               "the inventory (default ./hosts, the demo fleet), publishes each pointer's first "
                               "system, and opens the TUI on it (or, with --no-tui or when stdout is not a "
                               "terminal, prints the lab's status).")
    demo.add_argument("--no-tui", action="store_true", help="set the lab up and print its status; do not open the TUI")
    demo.add_argument("--flake", action="store_true",
                      help="the same fleet as a flake: write it (flake.nix, the factory, the systems with the lab's "
                      "key) and its inventory into the lab's folder (flake-fleet/), build it and open the TUI on it")
    _add_image_option(demo)
    demo.set_defaults(handler=demo_command)


def _add_image_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", type=_image_choice, default=[], metavar="[HOST=]KIND",
                        help="the kind of lab host: native (default), trixie (Nix 2.26) or sid (Nix 2.34), booted "
                        "with systemd; KIND for every host, HOST=KIND for one (repeat to mix kinds)")


def _image_choice(text: str) -> tuple[str, str]:
    from topdeck.lab.images import known_kinds

    host, _, kind = text.rpartition("=")
    if kind not in known_kinds():
        raise argparse.ArgumentTypeError(f"{kind!r} is no host image; choose from {', '.join(known_kinds())}")
    return host, kind


def _kinds(choices: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
    """The kind for every host (the last bare KIND, else native) and the per-host ones."""
    from topdeck.lab.images import NATIVE

    default = next((kind for host, kind in reversed(choices) if not host), NATIVE)
    return default, {host: kind for host, kind in choices if host}


def _rtt(text: str) -> dict[str, int]:
    from topdeck.lab.errors import LabError
    from topdeck.lab.wan import parse_rtt

    try:
        return parse_rtt(text)
    except LabError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--rtt ")) from None


def _rate(what: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        from topdeck.lab.errors import LabError
        from topdeck.lab.wan import parse_rate

        try:
            return parse_rate(text, what)
        except LabError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{what} ")) from None

    parse.__name__ = what
    return parse


def _host_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value <= 200:
        raise argparse.ArgumentTypeError("between 1 and 200 hosts")
    return value


def _lab(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from topdeck.lab.lab import Lab

    return Lab(getattr(args, "root", None))


def lab_up(args: argparse.Namespace) -> int:
    from topdeck.lab.lab import Lab
    from topdeck.lab.wan import make_wan

    lab = Lab(args.root, base_address=args.base_address, emulator_port=args.emulator_port)
    image, kinds = _kinds(args.image)
    given = (args.rtt, args.uplink, args.downlink)
    distance = None if given == (None, None, None) else make_wan(args.rtt, args.uplink or 0, args.downlink or 0)
    lab.up(count=args.hosts, image=image, kinds=kinds, distance=distance)
    _print_status(lab.status())
    return 0


def lab_images(args: argparse.Namespace) -> int:
    from topdeck.lab import images

    if args.build is not None:
        for name in args.build or [kind for kind in images.known_kinds() if kind != images.NATIVE]:
            images.ensure_image(images.check_kind(name), log=say)
    listings = images.list_images()
    if args.json:
        say_json([{**asdict(listing.info), "state": listing.state} for listing in listings], indent=2)
        return 0
    say(f"{'image':<8} {'state':<9} {'Nix':<18} {'OpenSSH':<20} {'systemd':<18} what")
    for listing in listings:
        info = listing.info
        say(f"{info.name:<8} {listing.state:<9} {info.nix or '-':<18} {info.openssh or '-':<20} "
              f"{info.systemd or 'none (no init)':<18} {info.description}")
    if any(listing.state != "ready" for listing in listings):
        say("images that are not ready are built by `topdeck lab up --image NAME` (about a minute each), "
              "or by `topdeck lab images --build`")
    return 0


def lab_down(args: argparse.Namespace) -> int:
    _lab(args).down()
    return 0


def lab_status(args: argparse.Namespace) -> int:
    status = _lab(args).status()
    if args.json:
        say_json(asdict(status), indent=2)
    else:
        _print_status(status)
    return 0 if status.up else 1


def lab_host_control(args: argparse.Namespace) -> int:
    lab = _lab(args)
    control = {"stop-host": lab.stop_host, "start-host": lab.start_host, "reboot-host": lab.reboot_host}
    control[args.verb](args.name)
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from topdeck.lab.lab import Lab
    from topdeck.lab.nixenv import LAB_NIX_CONFIG

    os.environ.setdefault("NIX_CONFIG", LAB_NIX_CONFIG)
    inventory = load_inventory(args.inventory)
    lab = Lab(emulator_port=_emulator_port(inventory))
    image, kinds = _kinds(args.image)
    lab.up(hosts={host.name: host.address for host in inventory.hosts}, image=image, kinds=kinds)
    if args.flake:
        from topdeck.lab.flakefleet import demo_flake_fleet

        keys = [line for line in lab.client_public_key().splitlines() if line.strip()]
        args.inventory = demo_flake_fleet(inventory, lab.root / "flake-fleet", keys)
        say(f"flake fleet: {args.inventory} (its flake.nix has nixosConfigurations.<host>)")
        inventory = load_inventory(args.inventory)
    _publish_first_toplevels(inventory)
    _print_status(lab.status())
    if args.no_tui or not sys.stdout.isatty():
        return 0
    from topdeck.tui.app import run_app

    return run_app(args.inventory)


def _emulator_port(inventory: Inventory) -> int:
    """Where the inventory expects the lab's B2 emulator: the port of an `http://127.0.0.1:PORT` realm."""
    from topdeck.lab.lab import DEFAULT_EMULATOR_PORT

    realm = urllib.parse.urlsplit(inventory.cache.realm)
    if realm.scheme == "http" and realm.hostname == "127.0.0.1" and realm.port:
        return realm.port
    return DEFAULT_EMULATOR_PORT


def _publish_first_toplevels(inventory: Inventory) -> None:
    """Build every host's system (one build) and publish each pointer's, as a first release (core.release)."""
    from topdeck.cli.output import EventPrinter
    from topdeck.cli.push import summary
    from topdeck.core.facade import Fleet

    printer = EventPrinter()
    hosts = [host for host in inventory.hosts if host.build is not None]
    say(f"building {', '.join(host.name for host in hosts)}")
    try:
        result = Fleet(inventory).release(hosts, emit=printer)
    finally:
        printer.close()
    say(summary(result))


def _print_status(status) -> None:  # type: ignore[no-untyped-def]
    say(f"lab folder: {status.root}")
    emulator = status.emulator_url if status.emulator_running else "not running"
    say(f"B2 emulator: {emulator}")
    say(f"distance: {status.wan}")
    if status.download_url and status.download_url != status.emulator_url:
        say(f"  hosts fetch through {status.download_url} (an inventory's [cache] url: "
            f"{status.download_url}/file/BUCKET/PREFIX)")
    if status.counters:
        c = status.counters
        say(f"  transactions: class A {c.get('A', 0)}, class B {c.get('B', 0)}, class C {c.get('C', 0)}")
    if not status.hosts:
        say("hosts: none (run `topdeck lab up`)")
    for host in status.hosts:
        state = "up" if host.sshd else "sshd stopped"
        system = host.current_system or "-"
        say(f"  {host.name:<10} {host.address:<15} {host.image:<7} {state:<12} gen {host.generation:<3} {system}")
