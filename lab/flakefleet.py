"""Flake fleets for the lab: a flake without inputs whose nixosConfigurations are the factory's toplevels.

A flake is evaluated purely: it can read only its own files, so it can neither import ../lab/nix nor read the lab
operator's key from the lab's folder. The flake written here therefore holds a copy of the factory
(toplevel.nix) and each system's spec, the operator's keys included, in systems/<role>.json; it builds offline
with any Nix from 2.8 on. `topdeck demo --flake` writes one for the demo fleet into the lab's folder, with an
inventory beside it (topdeck.toml with `[build] flake = "."`); the tests write their own.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path

from topdeck.core.inventory import CONFIG_FILE, HOST_FILE, Inventory, is_safe_name
from topdeck.lab import factory
from topdeck.lab.errors import LabError

FLAKE_NIX = """\
# The lab's flake fleet: no inputs; each host's system comes from the lab's toplevel factory (a copy, so that
# pure evaluation finds it inside the flake) and the spec of its role, in systems/<role>.json.
{{
  description = "topdeck lab fleet";

  outputs = {{ self }}:
    let
      system = "{system}";
      lab = role: {{
        config.system.build.toplevel = import ./toplevel.nix {{ inherit system; specFile = ./systems/${{role}}.json; }};
      }};
    in {{
      nixosConfigurations = {{
{configurations}
      }};
    }};
}}
"""


def nix_system() -> str:
    """This machine's Nix system name (x86_64-linux, aarch64-linux)."""
    machine = platform.machine()
    return f"{ {'amd64': 'x86_64', 'arm64': 'aarch64'}.get(machine, machine)}-linux"


def write_flake(folder: Path, roles: Mapping[str, str], specs: Mapping[str, factory.SystemSpec]) -> Path:
    """A flake in `folder` with nixosConfigurations.<host> for each host -> role of `roles`, each role's system
    from its spec. Returns the folder."""
    for name in [*roles, *specs]:
        if not is_safe_name(name):
            raise LabError(f"{name!r}: not a host or role name a flake can hold")
    missing = sorted(set(roles.values()) - set(specs))
    if missing:
        raise LabError(f"no system spec for role {missing[0]}")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(factory.TOPLEVEL_NIX, folder / "toplevel.nix")
    write_specs(folder, specs)
    configurations = "\n".join(f'        "{host}" = lab "{role}";' for host, role in roles.items())
    (folder / "flake.nix").write_text(FLAKE_NIX.format(system=nix_system(), configurations=configurations))
    return folder


def write_specs(folder: Path, specs: Mapping[str, factory.SystemSpec]) -> None:
    """(Re)write the flake's systems/<role>.json: a new release of those roles."""
    (folder / "systems").mkdir(parents=True, exist_ok=True)
    for role, spec in specs.items():
        (folder / "systems" / f"{role}.json").write_text(factory.spec_to_json(spec))


def demo_flake_fleet(inventory: Inventory, target: Path, authorized_keys: list[str]) -> Path:
    """The demo fleet as a flake inventory in `target`: its topdeck.toml with `[build] flake = "."`, each host's
    host.toml without a [build] of its own, and the flake; a host's role is its pointer, whose system is
    systems/<pointer>.json of the demo inventory, with `authorized_keys`. Returns `target`."""
    specs = {}
    for pointer in {host.pointer for host in inventory.hosts}:
        source = inventory.root / "systems" / f"{pointer}.json"
        if not source.is_file():
            raise LabError(f"{source}: not found (the system of pointer {pointer})")
        spec = factory.spec_from_json(source.read_text())
        specs[pointer] = dataclasses.replace(spec, authorized_keys=tuple(authorized_keys))
    if target.exists():
        shutil.rmtree(target)
    write_flake(target, {host.name: host.pointer for host in inventory.hosts}, specs)
    config = (inventory.root / CONFIG_FILE).read_text()
    (target / CONFIG_FILE).write_text(config.rstrip("\n") + '\n\n[build]\nflake = "."  # nixosConfigurations.<host>'
                                      ' of ./flake.nix\n')
    for host in inventory.hosts:
        (target / host.name).mkdir()
        tags = ", ".join(f'"{tag}"' for tag in host.tags)
        (target / host.name / HOST_FILE).write_text(
            f'address = "{host.address}"\nport = {host.port}\npointer = "{host.pointer}"\ntags = [{tags}]\n')
    return target
