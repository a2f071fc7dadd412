"""Benchmark: honest baselines, side by side in one run, on a lab of its own (20 native hosts on 127.0.52.11 and up).

- a changed closure (the 1 %-changed variant of the ~1000-path closure) to 10 hosts that run the base closure:
  topdeck (push the change once to the bucket, the hosts pull it) against the push model of colmena and deploy-rs
  (`nix copy --to ssh://root@HOST` to every host at once, then activate over SSH). Wall time, and the bytes the
  operator's machine uploads, measured for real: the emulator's received bytes and, for every SSH connection, a
  counting TCP forwarder (topdeck.lab.forward) in front of each host on 127.0.53.x;
- the 20-host small-change deploy against its floor: the same 20 hosts running the same `nix-store -r` from the same
  cache, then the same activation, at once over plain OpenSSH (the `ssh` client, no topdeck). topdeck's own CPU
  time per host is reported.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    Figure,
    b2_cache,
    closures,
    counters,
    log,
    median,
    repeats,
    shared_lab,
    signing_key,
    work_root,
)
from bench.fleetlab import ChangingSystem, measure, own_lab, ssh_all, ssh_argv, write_inventory
from topdeck.core.cache.push import push
from topdeck.core.events import DeployResult, HostPhase
from topdeck.core.nix.store import parse_store_path
from topdeck.core.operations import deploy_fleet, plan_fleet
from topdeck.lab import forward
from topdeck.lab.hosts import SYSTEM_PROFILE, wait_for
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.nixenv import lab_env

BASE_ADDRESS = "127.0.52.11"
FORWARD_BLOCK = "127.0.53"  # the counting forwarders: 127.0.53.11 and up, one in front of each host
HOSTS = 20
PUSH_MODEL_HOSTS = 10
POINTER = "baseline"


def run(quick: bool = False, hosts: int = HOSTS, push_hosts: int = PUSH_MODEL_HOSTS,
        base_address: str = BASE_ADDRESS, forward_block: str = FORWARD_BLOCK) -> list[Figure]:
    # The ~1000-path closures are built for the shared lab's operator key: this lab's hosts take the same key.
    with own_lab("baseline-lab", base_address, hosts, operator_key_of=shared_lab()) as lab:
        names = [f"host-{i}" for i in range(1, hosts + 1)]
        figures = PushModel(lab, names[:push_hosts], forward_block, quick).figures()
        return figures + Floor(lab, names, quick).figures()


# --- a changed closure to 10 hosts: topdeck against the push model ------------------------------------------------


class PushModel:
    def __init__(self, lab: Lab, names: list[str], forward_block: str, quick: bool):
        self.lab, self.names, self.quick = lab, names, quick
        self.built = closures()
        self.forwarders: list[int] = []
        self.front = {name: f"{forward_block}.{10 + i}" for i, name in enumerate(names, 1)}
        self.known_hosts = lab.root / "known_hosts.forwarded"

    def figures(self) -> list[Figure]:
        log(f"baselines: the base closure on {len(self.names)} hosts")
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda name: self.lab.host(name).install(self.built.base, lab_env()), self.names))
        self._start_forwarders()
        try:
            ours, theirs = [], []
            for _ in range(repeats(self.quick, 3)):
                ours.append(self._topdeck())
                self._reset()
                theirs.append(self._nix_copy())
                self._reset()
        finally:
            for pid in self.forwarders:
                os.kill(pid, signal.SIGTERM)
        seconds, uploaded = median(o[0] for o in ours), median(o[1] for o in ours)
        their_seconds, their_bytes = median(t[0] for t in theirs), median(t[1] for t in theirs)
        n = len(self.names)
        detail = ours[-1][2]
        return [
            Figure(f"changed closure to {n} hosts: wall time vs `nix copy --to ssh://` to each (colmena, deploy-rs)",
                   seconds, their_seconds, "s", "≤ 1x", seconds <= their_seconds,
                   f"{self.built.changed_paths - 0} paths in the closure, {detail['paths']} changed; topdeck: push "
                   f"{detail['push']:.2f} s + plan and deploy {detail['deploy']:.2f} s; `nix copy` then "
                   "`switch-to-configuration switch` over ssh, every host at once; medians of "
                   f"{len(ours)}"),
            Figure(f"changed closure to {n} hosts: bytes the operator uploads", uploaded, their_bytes, "bytes",
                   f"≤ 1/{n} of the push model's", uploaded * n <= their_bytes,
                   f"topdeck: {detail['b2'] / 2**20:.2f} MiB to B2 (the emulator's received bytes) + "
                   f"{detail['ssh'] / 2**10:.0f} KiB over SSH (counting forwarders); the push model sends every "
                   f"host its own copy of the changed NARs, uncompressed: {their_bytes / n / 2**20:.2f} MiB per host"),
        ]

    def _start_forwarders(self) -> None:
        lines = []
        for name, front in self.front.items():
            host = self.lab.host(name)
            pid, _ = forward.start((front, 22), (self.lab.ssh_address(name), 22), self._log(name))
            self.forwarders.append(pid)
            lines.append(f"{front} {host.public_host_key()}\n")
        self.known_hosts.write_text("".join(lines))

    def _log(self, name: str) -> Path:
        return self.lab.root / f"forward-{name}.log"

    def _ssh_bytes_up(self) -> int:
        """Bytes the operator sent through the forwarders so far, once every connection has been logged closed."""
        def settled() -> bool:
            return all(log.read_text().count("connection from ") == log.read_text().count("closed ")
                       for log in map(self._log, self.names))

        wait_for(settled, 30, "the forwarders did not log every connection closed")
        return sum(forward.traffic(self._log(name))[0] for name in self.names)

    def _topdeck(self) -> tuple[float, int, dict[str, float]]:
        """Push the change once (the bucket holds the base already), then plan and deploy the hosts."""
        prefix = f"pushmodel-{secrets.token_hex(4)}"
        cache, key = b2_cache(self.lab, prefix), signing_key(self.lab)
        push(parse_store_path(self.built.base), cache, key)
        inventory = write_inventory(self.lab, work_root() / prefix, self.names, prefix, POINTER, len(self.names),
                                    addresses=self.front, known_hosts=self.known_hosts)
        log(f"baselines: topdeck, a changed closure to {len(self.names)} hosts")
        ssh_before, b2_before = self._ssh_bytes_up(), counters(self.lab)["bytes_received"]
        pushed = measure(lambda: push(parse_store_path(self.built.changed), cache, key, pointer=POINTER))
        b2 = counters(self.lab)["bytes_received"] - b2_before
        deployed = measure(lambda: deploy_fleet(inventory, plan_fleet(inventory, [], cache=cache), cache=cache))
        bad = [(o.host, o.reason) for o in deployed.result.outcomes if not o.ok]
        if bad:
            raise RuntimeError(f"topdeck's deploy failed on {len(bad)} hosts (first {bad[0]})")
        self._check_on(self.built.changed)
        ssh = self._ssh_bytes_up() - ssh_before
        return (pushed.seconds + deployed.seconds, b2 + ssh,
                {"push": pushed.seconds, "deploy": deployed.seconds, "b2": b2, "ssh": ssh,
                 "paths": pushed.result.paths_uploaded})

    def _nix_copy(self) -> tuple[float, int]:
        """colmena's and deploy-rs's way: copy the closure to each host over SSH, then activate it there."""
        log(f"baselines: `nix copy --to ssh://` to {len(self.names)} hosts")
        path = self.built.changed
        ssh_options = shlex.join(ssh_argv(self.lab, "x", self.known_hosts)[1:-1])
        env = {**lab_env(), "NIX_SSHOPTS": ssh_options}
        activate = (f"nix-env -p {SYSTEM_PROFILE} --set {shlex.quote(path)} && "
                    f"{shlex.quote(path)}/bin/switch-to-configuration switch")

        def one(name: str) -> None:
            copied = subprocess.run(["nix", "copy", "--no-check-sigs", "--to", f"ssh://root@{self.front[name]}",
                                     path], capture_output=True, text=True, env=env, timeout=600)
            if copied.returncode != 0:
                raise RuntimeError(f"nix copy to {name}: {copied.stderr.strip()[-300:]}")
            done = subprocess.run([*ssh_argv(self.lab, self.front[name], self.known_hosts), activate],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(f"activating on {name}: {done.stderr.strip()[-300:]}")

        before = self._ssh_bytes_up()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(self.names)) as pool:
            list(pool.map(one, self.names))
        seconds = time.perf_counter() - started
        self._check_on(path)
        return seconds, self._ssh_bytes_up() - before

    def _check_on(self, path: str) -> None:
        wrong = [n for n in self.names if self.lab.host(n).current_system() != path]
        if wrong:
            raise RuntimeError(f"{len(wrong)} hosts do not run {path} (first {wrong[0]})")

    def _reset(self) -> None:
        """Every host back on the base closure alone: the changed paths deleted from its store. Nix's GC keeps
        what a running process names, and it sees every host's processes (one PID namespace): it is tried again
        while the last hosts' detached activations end."""
        base = shlex.quote(self.built.base)
        script = (f"nix-env -p {SYSTEM_PROFILE} --set {base} && {base}/bin/switch-to-configuration switch >/dev/null"
                  f" && nix-env -p {SYSTEM_PROFILE} --delete-generations old >/dev/null 2>&1"
                  " && rm -rf /nix/var/nix/gcroots/topdeck /run/topdeck/runs && nix-store --gc >/dev/null 2>&1")
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda name: self.lab.host(name).sh(script, check=False), self.names))
        deadline = time.monotonic() + 60
        while still := [n for n in self.names if self._holds(n, self.built.changed)
                        or self.lab.host(n).current_system() != self.built.base]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the reset left {self.built.changed} on {still[0]}")
            time.sleep(1)
            for name in still:
                self.lab.host(name).sh(script, check=False)

    def _holds(self, name: str, path: str) -> bool:
        return self.lab.host(name).run(["nix-store", "--check-validity", path], check=False).returncode == 0


