"""End-to-end tests of push and pointers: real Nix, the B2 emulator over HTTP with b2sdk, real lab hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from labtools import public_file, ssh_run, substitute

from topdeck.core.cache import pointers
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.manifest import manifest_name, parse_manifest
from topdeck.core.cache.push import PushSettings, push
from topdeck.core.errors import CacheError, Cancelled, NixError, PointerError, StorePathError
from topdeck.core.nix import localnix
from topdeck.core.nix.narinfo import parse_narinfo
from topdeck.core.nix.signing import load_public_key, load_secret_key
from topdeck.core.nix.store import parse_store_path
from topdeck.lab import factory
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.nixenv import lab_env


def open_cache(lab: Lab, prefix: str) -> B2Cache:
    return B2Cache(BUCKET, prefix, lab.emulator.url, *lab.b2_key())


@pytest.fixture
def prefix() -> str:
    return f"push-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def systems(lab, tmp_path_factory):
    """A base system and a variant with one package upgraded, built once for the module."""
    workdir = tmp_path_factory.mktemp("systems")
    base = factory.initial_system(authorized_keys=[lab.client_public_key()], host="pushed", count=30)
    upgraded = factory.upgrade(base, "zlib", "1.3.2")
    return {"base": factory.build(base, workdir), "upgraded": factory.build(upgraded, workdir)}


def key(lab: Lab):
    return load_secret_key(lab.cache_secret_key)


def test_pushed_closure_is_substituted_with_signatures_required(lab, systems, prefix):
    toplevel = parse_store_path(systems["base"])
    cache = open_cache(lab, prefix)
    events = []

    result = push(toplevel, cache, key(lab), pointer="web", emit=events.append)

    closure = localnix.closure([toplevel])
    assert result.paths_uploaded == result.paths_total == len(closure)
    assert result.pointer_changed and result.pointer_serial == 1
    assert any(getattr(e, "phase", "") == "upload" and e.paths_done == e.paths_total for e in events)
    names = {info.path.name for info in closure}
    current = {e.current for e in events if getattr(e, "current", "")}
    assert current and current <= names
    for info in closure:
        narinfo = parse_narinfo(public_file(lab, prefix, f"{info.path.hash_part}.narinfo").decode())
        assert (narinfo.nar_hash, narinfo.nar_size) == (info.nar_hash, info.nar_size)
        assert set(narinfo.references) == set(info.references)
        assert narinfo.compression == "zstd"
        nar = public_file(lab, prefix, narinfo.url)
        assert nar is not None and len(nar) == narinfo.file_size
    assert public_file(lab, prefix, "toplevels/web.txt") == f"{toplevel}\n".encode()

    lab_key = lab.cache_public_key.read_text().strip()
    code, _, err = substitute(lab, "host-2", str(toplevel), cache.substituter_url, lab_key)
    assert code == 0, err
    assert ssh_run(lab, "host-2", f"nix-store --verify-path {toplevel}")[0] == 0

    other = factory_key(lab)
    code, _, _ = substitute(lab, "host-1", str(toplevel), cache.substituter_url, other)
    assert code != 0
    assert ssh_run(lab, "host-1", f"test -e {toplevel}")[0] != 0


def factory_key(lab: Lab) -> str:
    sec, pub = lab.root / "other-key.sec", lab.root / "other-key.pub"
    if not pub.exists():
        subprocess.run(["nix-store", "--generate-binary-cache-key", "other-1", str(sec), str(pub)], check=True,
                       env=lab_env())
    return pub.read_text().strip()


def test_second_push_uploads_nothing_and_costs_one_class_b_and_one_class_c_after_authorizing(lab, systems, prefix):
    """The manifest answers for the closure (one download), one listing of the pointers; this cache object keeps
    no authorization between runs, so it authorizes (one more C): tests/lab/test_push_cost.py covers the reuse."""
    toplevel = parse_store_path(systems["base"])
    push(toplevel, open_cache(lab, prefix), key(lab), pointer="web")
    before = lab.emulator_control("GET", "counters")

    result = push(toplevel, open_cache(lab, prefix), key(lab), pointer="web")

    after = lab.emulator_control("GET", "counters")
    assert result.paths_uploaded == 0 and result.paths_skipped == result.paths_total
    assert not result.pointer_changed and result.pointer_serial == 1
    assert after["C"] - before["C"] == 2
    assert after["B"] - before["B"] == 1
    assert after["A"] - before["A"] == 0
    assert (result.transactions.a, result.transactions.b, result.transactions.c) == (0, 1, 2)


def test_changed_package_uploads_only_the_new_paths(lab, systems, prefix):
    base, upgraded = parse_store_path(systems["base"]), parse_store_path(systems["upgraded"])
    push(base, open_cache(lab, prefix), key(lab))
    old = {info.path for info in localnix.closure([base])}
    new = localnix.closure([upgraded])

    result = push(upgraded, open_cache(lab, prefix), key(lab))

    changed = [info for info in new if info.path not in old]
    assert 2 <= len(changed) < len(new)
    assert result.paths_uploaded == len(changed)
    assert result.nar_bytes_uploaded == sum(info.nar_size for info in changed)
    manifest = parse_manifest(public_file(lab, prefix, manifest_name(upgraded)), "manifest")
    assert {p.path for p in manifest.paths} == {info.path for info in new}


def listing_invariants(lab: Lab, prefix: str) -> tuple[int, bool]:
    """Check the cache as a reader sees it: every narinfo has its NAR and its references' narinfos; the pointer,
    if any, names a toplevel whose whole closure is there. Returns (narinfos, pointer present)."""
    listing = open_cache(lab, prefix).listing()
    narinfos = {name for name in listing if name.endswith(".narinfo")}
    for name in narinfos:
        narinfo = parse_narinfo(public_file(lab, prefix, name).decode(), name)
        assert narinfo.url in listing, f"{name} names a NAR that is not stored"
        assert listing[narinfo.url].size == narinfo.file_size
        for ref in narinfo.references:
            assert f"{ref.hash_part}.narinfo" in listing, f"{name} refers to {ref} whose narinfo is missing"
    pointer = public_file(lab, prefix, "toplevels/web.txt")
    if pointer is not None:
        toplevel = parse_store_path(pointer.decode().strip())
        assert manifest_name(toplevel) in listing
        for path in parse_manifest(public_file(lab, prefix, manifest_name(toplevel)), "manifest").paths:
            assert f"{path.path.hash_part}.narinfo" in listing
    return len(narinfos), pointer is not None


PUSH_SCRIPT = """
import sys
from pathlib import Path
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.push import PushSettings, push
from topdeck.core.nix.signing import load_secret_key
from topdeck.core.nix.store import parse_store_path
url, prefix, key_id, secret_key, toplevel = sys.argv[1:]
cache = B2Cache("topdeck-lab", prefix, url, key_id, sys.stdin.readline().strip())
push(parse_store_path(toplevel), cache, load_secret_key(Path(secret_key)), pointer="web",
     settings=PushSettings(jobs=2))
