"""Helpers for tests that call the real Nix: run it with the lab's settings, build small closures."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from topdeck.core.nix import localnix
from topdeck.lab.nixenv import lab_env

# `mk NAME SCRIPT`: a derivation built by /bin/sh (a builder's PATH is empty: call tools by absolute path).
MK = """
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir $out && ${script}" ];
  };
"""


def run_nix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=lab_env(), capture_output=True, text=True, timeout=300)


def nix(*args: str) -> str:
    result = run_nix(*args)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def build_closure(directory: Path, bindings: str, result: str) -> str:
    """nix-build `let mk = ...; BINDINGS in RESULT` and return the store path."""
    expression = directory / "closure.nix"
    expression.write_text(f"let\n{MK}{bindings}\nin {result}\n")
    return nix("nix-build", str(expression), "--no-out-link").strip()


def path_info_command(*args: str) -> list[str]:
    """`nix path-info --json ARGS` in the JSON form this Nix prints without a deprecation warning."""
    form = ["--json-format", "1"] if localnix.detect_nix(lab_env()).has_json_format else []
    return ["nix", "path-info", "--json", *form, *args]


def path_info_entries(stdout: str) -> list[dict]:  # type: ignore[type-arg]
    """What path_info_command printed, as a list of entries with their "path" (the form of Nix 2.8)."""
    document = json.loads(stdout)
    if isinstance(document, list):
        return document
    return [{**entry, "path": path} for path, entry in document.items()]


def path_info_json(*args: str) -> list[dict]:  # type: ignore[type-arg]
    return path_info_entries(nix(*path_info_command(*args)))


def derivation_file(folder: Path, script: str, name: str = "localnix-test") -> Path:
    """A .nix file of one /bin/sh derivation, unique to this run so Nix really builds it."""
    file = folder / f"{name}.nix"
    file.write_text(
        "builtins.derivation {\n"
        f'  name = "{name}"; nonce = "{uuid.uuid4()}";\n'
        '  system = builtins.currentSystem; builder = "/bin/sh";\n'
        f"  args = [ \"-c\" {json.dumps(script)} ];\n"
        "}\n"
    )
    return file
