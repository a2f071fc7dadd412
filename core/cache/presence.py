"""What of a push's closure the cache already holds, at a cost that grows with the change, not with the cache.

Read, in this order, stopping as soon as nothing is left to know:
1. each pushed toplevel's own manifest (class B each): present, it answers for the toplevel's whole closure;
2. the pointers (one listing of `toplevels/`, class C), when the push publishes one or something is still unknown;
3. the manifests of the pointers' current targets (class B each): those this push moves first, then the most
   recently published others, at most EXTRA_MANIFESTS of these;
4. the rest by name (`NameLookup.lookup`): the narinfos no manifest answers for, then the NARs of the missing ones
   (an interrupted push may have left a NAR without its narinfo) and of present ones whose FileSize is unknown.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from topdeck.core.cache import pointers as pointers_module
from topdeck.core.cache.interface import Entry, NameLookup
from topdeck.core.cache.manifest import Manifest, manifest_name, parse_manifest
from topdeck.core.errors import CacheError, CacheMissing, StorePathError
from topdeck.core.nix.localnix import PathInfo
from topdeck.core.nix.narinfo import hash_to_nix32
from topdeck.core.nix.store import StorePath, parse_store_path

CACHE_INFO = "nix-cache-info"
EXTRA_MANIFESTS = 4
NAR_FOLDER = "nar/"


@dataclass
class Presence:
    """`names`: files known to be stored (pointers, manifests, narinfos, NARs, nix-cache-info), as a listing would
    name them (the sizes of narinfos and manifests known only from a manifest are 0); `file_sizes`: FileSize by
    path, from the manifests read; `manifests`: those manifests, by toplevel (a delta needs its source's)."""

    names: dict[str, Entry] = field(default_factory=dict)
    file_sizes: dict[StorePath, int] = field(default_factory=dict)
    manifests: dict[StorePath, Manifest] = field(default_factory=dict)


def narinfo_name(path: StorePath) -> str:
    return f"{path.hash_part}.narinfo"


def nar_name(info: PathInfo) -> str:
    return nar_file(info.nar_hash)


def nar_file(nar_hash: bytes) -> str:
    """Where push stores the NAR with that NarHash (another tool may have used another name)."""
    return f"{NAR_FOLDER}{hash_to_nix32(nar_hash)}.nar.zst"


def presence(cache: NameLookup, closure: list[PathInfo], toplevels: list[StorePath],
             pointers: Collection[str]) -> Presence:
    """What `cache` holds of `closure` (the union of the closures of `toplevels`), for a push that publishes the
    pointers named `pointers`."""
    found = Presence()
    unknown = {info.path: info for info in closure}
    for toplevel in toplevels:
        _vouch(found, unknown, manifest_name(toplevel), _manifest(cache, toplevel))
    if pointers or unknown:
        found.names.update(cache.listing_of(f"{pointers_module.DIRECTORY}/"))
    for target in _targets(found.names, pointers, toplevels):
        if not unknown:
            break
        _vouch(found, unknown, manifest_name(target), _manifest(cache, target))
    if any(name.startswith("manifests/") for name in found.names):
        found.names[CACHE_INFO] = Entry(CACHE_INFO, 0)  # push stores it before any manifest; gc never deletes it
    _check(cache, found, unknown.values())
    return found


def _manifest(cache: NameLookup, toplevel: StorePath) -> Manifest | None:
    """The toplevel's manifest, or None when it is absent or not one this version reads (it answers for nothing)."""
    name = manifest_name(toplevel)
    try:
        data = cache.get_bytes(name)
    except CacheMissing:
        return None
    try:
        return parse_manifest(data, name)
    except CacheError:
        return None


def _vouch(found: Presence, unknown: dict[StorePath, PathInfo], name: str, manifest: Manifest | None) -> None:
    """Count every path of a present manifest as stored, without asking the cache.

    This is the one place presence is taken on a manifest's word, and it is sound because of an invariant every
    writer of the cache keeps: a manifest present means every narinfo of its closure is present. Push stores a
    manifest only after all those narinfos (core/cache/push.py), and gc deletes manifests before any narinfo
    (core/gc.py). A cache broken otherwise (a narinfo deleted by hand under a manifest that names it) is outside
    it: a push then neither sees the hole nor fills it, and a new manifest it writes names the missing path too;
    `push(..., verify=True)` checks every path against a listing of the cache and uploads what is missing."""
    if manifest is None:
        return
    found.names[name] = Entry(name, 0)
    found.manifests[manifest.toplevel] = manifest
    for item in manifest.paths:
        found.names[narinfo_name(item.path)] = Entry(narinfo_name(item.path), 0)
        found.file_sizes[item.path] = item.file_size
        unknown.pop(item.path, None)


def _targets(names: Mapping[str, Entry], pointers: Collection[str], toplevels: Iterable[StorePath]
             ) -> list[StorePath]:
    """The pointers' current targets worth reading the manifest of: those of `pointers` first, then the others,
    most recently published first (at most EXTRA_MANIFESTS of them); never one of `toplevels` (read already)."""
    hinted = pointers_module.hinted_paths(names)  # unverified: only which manifests to read, whose word is the cache's
    by_recency = sorted(hinted, key=lambda name: -names[pointers_module.text_name(name)].uploaded_ms)
    moved = [name for name in pointers if name in hinted]
    others = [name for name in by_recency if name not in moved][:EXTRA_MANIFESTS]
    targets: list[StorePath] = []
    for name in moved + others:
        try:
            target = parse_store_path(hinted[name])
        except StorePathError:
            continue  # a pointer without topdeck's file info (written by hand): nothing to learn from it
        if target not in toplevels and target not in targets:
            targets.append(target)
    return targets


def _check(cache: NameLookup, found: Presence, unknown: Iterable[PathInfo]) -> None:
    """Look up by name what no manifest answered for: the narinfos (and nix-cache-info), then the NARs that may
    spare an upload (of missing paths) or name a FileSize (of present paths no manifest sized)."""
    rest = list(unknown)
    names = [narinfo_name(info.path) for info in rest] + ([] if CACHE_INFO in found.names else [CACHE_INFO])
    if names:
        found.names.update(cache.lookup(names))
    nars = [nar_name(info) for info in rest
            if narinfo_name(info.path) not in found.names or info.path not in found.file_sizes]
    if nars:
        found.names.update(cache.lookup(nars))
