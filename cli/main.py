"""The `topdeck` command line: parses arguments, runs a command, turns errors into one line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from topdeck.core.errors import TopdeckError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one `topdeck: error:` line like every other error (the usage
    itself is in --help). Its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        from topdeck.cli.output import say

        command = self.prog.partition(" ")[2]  # "deploy" of "topdeck deploy"; "" for topdeck itself
        where = f"{command}: " if command else ""
        say(f"topdeck: error: {where}{message} (see `{self.prog} --help`)", sys.stderr)
        self.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from topdeck.cli import apply, build, deploy, gc, history, hostexec, keys, lab, plan, push, trust

    parser = Parser(
        prog="topdeck",
        description="Keyboard-driven deployer for NixOS fleets: a B2 binary cache, pointers, and "
        "pull-and-activate over SSH, with the plan shown before anything happens.",
        epilog="Run `topdeck COMMAND --help` for a command's options. The local lab (`topdeck lab`, "
        "`topdeck demo`) needs root on Linux; deploying to real hosts does not.",
    )
    parser.add_argument("--inventory", type=Path, default=Path("hosts"), metavar="DIR",
                        help="inventory folder: topdeck.toml and one <host>/host.toml per host (default: ./hosts)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    lab.add_commands(commands)
    build.add_commands(commands)
    push.add_commands(commands)
    plan.add_commands(commands)
    deploy.add_commands(commands)
    gc.add_commands(commands)
    history.add_commands(commands)
    apply.add_commands(commands)
    trust.add_commands(commands)
    hostexec.add_commands(commands)
    keys.add_commands(commands)
    return parser


def open_command(args: argparse.Namespace) -> int:
    """The handler of `topdeck [--inventory DIR]`: the TUI on a terminal, the plain host listing elsewhere."""
    if sys.stdout.isatty() and sys.stdin.isatty():
        from topdeck.tui.app import run_app

        return run_app(args.inventory)
    return show_inventory(args)


def show_inventory(args: argparse.Namespace) -> int:
    """Each host of the inventory on one line: name, where it is reached, pointer and tags."""
    from topdeck.cli.output import say
    from topdeck.core.inventory import load_inventory
    from topdeck.core.remote.sshroute import endpoint_label

    inventory = load_inventory(args.inventory)
    width = max(len(host.name) for host in inventory.hosts)
    for host in inventory.hosts:
        tags = ",".join(host.tags) or "-"
        where = endpoint_label(host, inventory.ssh)
        say(f"{host.name:<{width}}  {where}  pointer={host.pointer}  tags={tags}")
    return 0


# Settings that only a command-line flag gives: core's error starts with the setting's name, the CLI names the flag.
FLAG_OF_SETTING = {"canary": "--canary", "wave": "--wave", "keep": "--keep", "reboot": "--reboot",
                   "skip_unreachable": "--skip-unreachable", "timeout": "--timeout"}


def error_text(error: TopdeckError) -> str:
    text = str(error)
    flag = FLAG_OF_SETTING.get(error.setting)
    if not flag:
        return text
    if text.startswith(f"{error.setting} "):
        return flag + text[len(error.setting):]
    return f"{text} ({flag})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args.handler = open_command
    try:
        return int(args.handler(args) or 0)
    except TopdeckError as error:
        from topdeck.cli.output import say

        say(f"topdeck: error: {error_text(error)}", sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        from topdeck.cli.output import say

        say("topdeck: interrupted", sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
