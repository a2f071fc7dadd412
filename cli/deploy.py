"""The `topdeck deploy`, `rollback`, `status` and `generations` commands."""

from __future__ import annotations

import argparse
import json
import sys
import time

from topdeck.cli.output import (
    DeployBoard,
    EventPrinter,
    add_selector_option,
    ago,
    ask,
    open_fleet,
    say,
    say_json,
    say_lines,
    selector,
    size,
    to_json,
    until,
)
from topdeck.cli.plan import plan_json, render_plan
from topdeck.core.cache.pointers import is_expired
from topdeck.core.events import DeployResult, HostOutcome
from topdeck.core.facade import Fleet, check_waves
from topdeck.core.operations import DeployRequest, HostStatus
from topdeck.core.vocabulary import SWITCH_MODES, HostState, Mode, Outcome


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    deploy = commands.add_parser(
        "deploy", help="pull and activate the hosts' systems, with live progress and magic rollback",
        description="Plans the selected hosts (see `topdeck plan`), asks, then on each host, in parallel: takes the "
        "host's lock, checks the pointer's signature, fetches the closure from the cache with signatures required, "
        "sets the system profile, activates it detached from the SSH session, and confirms through a new SSH login "
        "after the health checks; a host that is not confirmed within deploy.confirm_timeout rolls itself back. "
        "Refuses to start unless the cache holds every path. Exits 1 unless every host ended on its target.",
    )
    add_selector_option(deploy)
    deploy.add_argument("--target", metavar="PATH", help="deploy this store path, or "
                        "pointer:NAME (every host deploys through pointer NAME), instead of the hosts' own pointers")
    deploy.add_argument("--mode", choices=[mode.value for mode in SWITCH_MODES], default=Mode.SWITCH.value,
                        help="switch (default): activate now and at boot; boot: at next boot only; test: now, not "
                        "at boot; dry-activate: show what would change")
    deploy.add_argument("--specialisation", metavar="NAME", default=None,
                        help="switch/test: activate this specialisation of each host's system (the profile is the "
                        "system itself); overrides the hosts' own `specialisation` setting; '' for none")
    deploy.add_argument("--reboot", action="store_true",
                        help="with --mode boot: then reboot each host into the new system and confirm it after the "
                        "boot; a host not confirmed in time returns to its previous system by itself")
    deploy.add_argument("--canary", type=int, default=0, metavar="N",
                        help="deploy N hosts first, as a wave of their own")
    deploy.add_argument("--wave", metavar="SIZE", help="then waves of SIZE hosts (5) or of a share (25%%); "
                        "a wave with a failed host stops the deploy")
    deploy.add_argument("--retry-failed", action="store_true",
                        help="only the hosts that failed in the last run (of those --on selects)")
    deploy.add_argument("--yes", action="store_true", help="do not ask before starting")
    deploy.add_argument("--json", action="store_true", help="JSON lines: the plan, progress events, then the result")
    deploy.set_defaults(handler=deploy_command)

    rollback = commands.add_parser(
        "rollback", help="switch hosts back to their previous (or a chosen) system generation",
        description="Switches each HOST's system profile to the generation before its current one (or --to N) and "
        "activates it, with the same confirmation and magic rollback as a deploy. Exits 1 unless every host "
        "ended on that generation.",
    )
    rollback.add_argument("hosts", nargs="+", type=selector, metavar="HOST", help="host names, globs or @tags")
    rollback.add_argument("--to", type=int, metavar="GENERATION", help="the generation number (see generations)")
    rollback.add_argument("--yes", action="store_true", help="do not ask before starting")
    rollback.add_argument("--json", action="store_true", help="JSON lines: progress events, then the result")
    rollback.set_defaults(handler=rollback_command)

    reboot = commands.add_parser(
        "reboot", help="reboot hosts, confirmed after the boot, with magic rollback across the reboot",
        description="Reboots each HOST (systemd hosts only) into its boot default and waits for it to come back with "
        "a new boot id; then checks that it booted that system and confirms through a new SSH login, after the "
        "health checks. A host not confirmed within deploy.confirm_timeout of its boot returns by itself to the "
        "system it ran before the reboot, when its boot default is another one (its boot entry back, and another "
        "reboot). Exits 1 unless every host was confirmed.",
    )
    reboot.add_argument("hosts", nargs="+", type=selector, metavar="HOST", help="host names, globs or @tags")
    reboot.add_argument("--yes", action="store_true", help="do not ask before starting")
    reboot.add_argument("--json", action="store_true", help="JSON lines: progress events, then the result")
    reboot.set_defaults(handler=reboot_command)

    status = commands.add_parser(
        "status", help="each host's current, booted and desired system, and whether it drifted",
        description="One SSH round trip per host. up-to-date: runs its pointer's target; behind: runs an earlier "
        "target of its pointer; drifted: runs something its pointer never named; rolled-back: its last deploy "
        "rolled back; deploying: a deploy holds its lock. Exits 1 unless every host is up to date.",
    )
    add_selector_option(status, help="hosts (default: all)")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(handler=status_command)

    gens = commands.add_parser("generations", help="a host's system generations",
                               description="Number, date, store path and nixos-version of each system generation.")
    gens.add_argument("host", metavar="HOST")
    gens.add_argument("--json", action="store_true", help="one JSON document")
    gens.set_defaults(handler=generations_command)

    agent = commands.add_parser(
        "agent-config", help="the NixOS settings that make a host pull its pointer by itself",
        description="Prints the services.topdeck-agent block (the module is the folder hosts/modules/topdeck-agent, "
        "copied beside configuration.nix) for HOST: its pointer, the URL hosts fetch the cache from "
        "(cache.download_url, else the bucket's own) and the trusted key, in both the Nix and the OpenSSH form.",
    )
    agent.add_argument("host", metavar="HOST")
    agent.set_defaults(handler=agent_config_command)


