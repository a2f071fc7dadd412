"""The `topdeck apply` command: build, push, plan (shown), confirm and deploy, in one command."""

from __future__ import annotations

import argparse
import json

from topdeck.core.cache import open_cache
from topdeck.core.deploy import MODES, Settings
from topdeck.core.fleet import trusted_key
from topdeck.core.inventory import load_inventory, select_hosts
from topdeck.core.release import buildable, release
from topdeck.tui.cli_deploy import plan_confirm_deploy
from topdeck.tui.cli_output import EventPrinter, add_selector_option, to_json
from topdeck.tui.cli_push import signing_key, summary


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
    apply.add_argument("--mode", choices=MODES, default="switch",
                       help="switch (default): activate now and at boot; boot: at next boot only; test: now, not at "
                       "boot; dry-activate: show what would change")
    apply.add_argument("--yes", action="store_true", help="do not ask before deploying")
    apply.add_argument("--json", action="store_true",
                       help="JSON lines: build and push events, the push result, the plan, deploy events, the result")
    apply.set_defaults(handler=apply_command, target=None, reboot=False, canary=0, wave=None, specialisation=None)


def apply_command(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    Settings(args.mode, "", trusted_key(inventory))  # a bad mode or key is refused before anything is built
    hosts = select_hosts(inventory, args.on)
    buildable(hosts)
    key = signing_key(inventory)
    printer = EventPrinter(json_lines=args.json)
    try:
        result = release(hosts, lambda: open_cache(inventory.cache), key, emit=printer)
    finally:
        printer.close()
    print(json.dumps(to_json(result)) if args.json else summary(result), flush=True)
    return plan_confirm_deploy(inventory, list(args.on), args)
