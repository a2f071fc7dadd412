"""Push a closure to the binary cache, then publish a pointer to it.

Order, so that a reader never sees a narinfo without its NAR or a pointer to an incomplete closure:
1. what the cache holds (core.cache.presence: the manifests it needs, then by name only what no manifest answers for;
   with `verify`, one listing of the whole cache instead);
2. each missing path's NAR, streamed from `nix-store --dump` through zstd into the upload, in parallel (a small
   path's NAR is serialized in this process instead, and checked against its NarHash);
3. each path's signed narinfo, once its NAR is stored and the narinfos of all its references exist
   (so every narinfo in the cache has its whole closure behind it);
4. `nix-cache-info` if absent, the closure manifest (of each toplevel, when several are pushed as one);
5. for each pointer that moves, while it is small, the delta object from its previous target (core/cache/delta.py);
6. last, the pointers (each naming its delta).
NARs are named by their NarHash, so a NAR left without its narinfo by an interrupted push is found by name;
its FileHash is recomputed locally (zstd is deterministic) instead of uploading it again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

import zstandard

from topdeck.core.cache import delta as delta_module
from topdeck.core.cache import pointers as pointers_module
from topdeck.core.cache.delta import Delta
from topdeck.core.cache.interface import NAR_TYPE, NARINFO_TYPE, Cache, Entry, NameLookup
from topdeck.core.cache.manifest import Manifest, ManifestPath, manifest_name, parse_manifest, render_manifest
from topdeck.core.cache.presence import NAR_FOLDER, Presence, nar_name, narinfo_name, presence
from topdeck.core.errors import CacheError, CacheMissing, Cancelled, TopdeckError, TransientCacheError
from topdeck.core.events import Emit, Progress, PublishedPointer, PushResult, ignore
from topdeck.core.nix import localnix
from topdeck.core.nix.localnix import PathInfo
from topdeck.core.nix.narinfo import Narinfo, parse_narinfo, render_narinfo
from topdeck.core.nix.signing import SecretKey, sign_narinfo
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.vocabulary import Step

ZSTD_LEVEL = 3
SMALL_NAR = 8 * 1024 * 1024
READ_SIZE = 1024 * 1024
TICK = 0.2
STREAM_ATTEMPTS = 3  # a streamed (large) NAR that fails on a transient error is dumped and sent again
STREAM_BACKOFF = 1.0
CACHE_INFO = b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
DELTA_TYPE = "application/x-tar"

NarSource = Callable[[StorePath], AbstractContextManager[BinaryIO]]
_NAR_PADDING = bytes(8)


@dataclass(frozen=True)
class Stored:
    """A NAR as stored: its compressed hash and size."""

    file_hash: bytes
    file_size: int


class _Compressed:
    """A readable stream of the zstd-compressed NAR that hashes what it yields and counts NAR bytes read."""

    def __init__(self, nar: BinaryIO, on_nar_bytes: Callable[[int], None], cancel: threading.Event):
        self._counting = _CountingReader(nar, on_nar_bytes, cancel)
        self._reader = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(
            self._counting, read_size=READ_SIZE  # type: ignore[arg-type]  # any object with read(n) will do
        )
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size if size and size > 0 else READ_SIZE)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def read_all(self) -> bytes:
        return b"".join(iter(lambda: self.read(READ_SIZE), b""))

    def stored(self) -> Stored:
        return Stored(self.sha256.digest(), self.size)


class _CountingReader:
    def __init__(self, source: BinaryIO, on_bytes: Callable[[int], None], cancel: threading.Event):
        self.source, self.on_bytes, self.cancel = source, on_bytes, cancel

    def read(self, size: int = -1) -> bytes:
        if self.cancel.is_set():
            raise Cancelled("push cancelled")
        data = self.source.read(size)
        self.on_bytes(len(data))
        return data


class _Push:
    def __init__(self, closure: list[PathInfo], cache: Cache, key: SecretKey, nar_source: NarSource | None,
                 emit: Emit, cancel: threading.Event, jobs: int):
        self.closure = {info.path: info for info in closure}
        self.cache, self.key, self.nar_source = cache, key, nar_source
        self.emit, self.cancel, self.jobs = emit, cancel, jobs
        self.lock = threading.Lock()
        self.nar_bytes_read = 0
        self.stored: dict[StorePath, Stored] = {}
        self.nar_locks: dict[str, threading.Lock] = {}  # by NAR name: paths with the same contents share one NAR
        self.stored_nars: dict[str, Stored] = {}
        self.uploaded_nars: set[str] = set()
        self.published: set[StorePath] = set()
        self.uploaded: set[StorePath] = set()
        self.failures: list[BaseException] = []
        self.last_stored = ""

    # --- the plan ---------------------------------------------------------------------------------

    def run(self, listing: dict[str, Entry]) -> None:
        self.listing = listing
        self.published = {p for p in self.closure if narinfo_name(p) in listing}
        self.published_before = len(self.published)  # `published` only grows by missing paths from here on
        self.missing = [info for p, info in self.closure.items() if p not in self.published]
        self.bytes_total = sum(info.nar_size for info in self.missing)
        self.started = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="topdeck-push") as pool:
            self._drive(pool)
        # A cancel that came while no worker was inside an upload stops the drive with no worker's Cancelled.
        if not self.failures and self.cancel.is_set() and any(p not in self.published for p in self.closure):
            self.failures.append(Cancelled("push cancelled"))
        if self.failures:
            raise self._failure()

    def _drive(self, pool: ThreadPoolExecutor) -> None:
        running: dict[Future[None], tuple[str, StorePath]] = {}
        queue = list(self.missing)
        waiting: set[StorePath] = set()
        while queue or running or waiting:
            stopping = self.cancel.is_set() or bool(self.failures)
            if stopping and not running:
                break
            while queue and len(running) < self.jobs * 2 and not stopping:
                info = queue.pop(0)
                running[pool.submit(self._store_nar, info)] = ("nar", info.path)
            done, _ = wait(running, timeout=TICK, return_when=FIRST_COMPLETED)
            for future in done:
                kind, path = running.pop(future)
                error = future.exception()
                if error is not None:
                    self.failures.append(error)
                elif kind == "nar":
                    waiting.add(path)
                    self.last_stored = path.name
                else:
                    self.published.add(path)
            if not (self.cancel.is_set() or self.failures):
                for path in self._ready(waiting):
                    waiting.discard(path)
                    running[pool.submit(self._publish_narinfo, path)] = ("narinfo", path)
            self._progress()

    def _ready(self, waiting: set[StorePath]) -> list[StorePath]:
        return [p for p in waiting
                if all(ref in self.published or ref == p for ref in self.closure[p].references)]

    # --- the work, in worker threads ---------------------------------------------------------------

    def _store_nar(self, info: PathInfo) -> None:
        """Store the path's NAR once: a second path with the same contents (the same NAR name) waits for the first
        and uses what it stored, instead of uploading the same file again beside it."""
        name = nar_name(info)
        with self.lock:
            name_lock = self.nar_locks.setdefault(name, threading.Lock())
        with name_lock:
            if name in self.stored_nars:
                self.stored[info.path] = self.stored_nars[name]
                with self.lock:
                    if name in self.uploaded_nars:  # stored by this push: the twin's path is new in the cache too
                        self.uploaded.add(info.path)
                return
            self._store_new_nar(info)
            self.stored_nars[name] = self.stored[info.path]

    def _store_new_nar(self, info: PathInfo) -> None:
        existing = self.listing.get(nar_name(info))
        if existing is not None:
            stored = self._compress(info, upload=False)
            if stored.file_size == existing.size:
                self.stored[info.path] = stored
                return
        for attempt in range(STREAM_ATTEMPTS):
            try:
                self.stored[info.path] = self._compress(info, upload=True)
                break
            except TransientCacheError:
                # small NARs were already retried by the cache; a stream can only be sent again whole
                if info.nar_size <= SMALL_NAR or attempt == STREAM_ATTEMPTS - 1 or self.cancel.is_set():
                    raise
                self.cancel.wait(STREAM_BACKOFF * 2**attempt)
        with self.lock:
            self.uploaded.add(info.path)
            self.uploaded_nars.add(nar_name(info))

    def _compress(self, info: PathInfo, upload: bool) -> Stored:
        with self._nar(info) as nar:
            stream = _Compressed(nar, self._count, self.cancel)
            if not upload:
                stream.read_all()
            elif info.nar_size <= SMALL_NAR:
                self.cache.put_bytes(nar_name(info), stream.read_all(), content_type=NAR_TYPE)
            else:
                self.cache.put_stream(nar_name(info), stream, content_type=NAR_TYPE)  # type: ignore[arg-type]
            return stream.stored()

    def _nar(self, info: PathInfo) -> AbstractContextManager[BinaryIO]:
        """The path's NAR: serialized here for a small path (no `nix-store --dump` process to start, which costs
        more than the rest of a small path's push), when it matches the store's NarHash; else from nix-store."""
        if self.nar_source is None and info.nar_size <= SMALL_NAR:
            data = small_nar(info)
            if data is not None:
                return io.BytesIO(data)
        return (self.nar_source or localnix.nar_stream)(info.path)

    def _publish_narinfo(self, path: StorePath) -> None:
        self.cache.put_bytes(narinfo_name(path), self._narinfo(path, self.stored[path]), content_type=NARINFO_TYPE)

    def _narinfo(self, path: StorePath, stored: Stored) -> bytes:
        info = self.closure[path]
        narinfo = Narinfo(
            store_path=path, url=nar_name(info), compression="zstd", file_hash=stored.file_hash,
            file_size=stored.file_size, nar_hash=info.nar_hash, nar_size=info.nar_size,
            references=info.references, deriver=info.deriver, ca=info.ca,
        )
        return render_narinfo(sign_narinfo(narinfo, self.key)).encode()

    def delta_member(self, info: PathInfo) -> delta_module.Member:
        """A path as a delta carries it: its signed narinfo and its compressed NAR (compressed again here: zstd is
        deterministic, so these are the bytes the cache holds under the same name)."""
        with self._nar(info) as nar:
            stream = _Compressed(nar, lambda _: None, self.cancel)
            data = stream.read_all()
        return delta_module.Member(narinfo_name(info.path), self._narinfo(info.path, stream.stored()),
                                   nar_name(info), data)

    def _count(self, nbytes: int) -> None:
        with self.lock:
            self.nar_bytes_read += nbytes

    # --- reporting --------------------------------------------------------------------------------

    def _progress(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = len(self.published) - self.published_before
        self.emit(Progress(
            phase=Step.UPLOAD, paths_done=done, paths_total=len(self.missing),
            bytes_done=min(self.nar_bytes_read, self.bytes_total), bytes_total=self.bytes_total,
            current=self.last_stored, rate=self.nar_bytes_read / elapsed,
        ))

    def _failure(self) -> TopdeckError:
        done = len(self.published) - self.published_before
        first = self.failures[0]
        progress = f"{done} of {len(self.missing)} paths stored; a re-run uploads only the rest"
        if isinstance(first, Cancelled):
            return Cancelled(f"push cancelled: {progress}")
        if isinstance(first, TopdeckError):
            return type(first)(f"{first} ({progress})")
        return TopdeckError(f"push failed: {first!r} ({progress})")


@dataclass(frozen=True)
class PushSettings:
    """How a push runs: `jobs` NARs at once; with `verify` it takes no manifest's word: every path is checked
    against one listing of the cache, and what is missing is uploaded (the repair for a cache whose narinfos
    something other than topdeck deleted); pointers are published valid for `pointer_valid_for` seconds (0: no
    end); a pointer that moves names a delta object from its previous target when that is at most
    `delta_max_bytes` (0: no deltas)."""

    jobs: int = 8
    verify: bool = False
    pointer_valid_for: int = 0
    delta_max_bytes: int = delta_module.max_bytes(delta_module.DEFAULT_MAX_MIB)


def push(toplevel: StorePath, cache: Cache, key: SecretKey, *, pointer: str | None = None,
         settings: PushSettings = PushSettings(),
         closure_of: Callable[[list[StorePath]], list[PathInfo]] = localnix.closure,
         nar_source: NarSource | None = None, emit: Emit = ignore, cancel: threading.Event | None = None,
         clock: Callable[[], float] = time.time) -> PushResult:
    """Make the cache hold `toplevel`'s closure, its manifest and (if asked) the pointer `pointer` to it.

    NARs come from `nar_source`; by default small ones are serialized in this process (checked against their
    NarHash) and the others come from `nix-store --dump`."""
    return push_all([toplevel], cache, key, pointers={pointer: toplevel} if pointer is not None else {},
                    settings=settings, closure_of=closure_of, nar_source=nar_source, emit=emit, cancel=cancel,
                    clock=clock)


def push_all(toplevels: Sequence[StorePath], cache: Cache, key: SecretKey, *,
             pointers: Mapping[str, StorePath] | None = None, settings: PushSettings = PushSettings(),
             closure_of: Callable[[list[StorePath]], list[PathInfo]] = localnix.closure,
             nar_source: NarSource | None = None, emit: Emit = ignore, cancel: threading.Event | None = None,
             clock: Callable[[], float] = time.time) -> PushResult:
    """Push several toplevels as one: what the cache holds (core.cache.presence), the NARs and narinfos of the union
    of their closures, then each toplevel's manifest, and last the pointers (name -> toplevel, each one of
    `toplevels`)."""
    toplevels = list(dict.fromkeys(toplevels))
    wanted = dict(pointers or {})
    for name, target in wanted.items():
        pointers_module.check_name(name)
        if target not in toplevels:
            raise TopdeckError(f"pointer {name}: {target} is not one of the toplevels pushed")
    started = time.monotonic()
    closure = closure_of(toplevels)
    emit(Progress(phase=Step.LIST, paths_total=len(closure)))
    found = _presence(cache, closure, toplevels, list(wanted), settings.verify)
    listing = found.names
    job = _Push(closure, cache, key, nar_source, emit, cancel or threading.Event(), settings.jobs)
    job.run(listing)
    if "nix-cache-info" not in listing:
        cache.put_bytes("nix-cache-info", CACHE_INFO, content_type="text/x-nix-cache-info")
    for toplevel in toplevels:
        if manifest_name(toplevel) not in listing:
            own = closure_within(closure, toplevel)
            emit(Progress(phase=Step.MANIFEST, paths_done=len(own), paths_total=len(own)))
            manifest = Manifest(toplevel, tuple(_manifest_paths(own, job.stored, found, cache)))
            cache.put_bytes(manifest_name(toplevel), render_manifest(manifest), content_type="application/json")

    def make_delta(source: StorePath, target: StorePath) -> Delta | None:
        return _write_delta(cache, job, closure, found, source, target, settings.delta_max_bytes)

    published = [_publish_pointer(cache, name, target, key, listing, clock, settings.pointer_valid_for, make_delta)
                 for name, target in wanted.items()]
    skipped = [info for info in closure if info.path not in job.uploaded]
    uploaded = [info for info in closure if info.path in job.uploaded]
    sent = list({nar_name(info): info for info in uploaded}.values())  # a NAR two paths share went once
    first = published[0] if published else None
    return PushResult(
        toplevel=str(toplevels[0]),
        paths_total=len(closure),
        paths_uploaded=len(uploaded),
        paths_skipped=len(skipped),
        nar_bytes_uploaded=sum(info.nar_size for info in sent),
        file_bytes_uploaded=sum(job.stored[info.path].file_size for info in sent),
        nar_bytes_skipped=sum(info.nar_size for info in skipped),
        seconds=time.monotonic() - started,
        transactions=cache.transactions(),
        pointer=first.name if first else "",
        pointer_serial=first.serial if first else 0,
        pointer_changed=first.changed if first else False,
        toplevels=tuple(str(t) for t in toplevels),
        pointers=tuple(published),
    )


def closure_within(closure: list[PathInfo], toplevel: StorePath) -> list[PathInfo]:
    """The part of `closure` (in its order) that `toplevel` refers to, directly or not."""
    by_path = {info.path: info for info in closure}
    seen, stack = {toplevel}, [toplevel]
    while stack:
        for reference in by_path[stack.pop()].references:
            if reference not in seen:
                seen.add(reference)
                stack.append(reference)
    return [info for info in closure if info.path in seen]


@runtime_checkable
class FolderListing(Protocol):
    """A cache that can list around a folder (B2Cache): cheaper than a whole listing when it bills per name."""

    def listing_around(self, folder: str) -> tuple[dict[str, Entry], bool]: ...

    def listing_of(self, folder: str) -> dict[str, Entry]: ...


def _presence(cache: Cache, closure: list[PathInfo], toplevels: list[StorePath], pointers: list[str],
              verify: bool) -> Presence:
    """What the push needs to know of the cache: by manifests and names (core.cache.presence), or from a listing when
    asked to verify or when the cache cannot answer by name."""
    if isinstance(cache, NameLookup) and not verify:
        return presence(cache, closure, toplevels, pointers)
    return Presence(names=_listing(cache, closure, toplevels))


def _listing(cache: Cache, closure: list[PathInfo], toplevels: list[StorePath]) -> dict[str, Entry]:
    """The cache's listing. The NARs (half the names) are listed only when something is missing."""
    if not isinstance(cache, FolderListing):
        return cache.listing()
    listing, complete = cache.listing_around(NAR_FOLDER)
    if complete:
        return listing
    if any(manifest_name(t) not in listing for t in toplevels) or \
            any(narinfo_name(info.path) not in listing for info in closure):
        listing.update(cache.listing_of(NAR_FOLDER))
    return listing


