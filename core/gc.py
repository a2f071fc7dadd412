"""Cache retention (`topdeck gc`): which closures the cache must keep, and deleting the rest in an order that never
leaves a reader with a manifest or a narinfo whose files are gone.

Kept: the closures of the last `keep` versions of every pointer, of every system a host of the inventory runs, has
booted or has as a generation, and of everything uploaded within `min_age` (a push may be under way: its narinfos
come before its manifest). A closure is read from its manifest; a kept toplevel or a recent narinfo without one is
followed narinfo by narinfo. Files gc does not know (nix-cache-info, the pointers, anything else) are never touched;
the run history (`runs/`) is kept, or with `history_days` its records older than that are deleted last.

A delta object (core/cache/delta.py) is kept while a pointer's current version names it and its source system is kept
too (a pointer's earlier version or a host's system): then both ends of it are kept. Every other delta goes.

Deleted, in this order: delta objects, manifests, narinfos (a path's referrers before the path), NARs. So a kill at
any moment leaves every remaining manifest with its narinfos, every narinfo with its NAR and its references, and
every delta with the closures it goes between.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from topdeck.core import history
from topdeck.core.cache import pointers
from topdeck.core.cache.access import open_deleting_cache
from topdeck.core.cache.delta import FOLDER as DELTA_FOLDER
from topdeck.core.cache.delta import Delta
from topdeck.core.cache.interface import DeletingCache, Entry
from topdeck.core.cache.manifest import manifest_name, parse_manifest
from topdeck.core.cache.presence import NAR_FOLDER, nar_file, narinfo_name
from topdeck.core.errors import Cancelled, GcError, TopdeckError
from topdeck.core.events import Emit, LogLine, Progress, Transactions, ignore
from topdeck.core.inventory import Host, Inventory
from topdeck.core.nix.narinfo import parse_narinfo
from topdeck.core.nix.signing import PublicKey
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.operations import trusted_key
from topdeck.core.remote.hostpool import each_host
from topdeck.core.remote.hostverbs import generations, status
from topdeck.core.remote.ssh import Connect, connect
from topdeck.core.vocabulary import Step

PRICE_PER_GB_MONTH = 0.006  # USD: Backblaze B2's list price for storage, per decimal GB and month
DEFAULT_MIN_AGE = 24 * 3600.0
MANIFEST_FOLDER = "manifests/"


@dataclass(frozen=True)
class KeptSystem:
    toplevel: StorePath
    reasons: tuple[str, ...]  # "pointer web (serial 4)", "host-1 generation 7", ...
    in_cache: bool  # the cache holds its manifest or narinfo (a host may run a system that was never pushed)


@dataclass(frozen=True)
class GcPlan:
    kept: tuple[KeptSystem, ...]
    deletions: tuple[Entry, ...]  # file versions, in the order they are deleted
    files: int  # file versions stored now
    bytes: int  # their bytes
    kept_paths: int  # store paths whose narinfo and NAR stay
    downloads: int  # manifests and narinfos read to make the plan (B2 class B)
    manifests: frozenset[str] = frozenset()  # every manifest in the cache when the plan was made

    @property
    def freed_bytes(self) -> int:
        return sum(entry.size for entry in self.deletions)


@dataclass(frozen=True)
class GcResult:
    plan: GcPlan
    deleted: int
    freed_bytes: int
    seconds: float
    transactions: Transactions
    dry_run: bool


def monthly_cost(nbytes: int) -> float:
    """What B2 bills for storing `nbytes` for a month, in USD."""
    return nbytes / 1e9 * PRICE_PER_GB_MONTH


# --- what to keep -----------------------------------------------------------------------------------


def pointer_systems(versions: Iterable[Entry], keep: int, keys: Iterable[PublicKey]) -> dict[StorePath, list[str]]:
    """The toplevels of the last `keep` verified versions of every pointer (by serial), each with why it is kept.
    File info that does not verify names nothing: a bucket writer cannot make gc keep (or drop) a system."""
    check_keep(keep)
    keys = list(keys)
    by_pointer: dict[str, list[pointers.PointerVersion]] = defaultdict(list)
    for entry in versions:
        name = pointers.pointer_name(entry.name)
        if name is not None:
            by_pointer[name].append(pointers.version_of(entry, name, keys))
    systems: dict[StorePath, list[str]] = defaultdict(list)
    for name, found in sorted(by_pointer.items()):
        verified = [v for v in found if v.verified]
        for version in sorted(verified, key=lambda v: (v.serial, v.uploaded_ms), reverse=True)[:keep]:
            systems[parse_store_path(version.path)].append(f"pointer {name} (serial {version.serial})")
    return systems


def check_keep(keep: int) -> None:
    if keep < 1:
        raise GcError(f"keep {keep}: must keep at least the current version of each pointer (1 or more)",
                      setting="keep")


def host_systems(inventory: Inventory, *, skip_unreachable: bool = False, connect: Connect = connect,
                 emit: Emit = ignore, cancel: threading.Event | None = None) -> dict[StorePath, list[str]]:
    """Every system a host runs, has booted or keeps as a generation (one SSH login per host). An unreachable
    host is refused (GcError naming every one): its systems are unknown, so gc cannot know what it would need."""
    hosts = inventory.hosts
    answers = each_host(hosts, lambda host: _systems_of(host, inventory, connect), parallel=inventory.deploy.parallel,
                        cancel=cancel, cancelled="gc cancelled")
    cancelled = next((answer for answer in answers if isinstance(answer, Cancelled)), None)
    if cancelled is not None:
        raise cancelled
    systems: dict[StorePath, list[str]] = defaultdict(list)
    unreachable = []
    for host, answer in zip(hosts, answers, strict=True):
        if isinstance(answer, TopdeckError):
            unreachable.append(str(answer))
            if skip_unreachable:
                emit(LogLine(f"skipped: {answer}", host.name))
            continue
        for path, reasons in answer.items():
            systems[path].extend(reasons)
    if unreachable and not skip_unreachable:
        raise GcError(f"cannot ask {len(unreachable)} host(s) what they run, so nothing is deleted: "
                      f"{'; '.join(unreachable)} (bring them back, or skip the unreachable hosts to keep only what "
                      "the others and the pointers need)", setting="skip_unreachable")
    return systems


def _systems_of(host: Host, inventory: Inventory, connect: Connect) -> dict[StorePath, list[str]]:
    found: dict[StorePath, list[str]] = defaultdict(list)
    with connect(host, inventory.ssh) as session:
        report = status(session)
        if report.failure:
            raise GcError(f"{host.name}: {report.failure}")
        listed = generations(session)
    for kind, path in (("current", report.current), ("booted", report.booted), ("system", report.system)):
        if path.startswith("/nix/store/"):
            found[parse_store_path(path)].append(f"{host.name} {kind}")
    for generation in listed:
        if generation.path.startswith("/nix/store/"):
            found[parse_store_path(generation.path)].append(f"{host.name} generation {generation.number}")
    return found


# --- the plan ---------------------------------------------------------------------------------------


class _Marker:
    """Walks what must stay: store paths (by hash part, with the NAR each needs) and manifests, reading as little
    as it can."""

    def __init__(self, cache: DeletingCache, latest: Mapping[str, Entry]):
        self.cache, self.latest = cache, latest
        self.paths: dict[str, str | None] = {}  # kept path's hash part -> its NAR's name (None: not known yet)
        self.references: dict[str, tuple[str, ...]] = {}
        self.manifests: set[str] = set()
        self.downloads = 0

    def read(self, name: str) -> bytes:
        self.downloads += 1
        return self.cache.get_bytes(name)

    def manifest(self, name: str, keep: bool = True) -> None:
        manifest = parse_manifest(self.read(name), name)
        for item in manifest.paths:
            self.references[item.path.hash_part] = tuple(r.hash_part for r in item.references)
            if keep and self.paths.get(item.path.hash_part) is None:
                nar = nar_file(item.nar_hash) if item.nar_hash is not None else None
                self.paths[item.path.hash_part] = nar if nar in self.latest else None
        if keep:
            self.manifests.add(name)

    def system(self, toplevel: StorePath) -> bool:
        """Keep a toplevel's closure; False when the cache has neither its manifest nor its narinfo."""
        if manifest_name(toplevel) in self.latest:
            self.manifest(manifest_name(toplevel))
            return True
        if narinfo_name(toplevel) in self.latest:
            self.follow([toplevel.hash_part])
            return True
        return False

    def follow(self, roots: Iterable[str]) -> None:
        """Keep the closures of the paths with these hash parts by reading their narinfos (what no manifest
        describes)."""
        waiting = list(roots)
        while waiting:
            hash_part = waiting.pop()
            name = f"{hash_part}.narinfo"
            if self.paths.get(hash_part) is not None or name not in self.latest:
                continue
            info = parse_narinfo(self.read(name).decode(errors="replace"), name)
            self.paths[hash_part] = info.url
            self.references[hash_part] = tuple(ref.hash_part for ref in info.references)
            waiting.extend(self.references[hash_part])

    def resolve_nars(self) -> None:
        """The NAR of each kept path a manifest could not name (older manifests, another tool's NAR names)."""
        for hash_part, nar in list(self.paths.items()):
            name = f"{hash_part}.narinfo"
            if nar is None and name in self.latest:
                self.paths[hash_part] = parse_narinfo(self.read(name).decode(errors="replace"), name).url

    def kept_names(self) -> set[str]:
        return self.manifests | {f"{h}.narinfo" for h in self.paths} | {n for n in self.paths.values() if n}


