"""`topdeck gc`: what it keeps, the order it deletes in, and that the cache stays valid at every step.

The first half drives the logic over a directory cache with made-up closures (no Nix, no lab); the second runs
`topdeck gc` against the lab: B2 emulator, hosts of every kind asked what they run, real Nix substituting every kept
closure afterwards, gc killed in the middle, and the bad-input rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploytools import MIXED_KINDS, deploy, deploy_inventory, release, three_host_lab
from labtools import substitute

from topdeck.core.cache import pointers
from topdeck.core.cache.access import open_cache
from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.interface import Cache
from topdeck.core.cache.manifest import Manifest, ManifestPath, manifest_name, parse_manifest, render_manifest
from topdeck.core.cache.presence import nar_file, narinfo_name
from topdeck.core.errors import GcError
from topdeck.core.gc import collect, monthly_cost, plan_gc, pointer_systems
from topdeck.core.inventory import load_inventory
from topdeck.core.nix import nixbase32
from topdeck.core.nix.narinfo import Narinfo, parse_narinfo, render_narinfo
from topdeck.core.nix.signing import generate_keypair
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.lab.nixenv import lab_env

TOPDECK = str(Path(sys.executable).with_name("topdeck"))


# --- a made-up cache ---------------------------------------------------------------------------------


def store_path(name: str) -> StorePath:
    digest = nixbase32.encode(hashlib.sha256(name.encode()).digest())[:32]
    return parse_store_path(f"/nix/store/{digest}-{name}")


KEY, PUBLIC = generate_keypair("gc-test-1")


class FakeFleet:
    """Closures put into a DirCache the way push puts them: NAR, narinfo, then the manifest."""

    def __init__(self, root: Path):
        self.cache = DirCache(root, f"file://{root}")
        self.paths: dict[str, StorePath] = {}

    def path(self, name: str, refs: tuple[str, ...] = (), nar: str | None = None) -> StorePath:
        path = store_path(name)
        content = (nar or name).encode()
        nar_hash = hashlib.sha256(content).digest()
        self.cache.put_bytes(nar_file(nar_hash), content, content_type="application/x-nix-nar")
        info = Narinfo(store_path=path, url=nar_file(nar_hash), nar_hash=nar_hash, nar_size=len(content),
                       compression="zstd", file_hash=nar_hash, file_size=len(content),
                       references=tuple(sorted(self.paths[r] for r in refs)))
        self.cache.put_bytes(narinfo_name(path), render_narinfo(info).encode(), content_type="text/x-nix-narinfo")
        self.paths[name] = path
        return path

    def system(self, name: str, packages: tuple[str, ...], manifest: bool = True) -> StorePath:
        top = self.path(name, packages)
        if manifest:
            closure = _closure(self, name)
            items = tuple(ManifestPath(self.paths[n], 1, 1, tuple(sorted(self.paths[r] for r in _refs(self, n))),
                                       _nar_hash(self, n)) for n in closure)
            self.cache.put_bytes(manifest_name(top), render_manifest(Manifest(top, items)),
                                 content_type="application/json")
        return top

    def pointer(self, name: str, top: StorePath, serial: int) -> None:
        signed = pointers.signed(pointers.Pointer(name, top, serial, 0), KEY)
        self.cache.put_bytes(f"toplevels/{name}.txt", f"{top}\n".encode(), content_type="text/plain",
                             info=pointers.info_of(signed))


def _refs(fleet: FakeFleet, name: str) -> list[str]:
    info = parse_narinfo(fleet.cache.get_bytes(narinfo_name(fleet.paths[name])).decode())
    by_path = {p: n for n, p in fleet.paths.items()}
    return [by_path[r] for r in info.references]


def _nar_hash(fleet: FakeFleet, name: str) -> bytes:
    return parse_narinfo(fleet.cache.get_bytes(narinfo_name(fleet.paths[name])).decode()).nar_hash


def _closure(fleet: FakeFleet, name: str) -> list[str]:
    seen, waiting = [], [name]
    while waiting:
        item = waiting.pop()
        if item not in seen:
            seen.append(item)
            waiting.extend(_refs(fleet, item))
    return seen


def problems(cache: Cache) -> list[str]:
    """Every way the cache would let a reader down: a manifest whose paths lack narinfos, a narinfo whose NAR or
    whose references' narinfos are gone."""
    listing = cache.listing()
    found = []
    for name in listing:
        if name.startswith("manifests/"):
            for item in parse_manifest(cache.get_bytes(name), name).paths:
                if narinfo_name(item.path) not in listing:
                    found.append(f"{name}: {item.path.name} has no narinfo")
        elif name.endswith(".narinfo"):
            info = parse_narinfo(cache.get_bytes(name).decode(), name)
            if info.url not in listing:
                found.append(f"{name}: its NAR {info.url} is gone")
            found += [f"{name}: reference {r.name} has no narinfo" for r in info.references
                      if narinfo_name(r) not in listing]
    return found


