"""Pure presentation helpers for the TUI: short names, sizes, times, colours. No Textual, no I/O."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import humanize
from rich.text import Text

from topdeck.core.nix.diff import ClosureDiff, PackageChange, render_size_delta, show_versions
from topdeck.core.nix.store import split_name_version
from topdeck.core.planreport import changes_by_kind
from topdeck.core.vocabulary import SWITCH_MODES, HostState, Phase
from topdeck.tui.text import plain, shown

Clock = Callable[[], float]

STATUS_STYLES: dict[str, str] = {
    HostState.UP_TO_DATE: "green",
    HostState.BEHIND: "yellow",
    HostState.DRIFTED: "magenta",
    HostState.UNREACHABLE: "red",
    HostState.HOST_KEY: "bold red",
    HostState.DEPLOYING: "cyan",
    HostState.ROLLED_BACK: "dark_orange",
    HostState.ERROR: "red",
}

PHASE_STYLES: dict[str, str] = {
    Phase.DONE: "green",
    Phase.FAILED: "bold red",
    Phase.ROLLED_BACK: "dark_orange",
    Phase.SKIPPED: "dim",
    Phase.CANCELLED: "yellow",
    Phase.QUEUED: "dim",
    Phase.SWITCH_LOCK: "yellow",  # the switch waits for a lock another process holds
}

KIND_STYLES = {
    "upgraded": "green",
    "downgraded": "yellow",
    "added": "cyan",
    "removed": "red",
    "changed": "dim",
}

KIND_TITLES = {
    "upgraded": "upgrades",
    "downgraded": "downgrades",
    "added": "added",
    "removed": "removed",
    "changed": "rebuilt",
}

MODES = SWITCH_MODES


def size(nbytes: int | float) -> str:
    return humanize.naturalsize(int(nbytes), binary=True)


BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size_pair(done: int, total: int) -> str:
    """`done/total` in the total's unit, the unit once: `1004.1/1007.1 KiB` (17 characters at most)."""
    number, _, unit = size(total).partition(" ")
    if unit not in BINARY_UNITS:  # "Bytes" or "Byte"
        return f"{done}/{number} B"
    return f"{done / 1024 ** (BINARY_UNITS.index(unit) + 1):.1f}/{number} {unit}"


def signed_size(nbytes: int) -> str:
    sign = "+" if nbytes >= 0 else "-"
    return f"{sign}{size(abs(nbytes))}"


def store_name(path: object) -> str:
    """The name part of a store path (`/nix/store/<hash>-<name>` -> `<name>`), or the text itself."""
    text = str(path or "")
    if text.startswith("/nix/store/") and len(text) > 44:
        return text[44:]
    return text


def short_path(path: object) -> str:
    """A store path with its hash cut to 8 characters: `/nix/store/cyh7pw1v…-nixos-system-db-24.05`."""
    text = str(path or "")
    if text.startswith("/nix/store/") and len(text) > 44:
        return f"/nix/store/{text[11:19]}…{text[43:]}"
    return text or "-"


def short_system(path: object) -> str:
    """A toplevel as `<short name> <version>`: `nixos-system-web1-24.05.1` -> `web1 24.05.1`."""
    name = store_name(path)
    if not name:
        return "-"
    base, version = split_name_version(name)
    base = base.removeprefix("nixos-system-")
    return f"{base} {version}".strip()


def status_text(status: str) -> Text:
    return plain(status.replace("-", " ") if status else "…", style=STATUS_STYLES.get(status, "dim"))


def phase_text(phase: str) -> Text:
    return plain(phase, style=PHASE_STYLES.get(phase, "cyan"))


def when(stamp: float, clock: Clock = time.time) -> str:
    """A past moment (seconds since the epoch) as `3 minutes ago`."""
    if not stamp:
        return "-"
    return humanize.naturaltime(datetime.fromtimestamp(clock(), tz=UTC) - datetime.fromtimestamp(stamp, tz=UTC))


def until(stamp: float, clock: Clock = time.time) -> str:
    """A future moment (seconds since the epoch) as `in 3 days`."""
    return humanize.naturaltime(datetime.fromtimestamp(stamp, tz=UTC), when=datetime.fromtimestamp(clock(), tz=UTC))


def duration(seconds: float) -> str:
    return humanize.naturaldelta(max(0.0, seconds)) if seconds >= 1 else f"{seconds:.1f} s"


def bar(done: int, total: int, width: int = 16) -> Text:
    """A text progress bar with its percentage."""
    fraction = min(1.0, done / total) if total else 0.0
    filled = int(round(fraction * width))
    text = plain("━" * filled, style="green")
    text.append(shown("━" * (width - filled)), style="grey30")
    text.append(shown(f" {fraction * 100:3.0f}%"))
    return text


def change_line(change: PackageChange) -> Text:
    """One diff line, colour-coded by kind: `openssl: 3.0.13 → 3.0.14, +12.5 KiB`."""
    style = KIND_STYLES.get(change.kind, "")
    text = Text("  ")
    text.append(shown(change.name), style=f"bold {style}")
    text.append(": ")
    if change.versions_changed:
        versions = f"{show_versions(change.removed_versions)} → {show_versions(change.added_versions)}"
        text.append(shown(versions), style=style)
    if change.size_shown:
        if change.versions_changed:
            text.append(", ")
        text.append(shown(render_size_delta(change.size_delta)), style="red" if change.size_delta > 0 else "green")
    return text


def diff_text(diff: ClosureDiff, *, show_rebuilds: bool = False) -> Text:
    """A closure diff grouped by kind (upgrades, downgrades, added, removed), as Nix names the changes."""
    out = Text()
    grouped = changes_by_kind(diff, rebuilds=show_rebuilds)
    if not grouped:
        out.append("  no package changes\n", style="dim")
    for kind, changes in grouped:
        out.append(shown(f" {KIND_TITLES[kind]} ({len(changes)})") + "\n", style=f"bold {KIND_STYLES[kind]}")
        for change in changes:
            out.append_text(change_line(change))
            out.append("\n")
    return out
