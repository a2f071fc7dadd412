"""The delta object (core/cache/delta.py) without hosts: its container, the size limit, what push writes into it and how
the pointer names it (under its own signature), which hosts the plan has take it, how gc treats it, and its setting.
Hosts fetching it: tests/lab/test_delta_lab.py."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import tarfile
import time
from pathlib import Path
from typing import cast

import pytest
import zstandard
from test_inventory import HOST, write_inventory
from test_push import APP, CLOSURES, LIBC, NARS, PUBLIC, SECRET, TOP, closure_of, info, nar_source

from topdeck.core.cache import delta, pointers
from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.manifest import Manifest, ManifestPath
from topdeck.core.cache.presence import nar_name, narinfo_name
from topdeck.core.cache.push import PushSettings, push
from topdeck.core.errors import CacheError, InventoryError
from topdeck.core.gc import plan_gc
from topdeck.core.inventory import load_inventory
from topdeck.core.nix.narinfo import parse_narinfo
from topdeck.core.nix.signing import verify_narinfo
from topdeck.core.nix.store import StorePath
from topdeck.core.plan import ProbeState, host_plan

APP2 = info("app-2.0", "5", LIBC)
TOP2 = info("nixos-system-web", "6", LIBC, APP2)
CLOSURES[TOP2.path] = [LIBC, APP2, TOP2]
LATER = time.time() + 10 * 24 * 3600
NARINFO = "0123456789abcdfghijklmnpqrsvwxyz.narinfo"


@pytest.fixture
def cache(tmp_path: Path) -> DirCache:
    return DirCache(tmp_path / "cache", "file:///cache")


def _push(cache: DirCache, top: StorePath, delta_max_bytes: int = delta.max_bytes(delta.DEFAULT_MAX_MIB)) -> int:
    result = push(top, cache, SECRET, pointer="web", closure_of=closure_of, nar_source=nar_source,
                  settings=PushSettings(delta_max_bytes=delta_max_bytes))
    return result.pointers[0].delta_bytes


# --- what push writes --------------------------------------------------------------------------------------------


def test_a_moved_pointer_names_a_delta_of_exactly_the_added_paths_signed_and_stored(cache: DirCache) -> None:
    assert _push(cache, TOP.path) == 0  # a first publish has no previous target
    size = _push(cache, TOP2.path)

    named = pointers.current(cache.listing(), [PUBLIC])["web"].delta
    assert named == pointers.read_verified(cache, "web", [PUBLIC]).delta
    assert named is not None and (named.source, named.target, named.size) == (TOP.path, TOP2.path, size)
    data = cache.get_bytes(named.name)
    assert named.name == f"deltas/{TOP.path.hash_part}-{TOP2.path.hash_part}.tar"
    assert hashlib.sha256(data).hexdigest() == named.sha256 and len(data) == size
    files = delta.unpack(data)
    assert set(files) == {narinfo_name(APP2.path), narinfo_name(TOP2.path), nar_name(APP2), nar_name(TOP2)}
    for item in (APP2, TOP2):
        narinfo = parse_narinfo(files[narinfo_name(item.path)].decode())
        assert verify_narinfo(narinfo, [PUBLIC]) and narinfo.url == nar_name(item)
        assert zstandard.ZstdDecompressor().decompressobj().decompress(files[narinfo.url]) == NARS[item.path]
        assert files[narinfo.url] == cache.get_bytes(nar_name(item))  # the same bytes the cache serves


def test_the_push_summary_names_the_delta_it_wrote(cache: DirCache) -> None:
    from topdeck.cli.push import summary

    first = push(TOP.path, cache, SECRET, pointer="web", closure_of=closure_of, nar_source=nar_source)
    second = push(TOP2.path, cache, SECRET, pointer="web", closure_of=closure_of, nar_source=nar_source)
    assert "delta object" not in summary(first)
    assert f"pointer web: published (serial 2); a delta object of {second.pointers[0].delta_bytes / 1024:.1f} KiB " \
           "from its previous target" in summary(second)


def test_no_delta_above_the_limit_or_with_deltas_off_and_the_pointer_still_moves(cache: DirCache) -> None:
    _push(cache, TOP.path)
    assert _push(cache, TOP2.path, delta_max_bytes=2000) == 0
    assert _push(cache, TOP.path, delta_max_bytes=0) == 0
    version = pointers.current(cache.listing(), [PUBLIC])["web"]
    assert version.path == str(TOP.path) and version.delta is None
    assert not [name for name in cache.listing() if name.startswith(delta.FOLDER)]


def test_build_stops_making_members_once_past_the_limit() -> None:
    made = []

    def member(n: int) -> delta.Member:
        made.append(n)
        return delta.Member(NARINFO, b"i" * 100, f"nar/{n}.nar.zst", b"n" * 1000)

    assert delta.build(TOP.path, TOP2.path, [functools.partial(member, n) for n in range(10)], limit=5000) is None
    assert made == [0, 1]
    assert delta.build(TOP.path, TOP2.path, [lambda: member(0)], limit=10_000) is not None


# --- the container -----------------------------------------------------------------------------------------------


def test_pack_is_deterministic_and_unpacks_to_what_it_was_given() -> None:
    member = delta.Member(NARINFO, b"StorePath: x\n", "nar/sha256:0abc.nar.zst", b"\x28\xb5\x2f\xfd")
    data = delta.pack([member])
    assert data == delta.pack([member]) and len(data) % 512 == 0
    assert delta.unpack(data) == {NARINFO: member.narinfo, member.nar_name: member.nar}


def _tar(*members: tarfile.TarInfo) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size))
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.size = kind, size if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        member.linkname = "/etc"
    return member


@pytest.mark.parametrize(("data", "why"), [
    (b"not a tar at all" * 40, "not a tar file"),
    (_tar(_member("../x.narinfo")), "neither a narinfo nor a NAR"),
    (_tar(_member("/etc/passwd")), "neither a narinfo nor a NAR"),
    (_tar(_member("nar/../../x.nar")), "neither a narinfo nor a NAR"),
    (_tar(_member("nar", tarfile.SYMTYPE)), "not a regular file"),
    (_tar(_member("nar", tarfile.DIRTYPE)), "not a regular file"),
    (_tar(_member(NARINFO), _member(NARINFO)), "in it twice"),
])
def test_unpack_refuses_anything_but_a_binary_cache_folders_files(data: bytes, why: str) -> None:
    with pytest.raises(CacheError, match=why):
        delta.unpack(data, "deltas/x.tar")


def test_the_field_parses_only_source_sha256_and_size() -> None:
    field = f"{TOP.path} {'a' * 64} 1234"
    assert delta.parse_field(field, TOP2.path) == delta.Delta(TOP.path, TOP2.path, "a" * 64, 1234)
    for bad in ("", f"{TOP.path} {'a' * 64}", f"{TOP.path} {'A' * 64} 1", f"{TOP.path} {'a' * 64} -1",
                f"/etc {'a' * 64} 1", f"{TOP.path} {'a' * 64} 1 2", f"{TOP.path} {'a' * 64} {'9' * 16}"):
        with pytest.raises(CacheError, match="the pointer's delta"):
            delta.parse_field(bad, TOP2.path)


# --- the pointer names it, under a signature of its own ----------------------------------------------------------


def test_the_deltas_signature_binds_it_to_the_pointer_version() -> None:
    named = delta.Delta(TOP.path, TOP2.path, "b" * 64, 4096)
    pointer = pointers.signed(pointers.Pointer("web", TOP2.path, 7, 1000, delta=named), SECRET)
    again = pointers.parse_sidecar(pointers.render_sidecar(pointer), "web.json")
    assert again == pointer and pointers.verified_delta(again, [PUBLIC]) == named
    pointers.verify_pointer(again, [PUBLIC])  # the pointer's own signature is the one without a delta
    for forged in (dataclasses.replace(pointer, delta=dataclasses.replace(named, sha256="c" * 64)),
                   dataclasses.replace(pointer, delta=dataclasses.replace(named, source=APP.path)),
                   dataclasses.replace(pointer, serial=8), dataclasses.replace(pointer, name="db"),
                   dataclasses.replace(pointer, delta_sig="")):
        assert pointers.verified_delta(forged, [PUBLIC]) is None


def test_file_info_whose_delta_does_not_verify_names_no_delta(cache: DirCache) -> None:
    _push(cache, TOP.path)
    _push(cache, TOP2.path)
    entry = cache.listing()[pointers.text_name("web")]
    info = dict(entry.info)
    info[pointers.INFO_DELTA] = info[pointers.INFO_DELTA].replace(str(TOP.path), str(APP.path))
    version = pointers.version_of(dataclasses.replace(entry, info=info), "web", [PUBLIC])
    assert version.verified and version.path == str(TOP2.path) and version.delta is None


# --- the plan: who takes it ---------------------------------------------------------------------------------------


MANIFEST = Manifest(TOP2.path, tuple(ManifestPath(i.path, i.nar_size, i.nar_size // 2, i.references, i.nar_hash)
                                     for i in (LIBC, APP2, TOP2)))
DELTA = delta.Delta(TOP.path, TOP2.path, "d" * 64, 9000)


def _state(current: StorePath | None) -> ProbeState:
    missing = frozenset({APP2.path, TOP2.path}) if current != TOP2.path else frozenset()
    return ProbeState(current, current, 3, 10**9, missing, {})


@pytest.mark.parametrize(("current", "offered", "takes"), [
    (TOP.path, DELTA, True),  # on the delta's source
    (APP.path, DELTA, False),  # on another system
    (None, DELTA, False),  # no system yet
    (TOP.path, None, False),  # the pointer names no delta
    (TOP2.path, DELTA, False),  # already on the target: nothing to fetch
    (TOP.path, dataclasses.replace(DELTA, target=TOP.path), False),  # a delta to another target
])
def test_the_plan_has_a_host_take_the_delta_only_when_it_runs_its_source(
        current: StorePath | None, offered: delta.Delta | None, takes: bool) -> None:
    plan = host_plan("web-1", TOP2.path, MANIFEST, _state(current), offered)
    assert (plan.delta is not None) == takes
    if takes:
        assert plan.class_b == 1 and plan.fetch_paths == 2  # one download instead of a narinfo and a NAR per path
    elif plan.fetch_paths:
        assert plan.class_b == 2 * plan.fetch_paths


# --- gc -----------------------------------------------------------------------------------------------------------


def test_gc_keeps_a_current_pointers_delta_while_both_its_ends_are_kept_and_deletes_it_first_otherwise(
        cache: DirCache) -> None:
    _push(cache, TOP.path)
    _push(cache, TOP2.path)
    named = pointers.current(cache.listing(), [PUBLIC])["web"].delta
    assert named is not None
    versions = cache.all_versions()
    both = plan_gc(cache, {TOP2.path: ["pointer"], TOP.path: ["web-1 current"]}, versions, min_age=3600, now=LATER,
                   deltas=[named])
    assert named.name not in {e.name for e in both.deletions}
    target_only = plan_gc(cache, {TOP2.path: ["pointer"]}, versions, min_age=3600, now=LATER, deltas=[named])
    assert target_only.deletions[0].name == named.name  # before the source's manifest and paths
    assert {e.name for e in target_only.deletions} >= {named.name, narinfo_name(TOP.path)}
    not_named = plan_gc(cache, {TOP2.path: ["pointer"], TOP.path: ["x"]}, versions, min_age=3600, now=LATER)
    assert [e.name for e in not_named.deletions] == [named.name]
    young = plan_gc(cache, {TOP2.path: ["pointer"]}, versions, min_age=3600, now=time.time(), deltas=[])
    assert named.name not in {e.name for e in young.deletions}


# --- the setting --------------------------------------------------------------------------------------------------


def test_the_limit_is_a_setting_of_the_cache_checked_with_one_line(tmp_path: Path) -> None:
    assert load_inventory(write_inventory(tmp_path / "a", {"web-1": HOST})).cache.delta_max_mib == 64
    config = '[cache]\nbucket = "topdeck-test"\ndelta_max_mib = 0\n'
    assert load_inventory(write_inventory(tmp_path / "b", {"web-1": HOST}, config)).cache.delta_max_mib == 0
    for n, value in enumerate(("-1", "4097", '"64"', "true", "1.5")):
        config = f'[cache]\nbucket = "topdeck-test"\ndelta_max_mib = {value}\n'
        with pytest.raises(InventoryError) as error:
            load_inventory(write_inventory(tmp_path / f"bad{n}", {"web-1": HOST}, config))
        assert "cache.delta_max_mib" in str(error.value) and "\n" not in str(error.value)


def test_the_cli_plan_shows_the_hosts_that_take_the_delta_in_text_and_json() -> None:
    from topdeck.cli.plan import plan_json, render_plan
    from topdeck.core.plan import Plan, group

    takes = host_plan("web-1", TOP2.path, MANIFEST, _state(TOP.path), DELTA)
    other = host_plan("web-2", TOP2.path, MANIFEST, _state(APP.path), DELTA)
    plan = Plan((takes, other), group((takes, other)))
    text = render_plan(plan)
    assert sum("fetched through the delta object: one request of 8.8 KiB" in line for line in text) == 1
    where = [next(i for i, line in enumerate(text) if what(line)) for what in (
        lambda line: line.startswith("web-1:"), lambda line: "delta object" in line,
        lambda line: line.startswith("web-2:"))]
    assert where == sorted(where)  # under web-1's group, not web-2's
    hosts = {h["host"]: h for h in cast(list[dict[str, object]], plan_json(plan)["hosts"])}
    assert (hosts["web-1"]["delta_bytes"], hosts["web-1"]["b2_class_b"]) == (9000, 1)
    assert (hosts["web-2"]["delta_bytes"], hosts["web-2"]["b2_class_b"]) == (0, 4)
    assert plan_json(plan)["b2_class_b"] == 5
