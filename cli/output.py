"""How the command line shows engine events: a live progress line on a terminal, or JSON lines."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import humanize

from topdeck.core.errors import Cancelled
from topdeck.core.events import Event, LogLine, Progress
from topdeck.core.facade import Fleet
from topdeck.core.inventory import Inventory


class EventPrinter:
    """An `emit` for the engine: progress as one redrawn line on a terminal (none elsewhere), logs as lines."""

    def __init__(self, stream: TextIO = sys.stderr, json_lines: bool = False, min_interval: float = 0.1):
        self.stream, self.json_lines, self.min_interval = stream, json_lines, min_interval
        self.live = stream.isatty() and not json_lines
        self._last_draw = 0.0
        self._line_open = False

    def __call__(self, event: Event) -> None:
        if self.json_lines:
            print(json.dumps(to_json(event)), file=sys.stdout, flush=True)
        elif isinstance(event, LogLine):
            self._end_line()
            prefix = f"{event.host} | " if event.host else ""
            print(f"{prefix}{event.text}", file=self.stream, flush=True)
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
        self.stream.write("\r\x1b[K" + describe(event))
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


def one_line(text: str) -> str:
    """`text` with its control characters (newlines, escape sequences) spelt out, so an error stays one line
    and a hostile value cannot forge more lines or drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def ask(question: str) -> bool:
    """Ask a yes/no question on the terminal; without a terminal, refuse (the caller's --yes skips asking)."""
    if not sys.stdin.isatty():
        raise Cancelled(f"{question} Not asked: stdin is not a terminal; pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def size(nbytes: int) -> str:
    return humanize.naturalsize(nbytes, binary=True)


def to_json(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"event": type(value).__name__, **dataclasses.asdict(value)}
    return value


def load_inventory(root: Path) -> Inventory:
    """core's load_inventory, with SSH key passphrases asked on the terminal (once per key file per run)."""
    from topdeck.core.inventory import load_inventory as load
    from topdeck.core.ssh import AskOnce

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
    return getpass.getpass(f"Passphrase for {path}: ")