@pytest.fixture
def fleet(tmp_path: Path) -> FakeFleet:
    fleet = FakeFleet(tmp_path / "cache")
    fleet.path("glibc-2.40")
    fleet.path("openssl-3.0", ("glibc-2.40",))
    fleet.path("nginx-1.26", ("openssl-3.0",))
    fleet.path("nginx-1.27", ("openssl-3.0",))
    fleet.path("nginx-1.28", ("openssl-3.0",), nar="same bytes")
    fleet.path("nginx-1.28-copy", ("openssl-3.0",), nar="same bytes")  # another path, the same NAR
    for version, nginx in ((1, "nginx-1.26"), (2, "nginx-1.27"), (3, "nginx-1.28")):
        fleet.pointer("web", fleet.system(f"system-web-{version}", (nginx,)), version)
    fleet.system("system-orphan", ("nginx-1.28-copy",), manifest=False)  # an interrupted push: no manifest
    return fleet


def _names(plan) -> set[str]:  # type: ignore[no-untyped-def]
    return {entry.name for entry in plan.deletions}


def test_gc_keeps_the_last_versions_and_deletes_the_rest_manifest_first(fleet: FakeFleet) -> None:
    versions = fleet.cache.all_versions()
    systems = pointer_systems(versions, keep=2, keys=[PUBLIC])
    assert sorted(p.name for p in systems) == ["system-web-2", "system-web-3"]

    plan = plan_gc(fleet.cache, systems, versions, min_age=0)

    p = fleet.paths
    gone = {manifest_name(p["system-web-1"]), narinfo_name(p["system-web-1"]), narinfo_name(p["nginx-1.26"]),
            narinfo_name(p["system-orphan"]), narinfo_name(p["nginx-1.28-copy"])}
    assert _names(plan) - {n for n in _names(plan) if n.startswith("nar/")} == gone
    # NARs: the removed paths' own, but not the one nginx-1.28-copy shares with the kept nginx-1.28
    shared = parse_narinfo(fleet.cache.get_bytes(narinfo_name(p["nginx-1.28"])).decode()).url
    assert shared not in _names(plan)
    assert len([n for n in _names(plan) if n.startswith("nar/")]) == 3
    kinds = ["manifest" if e.name.startswith("manifests/") else "nar" if e.name.startswith("nar/") else "narinfo"
             for e in plan.deletions]
    assert kinds == sorted(kinds, key=["manifest", "narinfo", "nar"].index)
    order = [e.name for e in plan.deletions]
    assert order.index(narinfo_name(p["system-web-1"])) < order.index(narinfo_name(p["nginx-1.26"]))
    assert plan.freed_bytes == sum(e.size for e in plan.deletions) > 0


def test_a_gc_stopped_after_any_deletion_leaves_a_valid_cache(fleet: FakeFleet, tmp_path: Path) -> None:
    import shutil

    versions = fleet.cache.all_versions()
    plan = plan_gc(fleet.cache, pointer_systems(versions, keep=1, keys=[PUBLIC]), versions, min_age=0)
    assert len(plan.deletions) > 6
    for stop_after in range(len(plan.deletions) + 1):
        copy = tmp_path / f"copy-{stop_after}"
        shutil.copytree(fleet.cache.root, copy)
        cache = DirCache(copy, f"file://{copy}")
        for entry in plan.deletions[:stop_after]:
            cache.delete_version(entry)
        assert problems(cache) == [], f"after {stop_after} deletions"
    collect(fleet.cache, plan)
    assert problems(fleet.cache) == []
    kept = parse_manifest(fleet.cache.get_bytes(manifest_name(fleet.paths["system-web-3"])), "m")
    assert all(narinfo_name(item.path) in fleet.cache.listing() for item in kept.paths)


