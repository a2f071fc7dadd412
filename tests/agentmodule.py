"""Evaluate topdeck's NixOS modules as an operator uses them: copied out of this repository beside a configuration.nix,
then evaluated by the real `nix-instantiate --eval --strict` against tests/data/module_stand_in.nix (a small stand-in
for nixpkgs' lib, pkgs and config: there is no nixpkgs on this machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from topdeck.lab.nixenv import lab_env

REPO = Path(__file__).resolve().parent.parent
MODULES = REPO / "hosts" / "modules"
STAND_IN = Path(__file__).resolve().parent / "data" / "module_stand_in.nix"


def configuration(folder: Path, body: str, modules: tuple[str, ...] = ("topdeck-agent",)) -> Path:
    """A fresh folder holding copies of `modules` (as `cp -rL` copies them: the agent's host.sh is a link to
    core/remote/host.sh in this repository, copied as the file it names) and a configuration.nix of `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in modules:
        source = MODULES / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        else:
            shutil.copy(source, folder / name)
    path = folder / "configuration.nix"
    path.write_text("{ config, lib, pkgs, ... }:\n{\n" + body + "\n}\n")
    return path


def evaluate(configuration_file: Path) -> subprocess.CompletedProcess[str]:
    """--read-write-mode: the module's ./host.sh is copied into the store, as a NixOS build would copy it."""
    expression = f"import {STAND_IN} {{ configuration = {configuration_file}; }}"
    return subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode", "-E", expression],
                          capture_output=True, text=True, env=lab_env(), cwd=configuration_file.parent, timeout=60)


def systemd_units(configuration_file: Path) -> dict:  # type: ignore[type-arg]
    result = evaluate(configuration_file)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
