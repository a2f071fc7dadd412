"""Helpers for tests that call the real Nix: run it with the lab's settings, build small closures."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