def deploy_command(args: argparse.Namespace) -> int:
    check_waves(args.canary, args.wave)  # a bad --canary or --wave is refused before the inventory is read
    fleet = open_fleet(args.inventory)
    args.mode = fleet.check_deploy(args.mode, reboot=args.reboot)
    selectors = fleet.retry_hosts(args.on) if args.retry_failed else list(args.on)
    return plan_confirm_deploy(fleet, selectors, args)


def plan_confirm_deploy(fleet: Fleet, selectors: list[str], args: argparse.Namespace) -> int:
    """Plan the hosts, show the plan, ask (unless --yes), deploy with live rows, report: `deploy` and `apply`.
    `args` holds deploy's options (target, mode, reboot, canary, wave, specialisation, yes, json)."""
    progress = EventPrinter(json_lines=args.json)
    try:
        fleet_plan = fleet.plan(selectors, args.target, emit=progress)
    finally:
        progress.close()
    if args.json:
        say_json({"event": "Plan", **plan_json(fleet_plan.plan, fleet_plan.fetch_url, fleet_plan.keys)})
    else:
        say_lines(render_plan(fleet_plan.plan, fleet_plan.fetch_url, fleet_plan.keys))
    count = sum(1 for h in fleet_plan.plan.hosts if h.planned)
    if not args.yes and not ask(f"{args.mode}{' and reboot' if args.reboot else ''} {count} host(s) now?"):
        say("nothing deployed", sys.stderr)
        return 1
    board = DeployBoard(json_lines=args.json)
    try:
        request = DeployRequest(Mode(args.mode), reboot=args.reboot, canary=args.canary, wave=args.wave,
                                specialisation=args.specialisation)
        result = fleet.deploy(fleet_plan, request, emit=board)
    finally:
        board.close()
    return _report(result, args.json)


def rollback_command(args: argparse.Namespace) -> int:
    fleet = open_fleet(args.inventory)
    fleet.hosts(args.hosts, what="rollback")  # hosts that do not exist are refused before asking
    what = f"generation {args.to}" if args.to is not None else "the previous generation"
    if not args.yes and not ask(f"switch {', '.join(args.hosts)} to {what}?"):
        say("nothing rolled back", sys.stderr)
        return 1
    board = DeployBoard(json_lines=args.json)
    try:
        result = fleet.rollback(args.hosts, args.to, emit=board)
    finally:
        board.close()
    return _report(result, args.json)


def reboot_command(args: argparse.Namespace) -> int:
    fleet = open_fleet(args.inventory)
    fleet.hosts(args.hosts, what="reboot")  # hosts that do not exist are refused before asking
    if not args.yes and not ask(f"reboot {', '.join(args.hosts)}?"):
        say("nothing rebooted", sys.stderr)
        return 1
    board = DeployBoard(json_lines=args.json)
    try:
        result = fleet.reboot(args.hosts, emit=board)
    finally:
        board.close()
    return _report(result, args.json)