def test_a_push_that_finished_while_gc_ran_stops_it_before_any_narinfo_goes(fleet: FakeFleet) -> None:
    versions = fleet.cache.all_versions()
    plan = plan_gc(fleet.cache, pointer_systems(versions, keep=1, keys=[PUBLIC]), versions, min_age=0)
    # a push, listed before the gc deletes: it saw nginx-1.26 present and named it in its new manifest
    fleet.system("system-web-4", ("nginx-1.26",))

    with pytest.raises(GcError, match=r"a push wrote 1 manifest\(s\) while gc ran .* run it again"):
        collect(fleet.cache, plan)

    listing = fleet.cache.listing()
    assert narinfo_name(fleet.paths["nginx-1.26"]) in listing
    assert all(e.name in listing for e in plan.deletions if not e.name.startswith("manifests/"))  # manifests only
    assert problems(fleet.cache) == []


def test_recent_uploads_and_systems_without_a_manifest_are_followed_and_kept(fleet: FakeFleet) -> None:
    versions = fleet.cache.all_versions()
    p = fleet.paths
    # a host runs the orphan system: its closure has no manifest, so gc follows its narinfos
    systems = {**pointer_systems(versions, keep=1, keys=[PUBLIC]), p["system-orphan"]: ["host-1 current"]}
    plan = plan_gc(fleet.cache, systems, versions, min_age=0)
    assert narinfo_name(p["nginx-1.28-copy"]) not in _names(plan)
    assert narinfo_name(p["system-orphan"]) not in _names(plan)
    assert plan.downloads >= 2  # the orphan's narinfos were read

    # everything just uploaded stays while a push could still be writing its manifest
    kept = pointer_systems(versions, keep=1, keys=[PUBLIC])
    assert plan_gc(fleet.cache, kept, versions, min_age=3600).deletions == ()


def test_a_keep_below_one_is_refused() -> None:
    with pytest.raises(GcError, match="at least the current version"):
        pointer_systems([], keep=0, keys=[PUBLIC])


def test_the_monthly_cost_is_b2s_price_per_gb() -> None:
    assert monthly_cost(1_000_000_000_000) == pytest.approx(6.0)


# --- against the lab -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    with three_host_lab(tmp_path_factory.mktemp("gc-lab"), "127.0.36.1", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):  # type: ignore[no-untyped-def]
    return deploy_inventory(lab, tmp_path_factory.mktemp("gc") / "inventory", confirm_timeout=20)


def topdeck(inventory: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOPDECK, "--inventory", str(inventory), *args], capture_output=True, text=True,
                          timeout=timeout, env=lab_env())


def next_web(inventory: Path) -> str:
    from topdeck.lab import factory

    return release(inventory, "web", lambda s: factory.upgrade(s, "web-app", f"9.{time.time_ns()}"))


def snapshot(cache: Cache) -> dict[str, tuple[int, int]]:
    return {name: (entry.size, entry.uploaded_ms) for name, entry in cache.listing().items()}


