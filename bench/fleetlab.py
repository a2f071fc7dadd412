"""Pieces the fleet benchmarks share: labs of their own, inventories, and counts taken outside topdeck (the hosts'
sshd logs, this process's CPU time, plain OpenSSH runs).

Each fleet benchmark starts a lab of its own on one /24 of 127.0.50.0–127.0.59.255 (never the shared lab's or the
tests' addresses) and stops it when done.
"""

from __future__ import annotations

import contextlib
import resource
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import log, use_lab_nix, work_root
from topdeck.core.cache.interface import Cache
from topdeck.core.cache.push import push
from topdeck.core.inventory import Inventory, load_inventory
from topdeck.core.nix.signing import SecretKey
from topdeck.core.nix.store import parse_store_path
from topdeck.lab import factory
from topdeck.lab.lab import BUCKET, Lab


@contextlib.contextmanager
def own_lab(name: str, base_address: str, count: int, kinds: Mapping[str, str] | None = None,
            operator_key_of: Lab | None = None) -> Iterator[Lab]:
    """A lab of `count` hosts (host-1...) from `base_address` up, `kinds` giving some an image; stopped after. With
    `operator_key_of`, its operator key is that lab's (the systems built for that lab let it log in)."""
    use_lab_nix()
    lab = Lab(work_root() / name, base_address=base_address, emulator_port=0)
    if operator_key_of is not None:
        lab.root.mkdir(parents=True, exist_ok=True)
        for key in (operator_key_of.client_key, operator_key_of.client_key.with_suffix(".pub")):
            shutil.copy2(key, lab.root / key.name)
    try:
        started = time.perf_counter()
        lab.up(count=count, kinds=dict(kinds or {}), log=lambda *_: None)
        log(f"{name}: {count} hosts up on {base_address} and up in {time.perf_counter() - started:.1f} s")
        yield lab
    finally:
        lab.down(log=lambda *_: None)


def write_inventory(lab: Lab, root: Path, names: list[str], prefix: str, pointer: str, parallel: int,
                    addresses: Mapping[str, str] | None = None, known_hosts: Path | None = None) -> Inventory:
    """An inventory of the lab's hosts `names`, all following `pointer`, `parallel` at a time. `addresses` may put
    some hosts at another address (a forwarder in front of them), `known_hosts` pinning their keys there."""
    root.mkdir(parents=True)
    (root / "topdeck.toml").write_text(
        f'[cache]\nbucket = "{BUCKET}"\nprefix = "{prefix}"\nrealm = "{lab.emulator.url}"\n'
        f'credentials_file = "{lab.b2_credentials}"\nsigning_key = "{lab.cache_secret_key}"\n'
        f'public_key_file = "{lab.cache_public_key}"\n\n'
        f'[ssh]\nknown_hosts = "{known_hosts or lab.known_hosts}"\nidentity = "{lab.client_key}"\n'
        f'connect_timeout = 30\n\n'
        f'[deploy]\nparallel = {parallel}\n')
    for name in names:
        (root / name).mkdir()
        address = (addresses or {}).get(name) or lab.host(name).address
        (root / name / "host.toml").write_text(f'address = "{address}"\npointer = "{pointer}"\n')
    return load_inventory(root)


class ChangingSystem:
    """A lab system that a benchmark changes by one package upgrade at a time, each pushed and published."""

    def __init__(self, lab: Lab, host: str, workdir: Path, cache: Cache, key: SecretKey, pointer: str):
        self.spec = factory.initial_system([lab.client_public_key()], host=host, count=60)
        self.workdir, self.cache, self.key, self.pointer = workdir, cache, key, pointer
        self.versions = 0

    def publish_change(self) -> str:
        """A new system with one package upgraded, pushed, and the pointer moved to it."""
        self.versions += 1
        self.spec = factory.upgrade(self.spec, "zlib", f"1.3.{self.versions + 100}", size=400_000)
        path = factory.build(self.spec, self.workdir)
        push(parse_store_path(path), self.cache, self.key, pointer=self.pointer)
        return path


class SshdCount:
    """Logins and sessions (one per command run: a round trip) on each host, counted from the hosts' own sshd logs
    (LogLevel VERBOSE: `Accepted publickey ...`, `Starting session: ...`), not from what topdeck believes."""

    def __init__(self, lab: Lab, names: list[str]):
        self.lab, self.names = lab, names
        self.before = self._read()

    def _read(self) -> dict[str, tuple[int, int]]:
        counts = {}
        for name in self.names:
            text = self.lab.host(name).sshd_log.read_text(errors="replace")
            counts[name] = (text.count("Accepted publickey for "), text.count("Starting session: "))
        return counts

    def per_host(self) -> tuple[float, float, float, float]:
        """(mean logins, mean sessions, most logins, most sessions) per host since this count began."""
        after = self._read()
        logins = [after[n][0] - self.before[n][0] for n in self.names]
        sessions = [after[n][1] - self.before[n][1] for n in self.names]
        return sum(logins) / len(logins), sum(sessions) / len(sessions), max(logins), max(sessions)


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far, every thread of it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Measured:
    seconds: float
    cpu: float
    result: Any


def measure(action: Any) -> Measured:
    """Wall time and this process's CPU time of `action()`."""
    cpu, started = cpu_seconds(), time.perf_counter()
    result = action()
    return Measured(time.perf_counter() - started, cpu_seconds() - cpu, result)


# The key exchange topdeck's paramiko negotiates. OpenSSH 9.x prefers sntrup761x25519, whose portable code costs
# about 0.12 s of CPU on each side per login here (0.01 s with curve25519): a floor with it would flatter topdeck.
FLOOR_KEX = "curve25519-sha256"


def ssh_argv(lab: Lab, address: str, known_hosts: Path | None = None) -> list[str]:
    """The plain OpenSSH client's command line to log in to a lab host as root, with topdeck's key exchange."""
    return ["ssh", "-i", str(lab.client_key), "-o", f"UserKnownHostsFile={known_hosts or lab.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
            "-o", f"KexAlgorithms={FLOOR_KEX}", f"root@{address}"]


def ssh_all(lab: Lab, commands: Mapping[str, str], known_hosts: Path | None = None) -> float:
    """Run one command on each host (name: shell command) with the plain `ssh` client, all at once; the seconds
    until the last ended. Any failure raises."""
    def one(item: tuple[str, str]) -> None:
        name, command = item
        result = subprocess.run([*ssh_argv(lab, lab.host(name).address, known_hosts), command],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"ssh {name} {shlex.quote(command)[:80]}: exit {result.returncode}: "
                               f"{result.stderr.strip()[-300:]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(commands))) as pool:
        list(pool.map(one, commands.items()))
    return time.perf_counter() - started
