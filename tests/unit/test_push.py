"""core.cache.push into a folder cache with the closure and the NARs given (no Nix): what a first push stores and signs,
what a second one skips, and the pointer it publishes. Pushing real closures into the B2 emulator, and hosts
substituting from it: tests/lab/test_push_lab.py."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from topdeck.core.cache import pointers
from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.manifest import manifest_name, parse_manifest
from topdeck.core.cache.presence import nar_name, narinfo_name
from topdeck.core.cache.push import PushSettings, closure_within, push, push_all
from topdeck.core.errors import TopdeckError
from topdeck.core.nix.localnix import PathInfo
from topdeck.core.nix.narinfo import parse_narinfo
from topdeck.core.nix.signing import generate_keypair, verify_narinfo
from topdeck.core.nix.store import StorePath, parse_store_path

SECRET, PUBLIC = generate_keypair("unit-push-1")
NARS: dict[StorePath, bytes] = {}


def info(name: str, digit: str, *references: PathInfo, size: int = 5000) -> PathInfo:
    path = parse_store_path(f"/nix/store/{digit * 32}-{name}")
    nar = hashlib.sha256(name.encode()).digest() * (size // 32)
    NARS[path] = nar
    return PathInfo(path, hashlib.sha256(nar).digest(), len(nar), (path, *(r.path for r in references)))


LIBC = info("glibc-2.40", "1", size=200_000)
APP = info("app-1.0", "2", LIBC)
TOP = info("nixos-system-web", "3", LIBC, APP)
OTHER_TOP = info("nixos-system-db", "4", LIBC)
CLOSURES = {TOP.path: [LIBC, APP, TOP], OTHER_TOP.path: [LIBC, OTHER_TOP]}


def closure_of(toplevels: list[StorePath]) -> list[PathInfo]:
    union = {i.path: i for top in toplevels for i in CLOSURES[top]}
    return list(union.values())


@contextlib.contextmanager
def nar_source(path: StorePath) -> Iterator[io.BytesIO]:
    yield io.BytesIO(NARS[path])


@pytest.fixture
def cache(tmp_path: Path) -> DirCache:
    return DirCache(tmp_path / "cache", "file:///cache")


def test_a_first_push_stores_every_nar_a_signed_narinfo_the_manifest_and_the_pointer(cache: DirCache) -> None:
    result = push(TOP.path, cache, SECRET, pointer="web", closure_of=closure_of, nar_source=nar_source)
    assert (result.paths_total, result.paths_uploaded, result.paths_skipped) == (3, 3, 0)
    assert result.nar_bytes_uploaded == sum(i.nar_size for i in CLOSURES[TOP.path])
    for item in CLOSURES[TOP.path]:
        narinfo = parse_narinfo(cache.get_bytes(narinfo_name(item.path)).decode())
        assert verify_narinfo(narinfo, [PUBLIC]) and narinfo.nar_hash == item.nar_hash
        stored = cache.get_bytes(nar_name(item))
        assert narinfo.compression == "zstd" and narinfo.file_size == len(stored)
        assert hashlib.sha256(stored).digest() == narinfo.file_hash
        assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == NARS[item.path]
    manifest = parse_manifest(cache.get_bytes(manifest_name(TOP.path)), "manifest")
    assert [p.path for p in manifest.paths] == [LIBC.path, APP.path, TOP.path]
    assert (result.pointer, result.pointer_serial, result.pointer_changed) == ("web", 1, True)
    assert cache.get_bytes(pointers.text_name("web")) == f"{TOP.path}\n".encode()
    assert cache.get_bytes("nix-cache-info").startswith(b"StoreDir: /nix/store\n")


def test_a_second_push_skips_what_the_cache_holds_and_republishes_nothing(cache: DirCache) -> None:
    push(TOP.path, cache, SECRET, pointer="web", closure_of=closure_of, nar_source=nar_source)
    again = push(TOP.path, cache, SECRET, pointer="web", closure_of=closure_of, nar_source=nar_source)
    assert (again.paths_uploaded, again.paths_skipped, again.pointer_changed) == (0, 3, False)
    other = push(OTHER_TOP.path, cache, SECRET, closure_of=closure_of, nar_source=nar_source)
    assert (other.paths_uploaded, other.paths_skipped) == (1, 1)  # glibc is shared


def test_several_toplevels_in_one_push_each_get_a_manifest_of_their_own_closure(cache: DirCache) -> None:
    result = push_all([TOP.path, OTHER_TOP.path], cache, SECRET, pointers={"db": OTHER_TOP.path},
                      closure_of=closure_of, nar_source=nar_source)
    assert result.paths_total == 4 and [p.name for p in result.pointers] == ["db"]
    manifest = parse_manifest(cache.get_bytes(manifest_name(OTHER_TOP.path)), "manifest")
    assert {p.path for p in manifest.paths} == {LIBC.path, OTHER_TOP.path}


def test_two_paths_with_the_same_contents_store_their_nar_once(tmp_path: Path) -> None:
    twin_a, twin_b = info("share-data", "5", size=100_000), info("share-data", "6", size=100_000)
    top = info("nixos-system-twins", "7", twin_a, twin_b)
    CLOSURES[top.path] = [twin_a, twin_b, top]
    puts: list[str] = []

    class Counting(DirCache):
        def put_bytes(self, name: str, data: bytes, **kwargs) -> None:  # type: ignore[no-untyped-def]
            puts.append(name)
            super().put_bytes(name, data, **kwargs)

    cache = Counting(tmp_path / "cache", "file:///cache")
    result = push(top.path, cache, SECRET, closure_of=closure_of, nar_source=nar_source,
                  settings=PushSettings(jobs=8))
    assert nar_name(twin_a) == nar_name(twin_b) and puts.count(nar_name(twin_a)) == 1
    assert (result.paths_uploaded, result.paths_skipped) == (3, 0)  # both twins are new in the cache
    assert result.nar_bytes_uploaded == twin_a.nar_size + top.nar_size  # their NAR went once
    for twin in (twin_a, twin_b):
        narinfo = parse_narinfo(cache.get_bytes(narinfo_name(twin.path)).decode())
        assert narinfo.url == nar_name(twin) and narinfo.file_size == len(cache.get_bytes(nar_name(twin)))


def test_a_pointer_to_something_not_pushed_is_refused_before_anything_is_stored(cache: DirCache) -> None:
    with pytest.raises(TopdeckError, match=f"^pointer db: {OTHER_TOP.path} is not one of the toplevels pushed$"):
        push_all([TOP.path], cache, SECRET, pointers={"db": OTHER_TOP.path}, closure_of=closure_of,
                 nar_source=nar_source)
    assert cache.listing() == {}


def test_closure_within_follows_references_in_the_closures_order() -> None:
    union = closure_of([TOP.path, OTHER_TOP.path])
    assert closure_within(union, OTHER_TOP.path) == [LIBC, OTHER_TOP]
    assert closure_within(union, APP.path) == [LIBC, APP]