def small_nar(info: PathInfo) -> bytes | None:
    """The NAR of a small store path, serialized here; None when it is not exactly the NAR the store has
    (its NarHash and NarSize), or cannot be read."""
    chunks = _Chunks()
    try:
        _nar_string(chunks, b"nix-archive-1")
        _nar_node(chunks, os.fsencode(str(info.path)), info.nar_size)
    except (OSError, _TooBig):
        return None
    data = b"".join(chunks)
    if len(data) != info.nar_size or hashlib.sha256(data).digest() != info.nar_hash:
        return None
    return data


class _TooBig(Exception):
    pass


class _Chunks(list[bytes]):
    size = 0


def _nar_string(chunks: _Chunks, data: bytes) -> None:
    padding = -len(data) % 8
    chunks.append(len(data).to_bytes(8, "little"))
    chunks.append(data)
    if padding:
        chunks.append(_NAR_PADDING[:padding])
    chunks.size += 8 + len(data) + padding


def _nar_node(chunks: _Chunks, path: bytes, limit: int) -> None:
    """Nix's NAR serialization of one file system node (as `nix-store --dump` writes it)."""
    if chunks.size > limit:
        raise _TooBig()
    mode = os.lstat(path).st_mode
    _nar_string(chunks, b"(")
    _nar_string(chunks, b"type")
    if stat.S_ISLNK(mode):
        _nar_string(chunks, b"symlink")
        _nar_string(chunks, b"target")
        _nar_string(chunks, os.readlink(path))
    elif stat.S_ISREG(mode):
        _nar_string(chunks, b"regular")
        if mode & stat.S_IXUSR:
            _nar_string(chunks, b"executable")
            _nar_string(chunks, b"")
        _nar_string(chunks, b"contents")
        with open(path, "rb") as file:
            _nar_string(chunks, file.read(limit + 1))
    elif stat.S_ISDIR(mode):
        _nar_string(chunks, b"directory")
        for name in sorted(os.listdir(path)):
            _nar_string(chunks, b"entry")
            _nar_string(chunks, b"(")
            _nar_string(chunks, b"name")
            _nar_string(chunks, name)
            _nar_string(chunks, b"node")
            _nar_node(chunks, os.path.join(path, name), limit)
            _nar_string(chunks, b")")
    else:
        raise OSError(f"{path!r}: not a regular file, directory or symlink")
    _nar_string(chunks, b")")


