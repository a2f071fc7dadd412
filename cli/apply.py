"""The `topdeck apply` command: build, push, plan (shown), confirm and deploy, in one command."""

from __future__ import annotations

import argparse

from topdeck.cli.deploy import plan_confirm_deploy
from topdeck.cli.output import EventPrinter, add_selector_option, say_json, say_lines, to_json
from topdeck.cli.push import summary
from topdeck.core.facade import Fleet
from topdeck.core.inventory import load_inventory
from topdeck.core.vocabulary import SWITCH_MODES, Mode


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    apply = commands.add_parser(
        "apply", help="build, push, plan, confirm and deploy the selected hosts in one command",
        description="What `topdeck push --on`, then `topdeck deploy` do, in one command (as `colmena apply`): builds "
        "every selected host (all flake hosts in one `nix build`), pushes the union of their closures in one push "
        "and publishes each host's pointer, then plans, shows the plan, asks, and deploys with the same live rows, "
        "JSON lines and exit codes as `deploy`. Exits 1 if a build or the push failed (nothing is deployed then), "
        "or unless every host ended on its target.",
    )
    add_selector_option(apply)
    apply.add_argument("--mode", choices=[mode.value for mode in SWITCH_MODES], default=Mode.SWITCH.value,
                       help="switch (default): activate now and at boot; boot: at next boot only; test: now, not at "
                       "boot; dry-activate: show what would change")
    apply.add_argument("--yes", action="store_true", help="do not ask before deploying")
    apply.add_argument("--json", action="store_true",
                       help="JSON lines: build and push events, the push result, the plan, deploy events, the result")
    apply.set_defaults(handler=apply_command, target=None, reboot=False, canary=0, wave=None, specialisation=None)


def apply_command(args: argparse.Namespace) -> int:
    fleet = Fleet(load_inventory(args.inventory))
    args.mode = fleet.check_deploy(args.mode)  # a bad mode or key is refused before anything is built
    hosts = fleet.hosts(args.on)
    fleet.check_buildable(hosts)
    fleet.signing_key()
    printer = EventPrinter(json_lines=args.json)
    try:
        result = fleet.release(hosts, emit=printer)
    finally:
        printer.close()
    say_json(to_json(result)) if args.json else say_lines(summary(result).splitlines())
    return plan_confirm_deploy(fleet, list(args.on), args)