# --- the 20-host small change against its floor -------------------------------------------------------------------


class Floor:
    def __init__(self, lab: Lab, names: list[str], quick: bool):
        self.lab, self.names, self.quick = lab, names, quick
        self.prefix = f"floor-{secrets.token_hex(4)}"
        self.cache = b2_cache(lab, self.prefix)
        self.key = signing_key(lab)
        self.inventory = write_inventory(lab, work_root() / self.prefix, names, self.prefix, POINTER, len(names))
        self.system = ChangingSystem(lab, "floor", work_root() / f"{self.prefix}-systems", self.cache, self.key,
                                     POINTER)
        self.publish_change = self.system.publish_change

    def figures(self) -> list[Figure]:
        n = len(self.names)
        log(f"baselines: a first system on {n} hosts")
        self.publish_change()
        self._topdeck()
        ours, floors, fetches, cpu, splits = [], [], [], [], []
        for _ in range(repeats(self.quick, 3)):
            self.publish_change()
            log(f"baselines: a small change on {n} hosts, topdeck")
            seconds, used, split = self._topdeck()
            ours.append(seconds)
            cpu.append(used)
            splits.append(split)
            path = self.publish_change()
            log(f"baselines: the same change's floor, plain ssh and nix-store -r on {n} hosts")
            whole, fetch = self._floor(path)
            floors.append(whole)
            fetches.append(fetch)
        ours_s, floor_s = median(ours), median(floors)
        return [
            Figure(f"small-change deploy, {n} hosts, vs the same fetch and activation over plain ssh", ours_s, floor_s,
                   "s", "≤ 1.2x", ours_s <= 1.2 * floor_s,
                   f"floor: `ssh root@host 'nix-store -r PATH --option substituters CACHE ... && nix-env --set && "
                   f"switch-to-configuration switch'` on every host at once; its fetch alone "
                   f"{median(fetches):.2f} s; topdeck's time: plan {median(s['plan'] for s in splits):.2f} s, "
                   f"then per host (medians) {median(s['before fetch'] for s in splits):.2f} s to the fetch "
                   f"(login, lock, pointer check), fetch {median(s['fetch'] for s in splits):.2f} s, "
                   f"{median(s['after fetch'] for s in splits):.2f} s after it (profile, activation, the confirming "
                   f"login); medians of {len(ours)}"),
            Figure(f"small-change deploy, {n} hosts: topdeck CPU per host", median(cpu) / n, None, "s", "measured",
                   True, "this process's user + system time during plan and deploy ÷ hosts (SSH, the host script's "
                   "events, the confirming login)"),
        ]

    def _topdeck(self) -> tuple[float, float, dict[str, float]]:
        """Seconds and CPU seconds of plan + deploy, and where the time went (each host's phases, medians)."""
        phases: dict[str, dict[str, float]] = {}
        started = time.perf_counter()

        def emit(event: object) -> None:
            if isinstance(event, HostPhase) and event.phase in ("fetch", "profile", "done"):
                phases.setdefault(event.host, {}).setdefault(event.phase, time.perf_counter() - started)

        def run() -> DeployResult:
            fleet_plan = plan_fleet(self.inventory, [], cache=self.cache)
            phases["(plan)"] = {"planned": time.perf_counter() - started}
            return deploy_fleet(self.inventory, fleet_plan, cache=self.cache, emit=emit)

        done = measure(run)
        bad = [(o.host, o.reason) for o in done.result.outcomes if not o.ok]
        if bad:
            raise RuntimeError(f"topdeck's deploy failed on {len(bad)} hosts (first {bad[0]})")
        planned = phases.pop("(plan)")["planned"]
        hosts = [h for h in phases.values() if {"fetch", "profile", "done"} <= set(h)]
        split = {"plan": planned,
                 "before fetch": median(h["fetch"] - planned for h in hosts) if hosts else 0.0,
                 "fetch": median(h["profile"] - h["fetch"] for h in hosts) if hosts else 0.0,
                 "after fetch": median(h["done"] - h["profile"] for h in hosts) if hosts else 0.0}
        return done.seconds, done.cpu, split

    def _floor(self, path: str) -> tuple[float, float]:
        """(seconds until every host fetched and activated, seconds until every host had fetched)."""
        url = f"{self.lab.emulator.url}/file/{BUCKET}/{self.prefix}"
        key = self.lab.cache_public_key.read_text().strip()
        quoted = shlex.quote(path)
        command = (f"nix-store -r {quoted} --option substituters {shlex.quote(url)} --option trusted-public-keys "
                   f"{shlex.quote(key)} --option require-sigs true --option narinfo-cache-negative-ttl 0 "
                   "--option narinfo-cache-positive-ttl 60 --option fallback false >/dev/null && "
                   "date +%s.%N > /run/floor-fetched && "
                   f"nix-env -p {SYSTEM_PROFILE} --set {quoted} && {quoted}/bin/switch-to-configuration switch")
        started = time.time()  # the hosts share this machine's clock
        whole = ssh_all(self.lab, {name: command for name in self.names})
        fetched = max(float(self.lab.host(n).sh("cat /run/floor-fetched")) for n in self.names) - started
        wrong = [n for n in self.names if self.lab.host(n).current_system() != path]
        if wrong:
            raise RuntimeError(f"the floor run left {len(wrong)} hosts off {path} (first {wrong[0]})")
        return whole, fetched
