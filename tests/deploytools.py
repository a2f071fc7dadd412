"""Helpers the deploy tests share: publish a role's next system, run `topdeck deploy`, read a lab host's state."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import write_lab_inventory

from topdeck.lab import factory
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.nixenv import lab_env

# A lab of every kind of host: host-1 native (this machine's Nix, no init), host-2 Debian 13 (Nix 2.26) and
# host-3 Debian sid (Nix 2.34), both booted with systemd as PID 1.
MIXED_KINDS = {"host-1": "native", "host-2": "trixie", "host-3": "sid"}


@contextmanager
def three_host_lab(root: Path, base_address: str, kinds: dict[str, str] | None = None) -> Iterator[Lab]:
    """A lab of its own for a test module: three hosts (native unless `kinds` says) and an emulator, torn down at
    the end."""
    lab = Lab(root, base_address=base_address, emulator_port=0)
    lab.up(count=3, kinds=kinds, log=lambda *_: None)
    try:
        yield lab
    finally:
        lab.down(log=lambda *_: None)


def deploy_inventory(lab: Lab, root: Path, confirm_timeout: int, lock_wait: int | None = None) -> Path:
    """host-1 and host-2 follow `web`, host-3 `db`; both pointers published once. `lock_wait` (the switch lock's)
    also bounds how long a deploy waits for a host it lost while it changed (confirm_timeout + lock_wait + 60 s)."""
    root = write_lab_inventory(lab, root, f"{root.parent.name[:12]}-{uuid.uuid4().hex[:6]}")
    with (root / "topdeck.toml").open("a") as config:
        config.write(f"\n[deploy]\nparallel = 8\nconfirm_timeout = {confirm_timeout}\n")
        if lock_wait is not None:
            config.write(f"lock_wait = {lock_wait}\n")
    release(root, "web", lambda spec: spec)
    release(root, "db", lambda spec: spec)
    return root


def far_inventory(lab: Lab, root: Path, word: str, hosts: tuple[str, ...],
                  cache_settings: str = "") -> tuple[Path, str, dict[str, str]]:
    """Every host follows a pointer of its own (new names: a host refuses a pointer's older serial) and runs its first
    version; the hosts fetch through the lab's download URL (the WAN lab's cache relay, when it has one)."""
    prefix = f"{word}-{uuid.uuid4().hex[:8]}"
    roles = {host: f"{prefix}-{host}" for host in hosts}
    root = write_lab_inventory(lab, root, prefix, roles=roles)
    with (root / "topdeck.toml").open("a") as config:
        config.write("\n[deploy]\nparallel = 3\nconfirm_timeout = 30\n")
    toml = (root / "topdeck.toml").read_text()
    (root / "topdeck.toml").write_text(toml.replace(
        "[cache]\n", f'[cache]\ndownload_url = "{lab.download_url}/file/{BUCKET}/{prefix}"\n{cache_settings}', 1))
    for host in hosts:
        release(root, roles[host], lambda spec: spec, via=host)
    result, _, outcomes = deploy(root)
    assert all(o["outcome"] == "done" for o in outcomes.values()), result.stdout[-3000:]
    return root, prefix, roles


def topdeck(inventory, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=timeout, env=lab_env())


def release(inventory, role: str, change, via: str = "") -> str:  # type: ignore[no-untyped-def]
    """Change the role's system spec, then build and publish it through `topdeck push` of host `via` (by default
    the first host of the role in the standard lab inventory)."""
    spec_file = inventory / f"{role}.json"
    spec = change(factory.spec_from_json(spec_file.read_text()))
    spec = dataclasses.replace(spec, version=f"24.11.{uuid.uuid4().hex[:6]}")
    spec_file.write_text(factory.spec_to_json(spec))
    host = via or ("host-3" if role == "db" else "host-1")
    result = topdeck(inventory, "push", host, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])["toplevel"]


def deploy(inventory, *args):
    result = topdeck(inventory, "deploy", "--yes", "--json", *args)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    plan = next(line for line in lines if line.get("event") == "Plan")
    outcome = lines[-1]
    assert outcome["event"] == "DeployResult", result.stdout[-2000:] + result.stderr
    return result, plan, {host["host"]: host for host in outcome["outcomes"]}


def state(lab: Lab, name: str) -> dict[str, object]:
    host = lab.host(name)
    return {"current": host.current_system(), "generation": host.generation(),
            "boot": host.sh("readlink /run/lab/boot-entry || true").strip(),
            "profile": host.sh("readlink -f /nix/var/nix/profiles/system || true").strip()}


def last_activation(lab: Lab, name: str) -> list[str]:
    return lab.host(name).sh("tail -n 1 /run/lab/activation.log").strip().split("\t")
