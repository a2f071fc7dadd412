"""`topdeck exec [--on SELECTOR] -- COMMAND...`: a command on hosts, each line live behind its host's name, then the
hosts grouped by exit code and output."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from topdeck.cli.output import add_selector_option, open_fleet, say, say_json, to_json
from topdeck.core.events import Event, LogLine
from topdeck.core.hostexec import ExecResult, check_command, check_timeout


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "exec", help="run a command on hosts: live output per host, then the hosts grouped by result",
        description="Runs COMMAND on each selected host over the same SSH path as a deploy (ssh_config, jump hosts, "
        "pinned host keys; through `sudo -n` where host.toml sets sudo = true). Each line the host prints is shown "
        "as it comes, behind the host's name; then hosts whose exit code and output are the same are grouped. The "
        "words after `--` are the command's argv, each quoted once and never split again: for a pipeline, run a "
        "shell (-- sh -c 'journalctl -u nginx | tail'). Exits 0 only when the command exited 0 on every host.",
    )
    add_selector_option(parser, help="hosts (default: all): a name, a glob (web-*) or a tag (@db)")
    parser.add_argument("--parallel", type=parallel_arg, metavar="N", help="hosts at a time (default: deploy.parallel)")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop the command on a host after S seconds")
    parser.add_argument("--json", action="store_true", help="JSON lines: each output line, then the result")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...", help="the command and its "
                        "arguments")
    parser.set_defaults(handler=exec_command)


def exec_command(args: argparse.Namespace) -> int:
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    check_command(argv)
    check_timeout(args.timeout)
    fleet = open_fleet(args.inventory)
    cancel = threading.Event()
    emit = _json_line if args.json else _live_line
    interrupted = False
    with ThreadPoolExecutor(1, thread_name_prefix="topdeck-exec-main") as pool:
        running = pool.submit(fleet.run_command, args.on, argv, parallel=args.parallel, timeout=args.timeout,
                              emit=emit, cancel=cancel)
        try:
            result = running.result()
        except KeyboardInterrupt:  # stop the command on every host (its process group), then report
            interrupted = True
            cancel.set()
            say("stopping the command on every host…", sys.stderr)
            result = running.result()
    if args.json:
        say_json(result_json(result))
    else:
        for line in render_summary(result):
            say(line)
    if interrupted:
        raise KeyboardInterrupt  # main says so, and exits 130
    return 0 if result.ok else 1


def _live_line(event: Event) -> None:
    if isinstance(event, LogLine):
        say(f"{event.host} | {event.text}")


def _json_line(event: Event) -> None:
    say_json(to_json(event))


def render_summary(result: ExecResult) -> list[str]:
    """The hosts grouped by how the command ended and what it printed; the last line counts them."""
    lines = [""]
    for group in result.groups():
        count = f" ({len(group.hosts)} hosts)" if len(group.hosts) > 1 else ""
        lines.append(f"{group.ending}: {', '.join(group.hosts)}{count}")
        lines.extend(f"  | {line}" for line in group.output)
        if not group.output:
            lines.append("  (no output)")
    ok = sum(1 for run in result.runs if run.ok)
    failed = f"; failed: {', '.join(result.failed)}" if result.failed else ""
    lines.append(f"{ok} of {len(result.runs)} host(s) exited 0{failed}")
    return lines


def result_json(result: ExecResult) -> dict[str, object]:
    return {"event": "ExecResult", "ok": result.ok, "command": list(result.command),
            "hosts": [{**dataclasses.asdict(run), "ending": run.ending} for run in result.runs],
            "groups": [{"hosts": list(group.hosts), "exit_code": group.exit_code, "ending": group.ending,
                        "output": list(group.output)} for group in result.groups()]}


def parallel_arg(value: str) -> int:
    number = int(value) if value.isascii() and value.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of hosts, 1 or more")
    return number
