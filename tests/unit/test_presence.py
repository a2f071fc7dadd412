"""core.cache.presence: what a push finds already stored, reading manifests before asking name by name, against a
folder cache that counts what it is asked."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

import pytest

from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.interface import Entry
from topdeck.core.cache.manifest import Manifest, ManifestPath, manifest_name, render_manifest
from topdeck.core.cache.presence import CACHE_INFO, nar_file, nar_name, narinfo_name, presence
from topdeck.core.nix.localnix import PathInfo
from topdeck.core.nix.nixbase32 import encode
from topdeck.core.nix.store import parse_store_path


class CountingCache(DirCache):
    def __init__(self, root: Path):
        super().__init__(root, "file:///cache")
        self.gets: list[str] = []
        self.lookups: list[list[str]] = []

    def get_bytes(self, name: str) -> bytes:
        self.gets.append(name)
        return super().get_bytes(name)

    def lookup(self, names: Collection[str]) -> dict[str, Entry]:
        self.lookups.append(sorted(names))
        return super().lookup(names)


def info(name: str, digit: str) -> PathInfo:
    return PathInfo(parse_store_path(f"/nix/store/{digit * 32}-{name}"), hashlib.sha256(name.encode()).digest(),
                    1000, ())


LIBC, APP, TOP = info("glibc-2.40", "1"), info("app-1.0", "2"), info("nixos-system-web", "3")
CLOSURE = [LIBC, APP, TOP]


@pytest.fixture
def cache(tmp_path: Path) -> CountingCache:
    return CountingCache(tmp_path / "cache")


def test_names_follow_the_store_path_and_the_nar_hash() -> None:
    assert narinfo_name(TOP.path) == f"{'3' * 32}.narinfo"
    assert nar_name(TOP) == nar_file(TOP.nar_hash) == f"nar/sha256:{encode(TOP.nar_hash)}.nar.zst"


def test_an_empty_cache_is_asked_for_each_narinfo_and_nar_once(cache: CountingCache) -> None:
    found = presence(cache, CLOSURE, [TOP.path], [])
    assert found.names == {} and found.file_sizes == {}
    assert cache.gets == [manifest_name(TOP.path)]
    assert cache.lookups == [sorted([narinfo_name(i.path) for i in CLOSURE] + [CACHE_INFO]),
                             sorted(nar_name(i) for i in CLOSURE)]


def test_a_present_manifest_answers_for_its_whole_closure_without_lookups(cache: CountingCache) -> None:
    manifest = Manifest(TOP.path, tuple(ManifestPath(i.path, 1000, 300 + n, ()) for n, i in enumerate(CLOSURE)))
    cache.put_bytes(manifest_name(TOP.path), render_manifest(manifest), content_type="application/json")
    found = presence(cache, CLOSURE, [TOP.path], [])
    assert {narinfo_name(i.path) for i in CLOSURE} | {manifest_name(TOP.path), CACHE_INFO} == set(found.names)
    assert found.file_sizes == {LIBC.path: 300, APP.path: 301, TOP.path: 302}
    assert cache.lookups == []


def test_a_narinfo_found_by_name_still_asks_for_its_nar_when_no_manifest_sized_it(cache: CountingCache) -> None:
    cache.put_bytes(narinfo_name(LIBC.path), b"StorePath: ...", content_type="text/x-nix-narinfo")
    cache.put_bytes(nar_name(APP), b"nar without its narinfo", content_type="application/x-nix-nar")
    found = presence(cache, CLOSURE, [TOP.path], [])
    assert set(found.names) == {narinfo_name(LIBC.path), nar_name(APP)}
    assert cache.lookups[1] == sorted(nar_name(i) for i in CLOSURE)


def test_a_manifest_this_version_cannot_read_answers_for_nothing(cache: CountingCache) -> None:
    cache.put_bytes(manifest_name(TOP.path), b'{"format": 99}', content_type="application/json")
    found = presence(cache, CLOSURE, [TOP.path], [])
    assert found.names == {} and len(cache.lookups) == 2