def plan_gc(cache: DeletingCache, systems: Mapping[StorePath, Sequence[str]], versions: Sequence[Entry], *,
            min_age: float = DEFAULT_MIN_AGE, now: float | None = None, history_days: float | None = None,
            deltas: Iterable[Delta] = ()) -> GcPlan:
    """What a gc would delete from `versions` (the cache's `all_versions`), keeping `systems`' closures, the
    `deltas` the pointers name whose both ends are kept, and the run history (only its records older than
    `history_days`, when given, go, after everything else)."""
    now_ms = int((time.time() if now is None else now) * 1000)
    latest = _latest(versions)
    marker = _Marker(cache, latest)
    kept = tuple(KeptSystem(path, tuple(reasons), marker.system(path)) for path, reasons in sorted(systems.items()))
    young = {name for name, entry in latest.items() if now_ms - entry.uploaded_ms < min_age * 1000}
    for name in sorted(young):
        if _is_manifest(name):
            marker.manifest(name)
    marker.follow(name.removesuffix(".narinfo") for name in sorted(young) if _is_narinfo(name))
    marker.resolve_nars()
    keep = marker.kept_names() | young | {d.name for d in deltas if d.source in systems and d.target in systems}
    doomed = {name for name in latest if _collectable(name) and name not in keep}
    for name in sorted(doomed):
        if _is_manifest(name):
            marker.manifest(name, keep=False)  # only for the references: referrers go before what they refer to
    order = _deletion_order(doomed, marker.references) + _old_records(latest, history_days, now_ms)
    by_name: dict[str, list[Entry]] = defaultdict(list)
    for entry in versions:
        by_name[entry.name].append(entry)
    return GcPlan(kept=kept, deletions=tuple(entry for name in order for entry in by_name[name]),
                  files=len(versions), bytes=sum(entry.size for entry in versions), kept_paths=len(marker.paths),
                  downloads=marker.downloads, manifests=frozenset(name for name in latest if _is_manifest(name)))


