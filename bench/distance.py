"""Benchmark: fetching at a distance from the cache (issue 24), on a lab of its own (a host of each kind on
127.0.55.11 and up), the cache leg given a round trip by the WAN lab's relay (topdeck.lab.wan).

For each round trip and host kind, the cold fetch of the ~1100-path closure and then its 1 % change, four ways
(and the change a fifth):
- topdeck: core/remote/host.sh `deploy RUN dry-activate TARGET` (the fetch ahead: curl into a local folder, Nix
  substitutes from it with signatures required);
- the delta (small change only): the same script through the signed pointer, on a host whose /run/current-system is
  the base closure, so it fetches the push's delta object with one request (core/cache/delta.py);
- Nix: the same script with `--fetch-parallel 0`, which is today's path (`nix-store -r` from the cache);
- the curl floor: one `curl --parallel --parallel-max 64` on the host for the same narinfos and NARs, no Nix;
- the physical floor: one round trip plus the bytes at the link's rate (the curl floor's rate at 0 ms).
Beside them, B2 class B per host for the small change (the emulator's count over the host's fetch): the delta
against the fetch ahead and Nix.

    .venv/bin/python -m bench distance          every round trip and kind (long: Nix 2.8 needs minutes at 200 ms)
    TOPDECK_BENCH_RTTS=0,100 TOPDECK_BENCH_KINDS=native,sid .venv/bin/python -m bench distance
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from pathlib import Path

from bench.common import Figure, b2_cache, closures, log, shared_lab, signing_key
from bench.fleetlab import own_lab
from topdeck.core.cache.presence import nar_name
from topdeck.core.cache.push import push
from topdeck.core.nix import localnix
from topdeck.core.nix.signing import ssh_public_key
from topdeck.core.nix.store import parse_store_path
from topdeck.lab.hosts import LabHost
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.wan import make_wan

BASE_ADDRESS = "127.0.55.11"
RTTS = (0, 50, 100, 200)
KINDS = ("native", "trixie", "sid")
HOST_SCRIPT = Path(__file__).resolve().parent.parent / "core" / "remote" / "host.sh"
PARALLEL = 64


def run(quick: bool = False) -> list[Figure]:
    rtts = tuple(int(v) for v in os.environ.get("TOPDECK_BENCH_RTTS", ",".join(map(str, RTTS))).split(","))
    kinds = tuple(os.environ.get("TOPDECK_BENCH_KINDS", ",".join(KINDS)).split(","))
    names = {f"host-{i + 1}": kind for i, kind in enumerate(kinds)}
    with own_lab("distance-lab", os.environ.get("TOPDECK_BENCH_BASE", BASE_ADDRESS), len(names), kinds=names,
                 operator_key_of=shared_lab()) as lab:
        return Distance(lab, names, rtts).figures()


class Distance:
    def __init__(self, lab: Lab, names: dict[str, str], rtts: tuple[int, ...]):
        self.lab, self.names, self.rtts = lab, names, rtts
        self.built = closures()
        self.prefix = f"distance-{secrets.token_hex(4)}"
        cache = b2_cache(lab, self.prefix)
        key = signing_key(lab)
        log(f"distance: pushing both closures to {self.prefix}")
        push(parse_store_path(self.built.base), cache, key, pointer="distance")
        push(parse_store_path(self.built.changed), cache, key, pointer="distance")
        base = localnix.closure([parse_store_path(self.built.base)])
        changed = localnix.closure([parse_store_path(self.built.changed)])
        old = {info.path for info in base}
        self.files = {"cold": base, "small change": [info for info in changed if info.path not in old]}
        listing = cache.listing()
        self.bytes = {case: sum(listing[nar_name(info)].size for info in infos) for case, infos in self.files.items()}
        self.key = lab.cache_public_key.read_text().strip()
        self.signer = ssh_public_key(key.public_key())
        self.class_b: dict[str, int] = {}
        self.link_rate = 0.0  # bytes per second, from the curl floor at 0 ms
        for name in names:
            lab.host(name).run(["sh", "-c", "cat > /run/bench-host.sh"], input=HOST_SCRIPT.read_bytes())

    def figures(self) -> list[Figure]:
        rows: list[Figure] = []
        for rtt in self.rtts:
            self.lab.set_wan(make_wan({"cache": rtt}))
            url = f"{self.lab.download_url}/file/{BUCKET}/{self.prefix}"
            for name, kind in self.names.items():
                rows += self._host(name, kind, rtt, url)
        return rows

    def _host(self, name: str, kind: str, rtt: int, url: str) -> list[Figure]:
        host = self.lab.host(name)
        nix = host.sh("nix-store --version").split()[-1]
        seconds: dict[tuple[str, str], float] = {}
        held: dict[str, int] = {}
        for way in ("curl", "topdeck", "nix"):
            self._forget(host)
            held[way] = self._held(host)
            for case, target in (("cold", self.built.base), ("small change", self.built.changed)):
                log(f"distance: {rtt} ms, {name} ({kind}, Nix {nix}), {case}, {way}")
                seconds[case, way] = self._fetch(host, way, case, target, url)
                if way == "curl" and case == "cold":  # the next case needs the base closure in the store
                    self._fetch(host, "topdeck", case, target, url)
        self._forget(host)
        log(f"distance: {rtt} ms, {name} ({kind}, Nix {nix}), small change, delta")
        seconds["small change", "delta"] = self._delta(host, url)
        self._forget(host)
        figures = self._rows(kind, nix, rtt, seconds, held)
        delta_b, ahead_b, nix_b = (self.class_b[way] for way in ("delta", "topdeck", "nix"))
        figures.append(Figure(
            f"class B per host, small change at {rtt} ms, {kind} (Nix {nix}): delta vs fetch ahead", delta_b, ahead_b,
            "requests", "≤ 3", delta_b <= 3,
            f"the delta's count includes the pointer's sidecar; Nix's own fetch: {nix_b}"))
        return figures

    def _delta(self, host: LabHost, url: str) -> float:
        """The small change through the delta: the base closure fetched, the host made to run it, then the deploy
        through the pointer (whose sidecar names the delta from the base)."""
        self._fetch(host, "topdeck", "cold", self.built.base, url)
        running = host.sh("readlink /run/current-system").strip()
        host.sh(f"ln -sfn {shlex.quote(self.built.base)} /run/current-system; rm -rf /nix/var/nix/topdeck/pointers")
        try:
            return self._fetch(host, "delta", "small change", "-", url)
        finally:
            host.sh(f"ln -sfn {shlex.quote(running)} /run/current-system; rm -rf /nix/var/nix/topdeck/pointers")

    def _rows(self, kind: str, nix: str, rtt: int, seconds: dict[tuple[str, str], float],
              held: dict[str, int]) -> list[Figure]:
        figures = []
        for case in ("cold", "small change"):
            if rtt == 0 and case == "cold":
                self.link_rate = self.bytes[case] / seconds[case, "curl"]
            physical = rtt / 1000 + (self.bytes[case] / self.link_rate if self.link_rate else 0.0)
            ours, theirs, curl = seconds[case, "topdeck"], seconds[case, "nix"], seconds[case, "curl"]
            goal, met = (("≤ 1.3x the curl floor", ours <= 1.3 * curl) if case == "cold"
                         else ("≤ 2 round trips + bytes", ours <= physical + rtt / 1000))
            figures.append(Figure(
                f"{case} fetch at {rtt} ms, {kind} (Nix {nix}): topdeck vs nix-store -r", ours, theirs, "s", goal, met,
                f"curl floor {curl:.2f} s ({ours / curl:.2f}x), physical floor {physical:.2f} s "
                f"({ours / physical:.2f}x); Nix {theirs / curl:.1f}x the curl floor; {len(self.files[case])} paths, "
                f"{self.bytes[case] / 1024 / 1024:.1f} MiB"
                + (f"; the host held {held['topdeck']} / {held['nix']} / {held['curl']} of them before the cold fetch "
                   "(topdeck / Nix / curl: paths its own system shares)" if case == "cold" else "")))
        delta = seconds["small change", "delta"]
        physical = rtt / 1000 + (self.bytes["small change"] / self.link_rate if self.link_rate else 0.0)
        curl = seconds["small change", "curl"]
        figures.append(Figure(
            f"small change at {rtt} ms, {kind} (Nix {nix}): topdeck's delta vs nix-store -r", delta,
            seconds["small change", "nix"], "s", "≤ 2 round trips + bytes", delta <= physical + rtt / 1000,
            f"fetch ahead {seconds['small change', 'topdeck']:.2f} s; curl floor {curl:.2f} s ({delta / curl:.2f}x); "
            f"physical floor {physical:.2f} s ({delta / physical:.2f}x)"))
        return figures

    def _fetch(self, host: LabHost, way: str, case: str, target: str, url: str) -> float:
        if way == "curl":
            return self._curl(host, case, url)
        run = f"bench-{secrets.token_hex(4)}"
        command = ["sh", "/run/bench-host.sh", "deploy", run, "dry-activate", target, "--cache", url,
                   "--key", self.key, "--confirm", "0", "--fetch-parallel", "0" if way == "nix" else str(PARALLEL)]
        if way == "delta":
            command += ["--pointer", "distance", "--sidecar", f"{url}/toplevels/distance.json", "--signer", self.signer]
        before = self.lab.emulator_control("GET", "counters")["B"]
        started = time.perf_counter()
        result = host.run(command, check=False, timeout=1800)
        seconds = time.perf_counter() - started
        if case == "small change":
            self.class_b[way] = self.lab.emulator_control("GET", "counters")["B"] - before
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0 or "fetching ahead did not work" in output or "the delta did not work" in output \
                or (way == "delta" and "fetching the delta from" not in output):
            raise RuntimeError(f"{way} fetch on {host.name} failed: {output[-600:]}")
        return seconds

    def _curl(self, host: LabHost, case: str, url: str) -> float:
        lines = []
        for info in self.files[case]:
            for name in (f"{info.path.hash_part}.narinfo", nar_name(info)):
                lines.append(f'url = "{url}/{name}"\noutput = "/nix/var/nix/bench-curl/{name}"\n')
        host.run(["sh", "-c", "rm -rf /nix/var/nix/bench-curl; cat > /run/bench-curl.conf"],
                 input="".join(lines).encode())
        script = (f"curl --parallel --parallel-max {PARALLEL} --fail --silent --show-error --no-progress-meter "
                  "--create-dirs --config /run/bench-curl.conf")
        started = time.perf_counter()
        host.run(["sh", "-c", script], timeout=1800)
        seconds = time.perf_counter() - started
        host.run(["sh", "-c", "rm -rf /nix/var/nix/bench-curl"])
        return seconds

    def _held(self, host: LabHost) -> int:
        """How many of the base closure's paths the host holds (those its own system shares, after `_forget`)."""
        paths = "".join(f"{info.path}\n" for info in self.files["cold"]).encode()
        invalid = host.run(["sh", "-c", "xargs nix-store --check-validity --print-invalid"], input=paths).stdout
        return len(self.files["cold"]) - len(invalid.splitlines())

    def _forget(self, host: LabHost) -> None:
        """The host without either closure: their roots removed, the store collected."""
        for path in (self.built.changed, self.built.base):
            script = ("rm -rf /run/topdeck/runs /nix/var/nix/gcroots/topdeck ~/.cache/nix; "
                      f"nix-store --gc >/dev/null 2>&1; nix-store --check-validity {shlex.quote(path)} 2>/dev/null "
                      "&& echo held || true")
            if host.sh(script).strip() == "held":
                raise RuntimeError(f"{host.name} still holds {path} after a garbage collection")
