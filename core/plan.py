"""The plan: for each selected host, before anything happens, what would change and what it would download.

Targets come from the cache: one listing gives every pointer, one manifest download per distinct target gives
its closure with sizes. Each host costs one SSH round trip (core/remote/probe.sh). Nothing changes on any host.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources

from humanize import naturalsize

from topdeck.core.cache import pointers
from topdeck.core.cache.delta import Delta, takes_delta
from topdeck.core.cache.interface import Cache, Entry
from topdeck.core.cache.manifest import Manifest, manifest_name, parse_manifest
from topdeck.core.errors import (
    CacheError,
    CacheMissing,
    HostKeyError,
    SSHError,
    StorePathError,
    TopdeckError,
    internal_error,
)
from topdeck.core.events import Emit, Progress, ignore
from topdeck.core.inventory import Host, SSHConfig
from topdeck.core.nix.diff import ClosureDiff, diff_closures, signature
from topdeck.core.nix.signing import PublicKey
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.remote.hostpool import each_host, values
from topdeck.core.remote.ssh import Connect, connect, remote_command
from topdeck.core.strict import parse_uint
from topdeck.core.vocabulary import PlanStatus, Step

B2_FREE_CLASS_B_PER_DAY = 2500
PROBE_TIMEOUT = 120.0


@dataclass(frozen=True)
class ProbeState:
    """What the probe read on a host."""

    current: StorePath | None
    booted: StorePath | None
    generation: int
    free_bytes: int
    missing: frozenset[StorePath]
    closure: Mapping[StorePath, int]


@dataclass(frozen=True)
class HostPlan:
    host: str
    status: PlanStatus
    reason: str = ""
    target: StorePath | None = None
    state: ProbeState | None = None
    diff: ClosureDiff | None = None
    fetch_paths: int = 0
    download_bytes: int = 0
    unpacked_bytes: int = 0
    fits: bool = True
    delta: Delta | None = None  # the delta object the host fetches instead of path by path (core/cache/delta.py)

    @property
    def planned(self) -> bool:
        return self.status in (PlanStatus.CHANGE, PlanStatus.UP_TO_DATE)

    @property
    def class_b(self) -> int:
        """B2 class B transactions the host's pull costs: the delta, or a narinfo and a NAR per path fetched."""
        return 1 if self.delta is not None else 2 * self.fetch_paths

    @property
    def space_note(self) -> str:
        """Why the fetch does not fit, in human units (empty when it fits)."""
        if self.fits or self.state is None:
            return ""
        return (f"/nix has {naturalsize(self.state.free_bytes, binary=True)} free, the fetch unpacks to "
                f"{naturalsize(self.unpacked_bytes, binary=True)}")


@dataclass(frozen=True)
class PlanGroup:
    """Hosts whose change is identical: one diff for all of them."""

    hosts: tuple[str, ...]
    plan: HostPlan


