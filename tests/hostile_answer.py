"""The hostile host's side: sshd's ForceCommand. It answers topdeck's host-script protocol (core/remote/probe.sh,
core/remote/host.sh's verbs) the way a compromised host could, as the row named in `<folder>/row` says:

- text: markup, escape sequences, bidi overrides and a forged error line in every text field;
- huge: 2^64 and 10^400 where numbers go;
- superscript-digit / arabic-digit: '²' (isdigit, not int) and '٣' (int('٣') == 3) where numbers go;
- endless: megabytes without a line end (but for `generations`, so that a rollback runs);
- probe-error, probe-huge, probe-superscript-digit, probe-arabic-digit: the same in the probe's answer (a plan);
  in every other row the probe answers honestly (nothing installed, every path missing), so the host is planned
  and its deploy runs.

Every run fails (`result failed`), so a hostile host never counts as deployed. Usage: hostile_answer.py FOLDER."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile import FORGED, TEXT_ATTACKS  # noqa: E402

# A field's text: every attack but those that end a line (a line end, and U+2028, where Python's splitlines ends
# one), which would only start another line of the protocol; `run` sends those on lines of their own.
WIRE = " ".join(text for name, text in TEXT_ATTACKS.items() if name not in ("forged_error_line", "line_separator"))
HUGE, HUGER = str(2**64), "1" + "0" * 400
DIGITS = {"superscript-digit": "²", "arabic-digit": "٣"}
ENDLESS_BYTES = 8 * 1024 * 1024


def number(row: str) -> str:
    return HUGE if row == "huge" else DIGITS.get(row, "3")


def out(*fields: str) -> None:
    sys.stdout.write("\t".join(fields) + "\n")


def endless() -> None:
    chunk = "A" * 65536
    for _ in range(ENDLESS_BYTES // len(chunk)):
        sys.stdout.write(chunk)
    sys.stdout.flush()


def probe(row: str) -> None:
    attack = row.removeprefix("probe-") if row.startswith("probe-") else ""
    if attack == "error":
        out("error", WIRE)
        return
    if attack == "endless":
        endless()
        return
    out("current", "")
    out("booted", "")
    out("generation", HUGER if attack == "huge" else DIGITS.get(attack, "0"))
    out("free_kib", HUGER if attack == "huge" else "100000000")
    for line in sys.stdin.read().splitlines():
        out("missing", line)


def status(row: str) -> None:
    text = WIRE if row == "text" else "/nix/store/" + "0" * 32 + "-nixos-system-evil-1"
    out("current", text)
    out("booted", text)
    out("profile", text)
    out("generation", number(row))
    out("boot-id", WIRE)
    out("last-run", WIRE, WIRE, "failed", WIRE)
    if row == "text":
        out("deploying", WIRE)


def generations(row: str) -> None:
    for index, current in ((1, ""), (2, "current")):
        first = number(row) if index == 2 else "1"
        out("generation", first, WIRE, "/nix/store/" + "1" * 32 + f"-{WIRE}", WIRE, current)


def run(row: str) -> None:
    out("phase", "lock", WIRE)
    out("phase", "fetch", WIRE)
    out("log", WIRE)
    out("log", TEXT_ATTACKS["line_separator"])
    out("current", "/nix/store/" + "2" * 32 + f"-{WIRE}")
    out("progress", number(row), number(row), HUGER if row == "huge" else "10", HUGER if row == "huge" else "30")
    out("state", "generation", number(row))
    sys.stdout.write(FORGED + "\n")
    sys.stderr.write(f"{FORGED}\n{WIRE}\n")
    out("result", "failed", WIRE)


def main() -> int:
    folder = Path(sys.argv[1])
    row = (folder / "row").read_text().strip()
    words = shlex.split(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    with (folder / "commands.log").open("a") as log:
        log.write(" ".join(words[words.index("topdeck-host"):] if "topdeck-host" in words else words[-1:]) + "\n")
    if "topdeck-probe" in words:
        probe(row)
        return 0
    sys.stdin.read()  # the host script, sent on stdin
    verb = words[words.index("topdeck-host") + 1] if "topdeck-host" in words else ""
    if row == "endless" and verb != "generations":  # its generations are read, so that a rollback runs
        endless()
        return 0
    answers = {"status": status, "generations": generations, "deploy": run, "reboot": run, "follow": run,
               "confirm": run}
    answers.get(verb, lambda row: out("result", "failed", WIRE))(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
