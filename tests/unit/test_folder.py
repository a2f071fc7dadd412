"""core.cache.folder: the folder cache (DirCache) keeps files, their versions and custom info as a bucket does."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.interface import Entry
from topdeck.core.errors import CacheError, CacheMissing


@pytest.fixture
def cache(tmp_path: Path) -> DirCache:
    return DirCache(tmp_path / "cache", "file:///cache")


def test_files_are_listed_by_name_from_the_root_without_its_own_records(cache: DirCache) -> None:
    cache.put_bytes("nix-cache-info", b"StoreDir: /nix/store\n", content_type="text/x-nix-cache-info")
    cache.put_stream("nar/abc.nar.zst", io.BytesIO(b"x" * 3_000_000), content_type="application/x-nix-nar")
    listing = cache.listing()
    assert sorted(listing) == ["nar/abc.nar.zst", "nix-cache-info"]
    assert listing["nar/abc.nar.zst"].size == 3_000_000
    assert cache.get_bytes("nix-cache-info") == b"StoreDir: /nix/store\n"
    assert cache.listing_of("nar/") == {"nar/abc.nar.zst": listing["nar/abc.nar.zst"]}
    assert not list(cache.root.rglob("*.tmp.*"))


def test_each_write_is_a_version_newest_first_with_its_info(cache: DirCache) -> None:
    cache.put_bytes("pointers/web", b"one", content_type="text/plain", info={"serial": "1"})
    cache.put_bytes("pointers/web", b"three", content_type="text/plain", info={"serial": "2"})
    versions = cache.versions("pointers/web")
    assert [(v.size, v.info) for v in versions] == [(5, {"serial": "2"}), (3, {"serial": "1"})]
    assert versions[0].uploaded_ms >= versions[1].uploaded_ms > 0
    assert cache.listing()["pointers/web"] == versions[0]
    assert cache.get_bytes("pointers/web") == b"three"  # a folder keeps only the newest content
    assert [v.file_id for v in cache.all_versions()] == ["pointers/web", "pointers/web"]


def test_lookup_answers_for_the_names_asked_only(cache: DirCache) -> None:
    cache.put_bytes("a.narinfo", b"A", content_type="text/x-nix-narinfo")
    cache.put_bytes("b.narinfo", b"B", content_type="text/x-nix-narinfo")
    assert sorted(cache.lookup(["a.narinfo", "missing.narinfo"])) == ["a.narinfo"]


def test_a_file_placed_by_another_tool_is_listed_with_its_size(cache: DirCache) -> None:
    (cache.root / "foreign.narinfo").write_bytes(b"12345")
    assert cache.listing()["foreign.narinfo"] == Entry("foreign.narinfo", 5)
    assert cache.versions("foreign.narinfo") == []


def test_a_missing_file_is_cache_missing(cache: DirCache) -> None:
    with pytest.raises(CacheMissing, match="absent.narinfo not found"):
        cache.get_bytes("absent.narinfo")


def test_deleting_a_version_removes_the_file_and_its_history(cache: DirCache) -> None:
    cache.put_bytes("old.narinfo", b"x", content_type="text/x-nix-narinfo")
    cache.delete_version(cache.versions("old.narinfo")[0])
    assert cache.listing() == {} and cache.versions("old.narinfo") == []
    cache.delete_version(Entry("old.narinfo", 1))  # already gone: nothing to do


def test_a_broken_history_is_one_line_naming_it(cache: DirCache) -> None:
    cache.put_bytes("p", b"x", content_type="text/plain")
    history = cache.root / ".topdeck" / "versions" / "p.jsonl"
    history.write_text('{"size": 1, "size": 2}\n')
    with pytest.raises(CacheError, match=r"p\.jsonl: not a readable version history"):
        cache.versions("p")


def test_two_writers_of_one_name_at_once_both_succeed(tmp_path: Path) -> None:
    """Two store paths with the same NAR upload one file name from two push threads at the same moment."""
    import threading

    cache = DirCache(tmp_path / "cache", f"file://{tmp_path / 'cache'}")
    both_open = threading.Barrier(2)
    failures: list[BaseException] = []

    def chunks():  # type: ignore[no-untyped-def]
        yield b"nar"
        both_open.wait(timeout=5)  # each writer holds its temporary file open until the other has one too
        yield b" bytes"

    def write() -> None:
        try:
            cache.put_stream("nar/same.nar.zst", _Chunks(chunks()), content_type="application/x-nix-nar")
        except BaseException as error:  # noqa: BLE001 - the test reports any failure of either writer
            failures.append(error)

    writers = [threading.Thread(target=write) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=10)
    assert failures == []
    assert cache.get_bytes("nar/same.nar.zst") == b"nar bytes"
    assert [p.name for p in (tmp_path / "cache" / "nar").iterdir()] == ["same.nar.zst"]


class _Chunks(io.RawIOBase):
    def __init__(self, chunks) -> None:  # type: ignore[no-untyped-def]
        self.chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self.chunks, b"")