@dataclass(frozen=True)
class Plan:
    hosts: tuple[HostPlan, ...]
    groups: tuple[PlanGroup, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(host.planned for host in self.hosts)

    @property
    def class_b(self) -> int:
        return sum(host.class_b for host in self.hosts)

    @property
    def exceeds_free_class_b(self) -> bool:
        return self.class_b > B2_FREE_CLASS_B_PER_DAY

    @property
    def warnings(self) -> tuple[str, ...]:
        notes = [f"{h.host}: {h.space_note}: the deploy would stop there" for h in self.hosts if h.space_note]
        if self.exceeds_free_class_b:
            notes.append(f"the deploy would cost about {self.class_b} B2 class B transactions, more than the "
                         f"{B2_FREE_CLASS_B_PER_DAY} free per day")
        return tuple(notes)


def targets_from_pointers(hosts: tuple[Host, ...], listing: Mapping[str, Entry], keys: Iterable[PublicKey],
                          now: float, pointer: str | None = None) -> dict[str, StorePath | str]:
    """Each host's target from the pointer it follows (or `pointer`, for all of them), as a cache listing's verified
    file info names it; a reason string where there is none. The host checks the signed sidecar itself."""
    current = pointers.current(listing, keys)
    targets: dict[str, StorePath | str] = {}
    for host in hosts:
        name = pointer or host.pointer
        version = current.get(name)
        if version is None:
            targets[host.name] = f"pointer {name} not found"
        elif not version.verified:
            targets[host.name] = f"pointer {name}: {version.problem}; publish it again with `topdeck push`"
        elif pointers.is_expired(version.expires, now):
            targets[host.name] = pointers.expired_reason(name, version.time, version.expires)
        else:
            targets[host.name] = parse_store_path(version.path)
    return targets


def deltas_from_pointers(hosts: tuple[Host, ...], listing: Mapping[str, Entry], keys: Iterable[PublicKey],
                         pointer: str | None = None) -> dict[str, Delta]:
    """The verified delta of the pointer each host follows (or `pointer`), for the hosts whose pointer names one."""
    current = pointers.current(listing, keys)
    deltas = {}
    for host in hosts:
        version = current.get(pointer or host.pointer)
        if version is not None and version.delta is not None:
            deltas[host.name] = version.delta
    return deltas


def load_manifests(targets: set[StorePath], cache: Cache) -> dict[StorePath, Manifest]:
    """One download per distinct target."""
    manifests = {}
    for target in targets:
        try:
            data = cache.get_bytes(manifest_name(target))
        except CacheMissing:
            raise CacheError(f"{target} is not in the cache (no manifest): push it first") from None
        manifests[target] = parse_manifest(data, manifest_name(target))
    return manifests


def plan(hosts: tuple[Host, ...], targets: Mapping[str, StorePath | str], manifests: Mapping[StorePath, Manifest],
         ssh: SSHConfig, *, connect: Connect = connect, parallel: int = 8, emit: Emit = ignore,
         cancel: threading.Event | None = None, deltas: Mapping[str, Delta] | None = None) -> Plan:
    """Probe every host (in parallel, one round trip each) and work out its plan; `deltas`: the delta object each
    host's pointer names, if any."""

    def one(host: Host) -> HostPlan:
        target = targets[host.name]
        if isinstance(target, str):
            return HostPlan(host.name, PlanStatus.ERROR, target)
        return plan_host(host, target, manifests[target], ssh, connect, (deltas or {}).get(host.name))

    def done(host: Host, count: int) -> None:
        emit(Progress(phase=Step.PLAN, paths_done=count, paths_total=len(hosts), host=host.name))

    host_plans = values(each_host(hosts, one, parallel=parallel, cancel=cancel, cancelled="plan cancelled",
                                  on_done=done, thread_name="topdeck-plan"))
    return Plan(host_plans, group(host_plans))


def plan_host(host: Host, target: StorePath, manifest: Manifest, ssh: SSHConfig, connect: Connect,
              delta: Delta | None = None) -> HostPlan:
    try:
        return host_plan(host.name, target, manifest, probe(host, manifest, ssh, connect), delta)
    except HostKeyError as error:
        return HostPlan(host.name, PlanStatus.HOST_KEY, str(error), target)
    except SSHError as error:
        return HostPlan(host.name, PlanStatus.UNREACHABLE, str(error), target)
    except TopdeckError as error:
        return HostPlan(host.name, PlanStatus.ERROR, str(error), target)
    except Exception as error:  # noqa: BLE001 - a bug met on one host fails that host's plan, named as one
        return HostPlan(host.name, PlanStatus.ERROR, str(internal_error(host.name, error)), target)


def host_plan(name: str, target: StorePath, manifest: Manifest, state: ProbeState,
              delta: Delta | None = None) -> HostPlan:
    """The plan for one host from what its probe read (pure: no I/O); it takes `delta` when it runs its source."""
    fetch = [p for p in manifest.paths if p.path in state.missing]
    unpacked = sum(p.nar_size for p in fetch)
    target_closure = {p.path: p.nar_size for p in manifest.paths}
    return HostPlan(
        host=name,
        status=PlanStatus.UP_TO_DATE if state.current == target else PlanStatus.CHANGE,
        target=target,
        state=state,
        diff=diff_closures(state.closure, target_closure),
        fetch_paths=len(fetch),
        download_bytes=sum(p.file_size for p in fetch),
        unpacked_bytes=unpacked,
        fits=unpacked <= state.free_bytes,
        delta=delta if fetch and takes_delta(state.current, target, delta) else None,
    )


def group(host_plans: tuple[HostPlan, ...]) -> tuple[PlanGroup, ...]:
    """Hosts with the same current system and target (so the same diff and download) share one group."""
    groups: dict[object, list[HostPlan]] = {}
    for host in host_plans:
        if host.planned and host.diff is not None and host.state is not None:
            key = (host.state.current, host.target, signature(host.diff), host.fetch_paths, host.download_bytes,
                   host.delta)
            groups.setdefault(key, []).append(host)
    return tuple(PlanGroup(tuple(h.host for h in members), members[0]) for members in groups.values())


@functools.cache
def probe_script() -> str:
    return resources.files("topdeck.core.remote").joinpath("probe.sh").read_text()


def probe(host: Host, manifest: Manifest, ssh: SSHConfig, connect: Connect) -> ProbeState:
    script = probe_script()
    paths = "".join(f"{p.path}\n" for p in manifest.paths).encode()
    with connect(host, ssh) as session:
        result = session.run(remote_command("sh", "-c", script, "topdeck-probe"), stdin=paths,
                             timeout=PROBE_TIMEOUT)
    if result.exit_status != 0:
        raise TopdeckError(f"{host.name}: the probe failed (exit {result.exit_status}): "
                           f"{result.stderr.decode(errors='replace').strip()[-300:]}")
    return parse_probe(result.whole_stdout(f"{host.name}: the probe"), host.name)


def parse_probe(output: str, host: str) -> ProbeState:
    fields: dict[str, str] = {}
    missing: set[StorePath] = set()
    closure: dict[StorePath, int] = {}
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "error":
            raise TopdeckError(f"{host}: {rest}")
        if kind == "missing":
            missing.add(parse_store_path(rest))
        elif kind == "have":
            path, _, text = rest.partition("\t")
            size = parse_uint(text)
            if size is None:
                raise TopdeckError(f"{host}: the probe could not read the size of {path} (is the host's Nix busy?)")
            closure[parse_store_path(path)] = size
        else:
            fields[kind] = rest
    try:
        return ProbeState(
            current=parse_store_path(fields["current"]) if fields.get("current") else None,
            booted=parse_store_path(fields["booted"]) if fields.get("booted") else None,
            generation=_number(fields, "generation", default="0"),
            free_bytes=_number(fields, "free_kib") * 1024,
            missing=frozenset(missing),
            closure=closure,
        )
    except (KeyError, ValueError, StorePathError) as error:
        raise TopdeckError(f"{host}: the probe's answer is malformed ({error})") from None


def _number(fields: Mapping[str, str], key: str, default: str | None = None) -> int:
    number = parse_uint(fields.get(key) or default or "", limit=2**53)
    if number is None:
        raise ValueError(f"{key} {fields.get(key, '')[:40]!r} is not a number")
    return number
