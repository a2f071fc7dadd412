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
        from topdeck.tui.cli_output import one_line

        command = self.prog.partition(" ")[2]  # "deploy" of "topdeck deploy"; "" for topdeck itself
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"topdeck: error: {where}{one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from topdeck.tui import cli_apply, cli_build, cli_deploy, cli_gc, cli_lab, cli_plan, cli_push, cli_trust

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
    cli_lab.add_commands(commands)
    cli_build.add_commands(commands)
    cli_push.add_commands(commands)
    cli_plan.add_commands(commands)
    cli_deploy.add_commands(commands)
    cli_gc.add_commands(commands)
    cli_apply.add_commands(commands)
    cli_trust.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from topdeck.tui.app import open_command

        args.handler = open_command
    try:
        return int(args.handler(args) or 0)
    except TopdeckError as error:
        from topdeck.tui.cli_output import one_line

        print(f"topdeck: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("topdeck: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
