"""How the command line shows engine events: a live progress line on a terminal, or JSON lines."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import humanize

from topdeck.core.errors import Cancelled
from topdeck.core.events import Event, HostPhase, LogLine, Progress, WaveStarted
from topdeck.core.facade import Fleet
from topdeck.core.inventory import Inventory
from topdeck.core.shown import shown

BAR_WIDTH = 20


def say(text: str = "", file: TextIO | None = None) -> None:
    """Print one line on stdout (or `file`). Every line the CLI prints goes through here or `say_json`: the text
    passes through `shown`, so a value from a host, the bucket, Nix or the inventory inside it can neither start
    another line nor drive the terminal (tests/unit/test_shown.py checks that cli/ prints nothing any other way)."""
    print(shown(text), file=file or sys.stdout, flush=True)


def say_lines(lines: Iterable[str], file: TextIO | None = None) -> None:
    for line in lines:
        say(line, file)


def say_json(value: object, indent: int | None = None) -> None:
    """A JSON document on stdout, as is: json.dumps spells out every control and non-ASCII character."""
    print(json.dumps(value, indent=indent, default=str), flush=True)


class EventPrinter:
    """An `emit` for the engine: progress as one redrawn line on a terminal (none elsewhere), logs as lines."""

    def __init__(self, stream: TextIO = sys.stderr, json_lines: bool = False, min_interval: float = 0.1):
        self.stream, self.json_lines, self.min_interval = stream, json_lines, min_interval
        self.live = stream.isatty() and not json_lines
        self._last_draw = 0.0
        self._line_open = False

    def __call__(self, event: Event) -> None:
        if self.json_lines:
            say_json(to_json(event))
        elif isinstance(event, LogLine):
            self._end_line()
            say(f"{event.host} | {event.text}" if event.host else event.text, self.stream)
        elif isinstance(event, Progress) and self.live:
            self._draw(event)

    def close(self) -> None:
        self._end_line()

    def _draw(self, event: Progress) -> None:
        now = time.monotonic()
        finished = event.paths_total and event.paths_done == event.paths_total
        if now - self._last_draw < self.min_interval and not finished:
            return
        self._last_draw = now
        self.stream.write("\r\x1b[K" + shown(describe(event)))
        self.stream.flush()
        self._line_open = True

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False


def describe(event: Progress) -> str:
    parts = [f"{event.host}: " if event.host else "", event.phase]
    if event.paths_total:
        parts.append(f" {event.paths_done}/{event.paths_total} paths")
    if event.bytes_total:
        parts.append(f", {size(event.bytes_done)} of {size(event.bytes_total)}")
    if event.rate:
        parts.append(f", {size(int(event.rate))}/s")
    if event.current:
        parts.append(f" ({event.current})")
    return "".join(parts)


SELECTOR_HELP = "hosts: a name, a glob (web-*) or a tag (@db); repeatable or comma-separated"


def add_selector_option(parser: argparse.ArgumentParser, help: str = SELECTOR_HELP) -> None:
    parser.add_argument("--on", action="append", default=[], type=selector, metavar="SELECTOR", help=help)


def selector(value: str) -> str:
    """An argparse type for host selectors: one that names nothing ('' or ',') would select every host."""
    if not any(part for part in value.split(",")):
        raise argparse.ArgumentTypeError(f"{value!r} names no host: give a name, a glob (web-*) or a tag (@db)")
    return value


def ask(question: str, unasked: str = "pass --yes") -> bool:
    """Ask a yes/no question on the terminal; without a terminal, refuse (the caller's --yes skips asking)."""
    if not sys.stdin.isatty():
        raise Cancelled(f"{question} Not asked: stdin is not a terminal; {unasked}")
    return input(shown(f"{question} [y/N] ")).strip().lower() in ("y", "yes")


def size(nbytes: int) -> str:
    return humanize.naturalsize(nbytes, binary=True)


def to_json(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"event": type(value).__name__, **dataclasses.asdict(value)}
    return value


def load_inventory(root: Path) -> Inventory:
    """core's load_inventory, with SSH key passphrases asked on the terminal (once per key file per run)."""
    from topdeck.core.inventory import load_inventory as load
    from topdeck.core.remote.ssh import AskOnce

    inventory = load(root)
    ssh = dataclasses.replace(inventory.ssh, passphrase=AskOnce(terminal_passphrase))
    return dataclasses.replace(inventory, ssh=ssh)


def open_fleet(root: Path) -> Fleet:
    """The facade on the inventory at `root`, with SSH key passphrases asked on the terminal."""
    return Fleet(load_inventory(root))


def terminal_passphrase(path: Path) -> str:
    """Ask for a key's passphrase without echoing it; without a terminal, say to use ssh-agent."""
    import getpass

    if not sys.stdin.isatty():
        raise Cancelled(f"the key {path} is protected by a passphrase and stdin is not a terminal: load it into "
                        f"ssh-agent (ssh-add {path})")
    return getpass.getpass(shown(f"Passphrase for {path}: "))


class DeployBoard:
    """An `emit` for deploys: on a terminal, one live row per host (phase, bar, paths, bytes) with log lines
    above; elsewhere, one line per phase change, on `log_stream` (stdout: a log of the run, beside the plan and
    the report, so that stderr holds only the errors); with json_lines, every event as a JSON line."""

    def __init__(self, stream: TextIO = sys.stderr, json_lines: bool = False, min_interval: float = 0.1,
                 log_stream: TextIO | None = None):
        self.min_interval = min_interval
        self.json = EventPrinter(json_lines=True) if json_lines else None
        self.live = stream.isatty() and not json_lines
        self.stream = stream if self.live else (log_stream or sys.stdout)
        self.rows: dict[str, str] = {}
        self._drawn = 0
        self._last = 0.0

    def __call__(self, event: Event) -> None:
        if self.json is not None:
            if not isinstance(event, Progress) or self._due():
                self.json(event)
            return
        if isinstance(event, LogLine):
            self._print(f"{event.host} | {event.text}" if event.host else event.text)
        elif isinstance(event, WaveStarted) and event.count > 1:
            self._print(f"wave {event.index} of {event.count}: {', '.join(event.hosts)}")
        elif isinstance(event, HostPhase):
            self.rows[event.host] = f"{event.phase}{f' ({event.detail})' if event.detail else ''}"
            if not self.live:
                self._print(f"{event.host}: {self.rows[event.host]}")
            self._redraw(force=True)
        elif isinstance(event, Progress) and event.host:
            self.rows[event.host] = _bar(event)
            self._redraw()

    def close(self) -> None:
        self._redraw(force=True)

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.min_interval:
            return False
        self._last = now
        return True

    def _print(self, text: str) -> None:
        self._clear()
        say(text, self.stream)
        self._redraw(force=True)

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn:d}F\x1b[J")
            self._drawn = 0

    def _redraw(self, force: bool = False) -> None:
        if not self.live or not (force or self._due()):
            return
        self._clear()
        width = max((len(name) for name in self.rows), default=0)
        for name, row in self.rows.items():
            self.stream.write(shown(f"{name:<{width}}  {row}")[:200] + "\n")
        self._drawn = len(self.rows)
        self.stream.flush()


def _bar(event: Progress) -> str:
    share = event.bytes_done / event.bytes_total if event.bytes_total else (
        event.paths_done / event.paths_total if event.paths_total else 0.0)
    filled = min(BAR_WIDTH, int(share * BAR_WIDTH))
    return (f"fetch [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {event.paths_done}/{event.paths_total} paths, "
            f"{size(event.bytes_done)} of {size(event.bytes_total)}{f' {event.current}' if event.current else ''}")


def ago(seconds: float) -> str:
    """A past moment (seconds since the epoch) as people say it: "3 days ago"."""
    return humanize.naturaltime(datetime.now(tz=UTC) - datetime.fromtimestamp(seconds, tz=UTC))


def until(seconds: float) -> str:
    """A future moment as people say it: "in 6 hours"."""
    return humanize.naturaltime(datetime.fromtimestamp(seconds, tz=UTC), when=datetime.now(tz=UTC))