def _old_records(latest: Mapping[str, Entry], history_days: float | None, now_ms: int) -> list[str]:
    if history_days is None:
        return []
    cutoff = now_ms - history_days * 86400 * 1000
    return sorted(name for name, entry in latest.items()
                  if name.startswith(history.FOLDER) and entry.uploaded_ms < cutoff)


def _latest(versions: Iterable[Entry]) -> dict[str, Entry]:
    latest: dict[str, Entry] = {}
    for entry in versions:
        if entry.name not in latest or entry.uploaded_ms > latest[entry.name].uploaded_ms:
            latest[entry.name] = entry
    return latest


def _is_manifest(name: str) -> bool:
    return name.startswith(MANIFEST_FOLDER) and name.endswith(".json")


def _is_narinfo(name: str) -> bool:
    return "/" not in name and name.endswith(".narinfo")


def _collectable(name: str) -> bool:
    return _is_manifest(name) or _is_narinfo(name) or name.startswith((NAR_FOLDER, DELTA_FOLDER))


def _deletion_order(doomed: set[str], references: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Deltas, manifests, then narinfos with every referrer before what it refers to, then NARs."""
    infos = {name.removesuffix(".narinfo"): name for name in doomed if _is_narinfo(name)}
    refs: dict[str, list[str]] = defaultdict(list)
    for path, targets in references.items():
        if path in infos:
            refs[path] = [t for t in targets if t in infos and t != path]
    placed: set[str] = set()
    after_references: list[str] = []  # every narinfo after the ones it refers to

    def visit(start: str) -> None:
        stack = [(start, iter(refs[start]))]
        placed.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                after_references.append(node)
            elif child not in placed:
                placed.add(child)
                stack.append((child, iter(refs[child])))

    for hash_part in sorted(infos):
        if hash_part not in placed:
            visit(hash_part)
    manifests = sorted(name for name in doomed if _is_manifest(name))
    nars = sorted(name for name in doomed if name.startswith(NAR_FOLDER))
    deltas = sorted(name for name in doomed if name.startswith(DELTA_FOLDER))
    return deltas + manifests + [infos[h] for h in reversed(after_references)] + nars


# --- deleting ---------------------------------------------------------------------------------------


def collect(cache: DeletingCache, plan: GcPlan, *, emit: Emit = ignore, cancel: threading.Event | None = None,
            clock: Callable[[], float] = time.monotonic) -> tuple[int, int]:
    """Delete the plan's versions in its order; (versions deleted, bytes freed). Cancel stops between two
    deletions, which leaves a valid cache (the order guarantees it at every step).

    Before the first narinfo goes, the manifests are listed again: a push that finished meanwhile may name paths
    the plan would delete (its listing saw them), so gc stops there (GcError) and is run again."""
    started, deleted, freed = clock(), 0, 0
    total = len(plan.deletions)
    checked = False
    for entry in plan.deletions:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"gc cancelled after {deleted} of {total} deletions; the cache is valid, run it again")
        if not checked and not _is_manifest(entry.name):
            _refuse_new_manifests(cache, plan, deleted)
            checked = True
        cache.delete_version(entry)
        deleted, freed = deleted + 1, freed + entry.size
        emit(Progress(Step.GC, deleted, total, freed, plan.freed_bytes, current=entry.name,
                      rate=freed / max(clock() - started, 1e-6)))
    return deleted, freed


def _refuse_new_manifests(cache: DeletingCache, plan: GcPlan, deleted: int) -> None:
    new = sorted(set(cache.listing_of(MANIFEST_FOLDER)) - plan.manifests)
    if new:
        raise GcError(f"a push wrote {len(new)} manifest(s) while gc ran ({new[0]}...); gc stopped after {deleted} "
                      "deletions (manifests only, the cache is valid): run it again")


@dataclass(frozen=True)
class GcRequest:
    """What the operator asks of a gc: keep each pointer's `keep` latest versions' closures; with `dry_run`, only
    show the plan; `skip_unreachable` plans without the hosts that cannot be asked what they run (their systems
    may go); nothing younger than `min_age` seconds goes; run records older than `history_days` go (None: all
    stay)."""

    keep: int
    dry_run: bool = False
    skip_unreachable: bool = False
    min_age: float = DEFAULT_MIN_AGE
    history_days: float | None = None


def gc_fleet(inventory: Inventory, request: GcRequest, *, confirm: Callable[[GcPlan], bool] = lambda plan: True,
             cache: DeletingCache | None = None, connect: Connect = connect, emit: Emit = ignore,
             cancel: threading.Event | None = None, clock: Callable[[], float] = time.time) -> GcResult:
    """Plan a gc of the inventory's cache (asking every host what it runs); then, unless the request is a dry run
    or `confirm` (shown the plan) says no, delete."""
    keep = request.keep
    check_keep(keep)  # before any host or bucket is asked
    started = clock()
    cache = cache or open_deleting_cache(inventory.cache)
    emit(Progress(Step.GC_HOSTS, 0, len(inventory.hosts)))
    systems = host_systems(inventory, skip_unreachable=request.skip_unreachable, connect=connect, emit=emit,
                           cancel=cancel)
    versions = cache.all_versions()
    keys = [trusted_key(inventory)]
    for path, reasons in pointer_systems(versions, keep, keys).items():
        systems.setdefault(path, []).extend(reasons)
    deltas = [v.delta for v in pointers.current(_latest(versions), keys).values() if v.delta is not None]
    plan = plan_gc(cache, systems, versions, min_age=request.min_age, now=clock(), history_days=request.history_days,
                   deltas=deltas)
    _check_current_pointers(plan, versions, keys)
    go = not request.dry_run and bool(plan.deletions) and confirm(plan)
    deleted, freed = collect(cache, plan, emit=emit, cancel=cancel) if go else (0, 0)
    return GcResult(plan, deleted, freed, clock() - started, cache.transactions(), request.dry_run)


def _check_current_pointers(plan: GcPlan, versions: Sequence[Entry], keys: list[PublicKey]) -> None:
    """A pointer whose current target's closure is not in the cache means the cache is already broken (or this
    is not the cache the pointers were pushed to): delete nothing then."""
    current = {parse_store_path(v.path): name for name, v in pointers.current(_latest(versions), keys).items()
               if v.verified}
    broken = [f"{current[s.toplevel]} -> {s.toplevel.name}" for s in plan.kept
              if s.toplevel in current and not s.in_cache]
    if broken:
        raise GcError(f"the cache lacks the closure of pointer {', '.join(broken)}; nothing deleted (push it "
                      "again first)")