def result_of(run: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.lab
def test_gc_on_the_lab_keeps_what_pointers_and_hosts_need_and_nix_substitutes_it(lab, inventory) -> None:
    inv = load_inventory(inventory)
    cache = open_cache(inv.cache)
    web_1 = pointer_target(cache, "web")
    db_1 = pointer_target(cache, "db")
    _, _, outcomes = deploy(inventory)
    assert {o["outcome"] for o in outcomes.values()} == {"done"}, outcomes
    web_2, web_3, web_4 = next_web(inventory), next_web(inventory), next_web(inventory)

    before = snapshot(cache)
    dry = topdeck(inventory, "gc", "--keep", "2", "--min-age", "0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "to delete:" in dry.stdout and "a month" in dry.stdout and "dry run: nothing deleted" in dry.stdout
    assert snapshot(cache) == before

    run = topdeck(inventory, "gc", "--keep", "2", "--min-age", "0", "--yes", "--json")
    assert run.returncode == 0, run.stderr
    result = result_of(run)
    kept = {system["toplevel"]: system["reasons"] for system in result["kept"]}
    assert set(kept) >= {web_1, web_3, web_4, db_1} and web_2 not in kept
    assert any("host-2 generation" in reason for reason in kept[web_1])  # a trixie host was asked
    assert result["deleted"] > 0 and result["freed_bytes"] > 0

    listing = cache.listing()
    assert manifest_name(parse_store_path(web_2)) not in listing
    assert narinfo_name(parse_store_path(web_2)) not in listing
    assert problems(cache) == []
    public_key = inv.cache.public_key_file.read_text().strip()
    for host, path in (("host-3", web_1), ("host-3", web_3), ("host-3", web_4), ("host-1", db_1)):
        status, out, err = substitute(lab, host, path, cache.substituter_url, public_key)
        assert status == 0, (host, path, err[-500:])


@pytest.mark.lab
def test_gc_killed_at_any_moment_leaves_a_valid_cache(lab, inventory) -> None:
    cache = open_cache(load_inventory(inventory).cache)
    generator = random.Random(int(os.environ.get("TOPDECK_GC_SEED", "0")) or None)
    for attempt in range(3):
        next_web(inventory)
        next_web(inventory)
        process = subprocess.Popen([TOPDECK, "--inventory", str(inventory), "gc", "--keep", "1", "--min-age", "0",
                                    "--yes", "--json"], stdout=subprocess.PIPE, text=True, env=lab_env())
        assert process.stdout is not None
        if attempt == 0:  # right after the first deletion
            assert any('"phase": "gc"' in line for line in process.stdout), "gc deleted nothing"
        else:
            time.sleep(generator.uniform(0.5, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert problems(cache) == [], f"attempt {attempt}"
    final = topdeck(inventory, "gc", "--keep", "1", "--min-age", "0", "--yes", "--json")
    assert final.returncode == 0, final.stderr
    assert problems(cache) == []
    web = pointer_target(cache, "web")
    status, _, err = substitute(lab, "host-3", web, cache.substituter_url,
                                load_inventory(inventory).cache.public_key_file.read_text().strip())
    assert status == 0, err[-500:]


def pointer_target(cache: Cache, name: str) -> str:
    return cache.get_bytes(f"toplevels/{name}.txt").decode().strip()


BAD_ROWS = [
    ("no gc key", lambda text, lab: text.replace("gc_credentials_file", "#gc_credentials_file"), ["--keep", "1"],
     ["no B2 key for gc", "gc_credentials_file"]),
    ("the deploy key", lambda text, lab: text.replace(str(lab.b2_gc_credentials), str(lab.b2_credentials)),
     ["--keep", "1"], ["may not delete files"]),
    ("keep 0", lambda text, lab: text, ["--keep", "0"], ["--keep 0", "at least"]),
]


@pytest.mark.lab
@pytest.mark.parametrize("label, change, args, fragments", BAD_ROWS, ids=[row[0] for row in BAD_ROWS])
def test_bad_gc_input_is_one_line_and_deletes_nothing(lab, inventory, label, change, args, fragments) -> None:
    next_web(inventory)  # garbage a gc would delete
    config = inventory / "topdeck.toml"
    original = config.read_text()
    cache = open_cache(load_inventory(inventory).cache)
    before = snapshot(cache)
    config.write_text(change(original, lab))
    try:
        run = topdeck(inventory, "gc", "--min-age", "0", "--yes", *args)
    finally:
        config.write_text(original)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("topdeck: error:"), run.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert snapshot(cache) == before


@pytest.mark.lab
def test_an_unreachable_host_stops_gc_unless_skipped(lab, inventory) -> None:
    next_web(inventory)
    cache = open_cache(load_inventory(inventory).cache)
    before = snapshot(cache)
    lab.stop_host("host-2")
    try:
        run = topdeck(inventory, "gc", "--keep", "1", "--min-age", "0", "--yes")
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("topdeck: error: cannot ask 1 host(s)"), run.stderr
        assert "host-2" in lines[0] and "--skip-unreachable" in lines[0]
        assert snapshot(cache) == before
        skipped = topdeck(inventory, "gc", "--keep", "1", "--min-age", "0", "--yes", "--skip-unreachable")
        assert skipped.returncode == 0, skipped.stderr
        assert "skipped:" in skipped.stderr and "deleted" in skipped.stdout
    finally:
        lab.start_host("host-2")
    assert problems(cache) == []