"""


def test_push_killed_midway_leaves_a_consistent_cache_and_a_rerun_completes_it(lab, prefix, tmp_path):
    spec = factory.initial_system(authorized_keys=[lab.client_public_key()], host="killed", count=120,
                                  total_size=60 * factory.MiB)
    toplevel = parse_store_path(factory.build(spec, tmp_path))
    closure = localnix.closure([toplevel])
    key_id, b2_key = lab.b2_key()
    process = subprocess.Popen([sys.executable, "-c", PUSH_SCRIPT, lab.emulator.url, prefix, key_id,
                                str(lab.cache_secret_key), str(toplevel)], stdin=subprocess.PIPE, text=True)
    process.stdin.write(b2_key + "\n")
    process.stdin.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the push ended before it could be killed"
        names = open_cache(lab, prefix).listing()
        if sum(name.endswith(".narinfo") for name in names) >= len(closure) // 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    narinfos_at_kill, pointer_at_kill = listing_invariants(lab, prefix)
    assert 0 < narinfos_at_kill < len(closure) and not pointer_at_kill

    result = push(toplevel, open_cache(lab, prefix), key(lab), pointer="web")

    assert result.paths_skipped >= narinfos_at_kill
    assert result.paths_uploaded <= len(closure) - narinfos_at_kill
    assert listing_invariants(lab, prefix) == (len(closure), True)
    code, _, err = substitute(lab, "host-3", str(toplevel), open_cache(lab, prefix).substituter_url,
                              lab.cache_public_key.read_text().strip())
    assert code == 0, err


def test_cancel_stops_cleanly_and_what_finished_stays_valid(lab, prefix, tmp_path):
    spec = factory.initial_system(authorized_keys=[lab.client_public_key()], host="cancelled", count=60,
                                  total_size=30 * factory.MiB)
    toplevel = parse_store_path(factory.build(spec, tmp_path))
    cancel = threading.Event()
    seen = []

    def emit(event):
        seen.append(event)
        if getattr(event, "paths_done", 0) >= 5 and event.phase == "upload":
            cancel.set()

    with pytest.raises(Cancelled, match="a re-run uploads only the rest"):
        push(toplevel, open_cache(lab, prefix), key(lab), pointer="web", emit=emit, cancel=cancel,
             settings=PushSettings(jobs=2))
    narinfos, pointer = listing_invariants(lab, prefix)
    assert narinfos >= 5 and not pointer


def test_pointer_history_rollback_and_signed_sidecar(lab, systems, prefix, tmp_path):
    base, upgraded = parse_store_path(systems["base"]), parse_store_path(systems["upgraded"])
    cache = open_cache(lab, prefix)
    for toplevel in (base, upgraded, base):
        push(toplevel, cache, key(lab), pointer="web")
    trusted = [key(lab).public_key()]
    versions = pointers.history(cache, "web", trusted)
    assert [(v.serial, v.path) for v in versions] == [(3, str(base)), (2, str(upgraded)), (1, str(base))]

    target = pointers.rollback_target(versions, None)
    assert target == upgraded
    pointers.publish(cache, "web", target, key(lab))

    versions = pointers.history(cache, "web", trusted)
    assert [(v.serial, v.path) for v in versions][0] == (4, str(upgraded))
    assert len(versions) == 4
    sidecar = pointers.parse_sidecar(public_file(lab, prefix, "toplevels/web.json"), "web.json")
    trusted = [load_public_key(lab.cache_public_key)]
    assert pointers.verify_pointer(sidecar, trusted, newer_than=3).serial == 4
    with pytest.raises(PointerError, match="not newer than 4"):
        pointers.verify_pointer(sidecar, trusted, newer_than=4)
    forged = pointers.Pointer("web", base, sidecar.serial, sidecar.time, sidecar.sig)
    with pytest.raises(PointerError, match="does not verify"):
        pointers.verify_pointer(forged, trusted)
    assert public_file(lab, prefix, "toplevels/web.txt") == f"{upgraded}\n".encode()


def test_bad_input_uploads_nothing(lab, systems, prefix):
    toplevel = parse_store_path(systems["base"])
    with pytest.raises(CacheError, match="B2 refused the application key"):
        B2Cache(BUCKET, prefix, lab.emulator.url, lab.b2_key()[0], "wrong-key")
    with pytest.raises(CacheError, match="restricted to bucket 'topdeck-lab', not 'no-such-bucket'"):
        B2Cache("no-such-bucket", prefix, lab.emulator.url, *lab.b2_key())
    with pytest.raises(PointerError, match="no '/', no '..'"):
        push(toplevel, open_cache(lab, prefix), key(lab), pointer="../etc")
    missing = parse_store_path("/nix/store/" + "a" * 32 + "-not-built-1.0")
    with pytest.raises(NixError, match="not in the local store"):
        push(missing, open_cache(lab, prefix), key(lab))
    with pytest.raises(StorePathError):
        parse_store_path("/nix/store/abc; rm -rf /")
    assert open_cache(lab, prefix).listing() == {}


def test_no_content_encoding_on_nars(lab, systems, prefix):
    toplevel = parse_store_path(systems["base"])
    push(toplevel, open_cache(lab, prefix), key(lab))
    info = localnix.closure([toplevel])[0]
    narinfo = parse_narinfo(public_file(lab, prefix, f"{info.path.hash_part}.narinfo").decode())
    with urllib.request.urlopen(f"{lab.emulator.url}/file/{BUCKET}/{prefix}/{narinfo.url}") as answer:
        assert answer.headers.get("Content-Encoding") is None
        assert os.path.basename(narinfo.url).endswith(".nar.zst")


def test_pointer_txt_is_served_without_caching(lab, systems, prefix):
    push(parse_store_path(systems["base"]), open_cache(lab, prefix), key(lab), pointer="web")
    with urllib.request.urlopen(f"{lab.emulator.url}/file/{BUCKET}/{prefix}/toplevels/web.txt") as answer:
        assert "no-cache" in answer.headers["Cache-Control"]


def test_local_directory_cache_serves_nix_too(lab, systems, tmp_path):
    from topdeck.core.cache.folder import DirCache

    toplevel = parse_store_path(systems["base"])
    cache = DirCache(tmp_path / "dircache", f"file://{tmp_path / 'dircache'}")
    result = push(toplevel, cache, key(lab), pointer="web")
    assert result.paths_uploaded == result.paths_total
    store = tmp_path / "client"
    subprocess.run(["nix-store", "--store", str(store), "-r", str(toplevel), "--option", "substituters",
                    cache.substituter_url, "--option", "trusted-public-keys", lab.cache_public_key.read_text().strip(),
                    "--option", "require-sigs", "true"], check=True, capture_output=True, env=lab_env())
    assert (store / Path(str(toplevel)).relative_to("/")).exists()
    assert [v.serial for v in pointers.history(cache, "web", [key(lab).public_key()])] == [1]


def test_large_nar_is_streamed_not_held_in_memory(lab, prefix, tmp_path):
    """A stand-in for bench/push_memory.py: a 96 MiB NAR goes through the streaming (large-file) path."""
    import json

    spec = factory.SystemSpec(host="big", version=factory.DEFAULT_VERSION,
                              packages=(factory.Package("bigdata", "1.0", size=96 * factory.MiB),),
                              authorized_keys=())
    toplevel = factory.build(spec, tmp_path)
    key_id, b2_key = lab.b2_key()
    probe = Path(__file__).resolve().parents[2] / "bench" / "memory_probe.py"
    parts_before = lab.emulator_control("GET", "counters")["calls"].get("b2_upload_part", 0)
    run = subprocess.run([sys.executable, str(probe), lab.emulator.url, BUCKET, prefix, key_id,
                          str(lab.cache_secret_key), toplevel], input=b2_key + "\n", capture_output=True, text=True,
                         check=True)
    figures = json.loads(run.stdout)
    assert figures["nar_bytes"] > 96 * factory.MiB
    assert figures["peak_rss"] - figures["rss_before_push"] < 80 * factory.MiB
    parts = lab.emulator_control("GET", "counters")["calls"].get("b2_upload_part", 0) - parts_before
    assert parts >= 2, "a NAR this big goes up as a multi-part large file"