def _write_delta(cache: Cache, job: _Push, closure: list[PathInfo], found: Presence, source: StorePath,
                 target: StorePath, limit: int) -> Delta | None:
    """Store the delta object from `source` to `target` and describe it; None when deltas are off, `source`'s
    manifest (read by the presence check, else downloaded here) is not in the cache, or the delta would be larger
    than `limit` bytes (told before compressing anything, from the sizes the push knows, when it can)."""
    if limit <= 0 or source == target:
        return None
    before = found.manifests.get(source)
    if before is None:
        try:
            before = parse_manifest(cache.get_bytes(manifest_name(source)), manifest_name(source))
        except (CacheMissing, CacheError):
            return None
    had = {item.path for item in before.paths}
    added = [info for info in closure_within(closure, target) if info.path not in had]
    known = sum(job.stored[i.path].file_size if i.path in job.stored else found.file_sizes.get(i.path, 0)
                for i in added)
    if known > limit:
        return None
    data = delta_module.build(source, target, [functools.partial(job.delta_member, info) for info in added], limit)
    if data is None:
        return None
    described = delta_module.describe(source, target, data)
    cache.put_bytes(described.name, data, content_type=DELTA_TYPE)
    return described


def _publish_pointer(cache: Cache, name: str, toplevel: StorePath, key: SecretKey,
                     listing: dict[str, Entry], clock: Callable[[], float], valid_for: int,
                     make_delta: Callable[[StorePath, StorePath], Delta | None] = lambda *_: None
                     ) -> PublishedPointer:
    """The pointer after the push, and whether this push published it: not when its verified, unexpired file info
    already names `toplevel` (a replayed genuine .txt could claim that, but the same writer could as well replay
    the sidecar after any publish: hosts' serials and the validity window answer that, not a publish)."""
    before = pointers_module.current(listing, [key.public_key()]).get(name)
    if before is not None and before.path == str(toplevel) and not pointers_module.is_expired(before.expires,
                                                                                             clock()):
        return PublishedPointer(name, str(toplevel), before.serial, False)
    source = parse_store_path(before.path) if before is not None and before.verified else None
    delta = make_delta(source, toplevel) if source is not None else None
    published = pointers_module.publish(cache, name, toplevel, key, clock=clock, valid_for=valid_for, delta=delta)
    return PublishedPointer(name, str(toplevel), published.serial, True, delta.size if delta else 0)


def _manifest_paths(closure: list[PathInfo], stored: dict[StorePath, Stored], found: Presence,
                    cache: Cache) -> Iterator[ManifestPath]:
    for info in closure:
        yield ManifestPath(info.path, info.nar_size, _file_size(info, stored, found, cache), info.references,
                           info.nar_hash)


def _file_size(info: PathInfo, stored: dict[StorePath, Stored], found: Presence, cache: Cache) -> int:
    if info.path in stored:
        return stored[info.path].file_size
    if info.path in found.file_sizes:
        return found.file_sizes[info.path]
    if nar_name(info) in found.names:
        return found.names[nar_name(info)].size
    # a path another tool pushed, under another NAR name: its narinfo says
    text = cache.get_bytes(narinfo_name(info.path)).decode()
    return parse_narinfo(text, narinfo_name(info.path)).file_size