def status_command(args: argparse.Namespace) -> int:
    found = open_fleet(args.inventory).status(args.on)
    if args.json:
        say_json([to_json(s) for s in found], indent=1)
    else:
        width = max(len(s.host) for s in found)
        for s in found:
            running = f"{_name(s.system)}, specialisation {s.specialisation}" if s.specialisation else _name(s.current)
            say(f"{s.host:<{width}}  {s.status:<11} gen {s.generation:<3} current {running}"
                  f"{'' if s.booted == s.current else f', booted {_name(s.booted)}'}; desired {_name(s.desired)}"
                  f"{f'; needs a reboot (its {s.needs_reboot} differs from the booted one)' if s.needs_reboot else ''}"
                  f"{f'; last run {s.last_run}' if s.last_run else ''}{f' ({s.reason})' if s.reason else ''}"
                  f"{f'; last deploy {s.last_deploy}' if s.last_deploy else ''}"
                  f"{f'; {s.agent}' if s.agent else ''}"
                  f"{_pointer_age(s)}")
    return 0 if all(s.status == HostState.UP_TO_DATE for s in found) else 1


def _pointer_age(status: HostStatus) -> str:
    """How old the desired pointer version is, and when it expires (hosts refuse an expired one)."""
    if status.pointer_problem:
        return f"; {status.pointer_problem}"
    if not status.pointer_signed:
        return ""
    age = f"; pointer signed {ago(status.pointer_signed)}"
    if not status.pointer_expires:
        return age
    if is_expired(status.pointer_expires, time.time()):
        return f"{age}, expired {ago(status.pointer_expires)}: hosts refuse it, publish it again"
    return f"{age}, expires {until(status.pointer_expires)}"


def generations_command(args: argparse.Namespace) -> int:
    found = open_fleet(args.inventory).generations(args.host)
    if args.json:
        say_json([to_json(g) for g in found], indent=1)
        return 0
    for g in found:
        say(f"{g.number:>4}  {g.date}  {g.version:<28} {g.path}{'  (current)' if g.current else ''}")
    return 0


def agent_config_command(args: argparse.Namespace) -> int:
    agent = open_fleet(args.inventory).agent_config(args.host)
    say_lines(["imports = [ ./topdeck-agent ];  # the folder hosts/modules/topdeck-agent of topdeck, copied here",
               "services.topdeck-agent = {", "  enable = true;",
               f"  pointer = {json.dumps(agent.pointer)};", f"  cache = {json.dumps(agent.cache_url)};",
               f"  publicKey = {json.dumps(agent.public_key)};", f"  signer = {json.dumps(agent.signer)};",
               *([f"  checkCommand = {nix_string(agent.checks.command)};"] if agent.checks.command else []),
               *([f"  checkHttp = {nix_string(agent.checks.http)};"] if agent.checks.http else []),
               *(["  checkUnits = true;"] if agent.checks.failed_units else []),
               *([f"  onFailedUnits = {json.dumps(agent.on_failed_units)};"]
                 if agent.on_failed_units != "rollback" else []), "};"])
    return 0


NIX_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "$": "\\$"}


def nix_string(value: str) -> str:
    """A Nix string literal of `value`: its backslashes, quotes, line ends, tabs and `$` escaped (no interpolation)."""
    return '"' + "".join(NIX_ESCAPES.get(c, c) for c in value) + '"'


def _report(result: DeployResult, as_json: bool) -> int:
    if as_json:
        say_json(to_json(result))
    else:
        say(f"run {result.run_id} ({result.mode}):")
        width = max((len(o.host) for o in result.outcomes), default=4)
        for outcome in result.outcomes:
            say(f"  {outcome.host:<{width}}  {outcome.outcome:<11} {_outcome_detail(outcome)}")
        if result.stopped:
            say(f"  stopped: {result.stopped}")
        if result.failed:
            say(f"{len(result.failed)} host(s) did not end on the target: {', '.join(result.failed)} "
                  "(`topdeck deploy --retry-failed` retries them)")
    for outcome in result.outcomes:
        if not outcome.ok:
            say(f"topdeck: error: {outcome.host}: {outcome.outcome}: {outcome.reason}", sys.stderr)
    return 0 if result.ok else 1


def _outcome_detail(outcome: HostOutcome) -> str:
    if outcome.outcome == Outcome.DONE:
        fetched = (f", fetched {outcome.fetched_paths} paths ({size(outcome.fetched_bytes)})"
                   if outcome.fetched_paths else "")
        booted = ", booted and confirmed" if outcome.booted else ""
        return f"generation {outcome.generation}, {_name(outcome.after)}{fetched}{booted}"
    return outcome.reason


def _name(path: str) -> str:
    return path.rpartition("/")[2][33:] or path or "nothing"
