"""The delta object (core/cache/delta.py, core/remote/host.sh `delta_fetch`), end to end on every host kind, 50 ms from
the cache: a push that moves a pointer writes the delta from its previous target, the plan says which hosts take it, and
a host on the previous target fetches it with one request; Nix substitutes from the unpacked folder with signatures
required. A delta that is missing, unreadable or tampered with is refused (a tampered NAR inside it by Nix, with nothing
of it in the store) and the host fetches path by path: the deploy still succeeds."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
import zstandard
from deploytools import MIXED_KINDS, deploy, far_inventory, release, state, three_host_lab, topdeck

from topdeck.core.cache import delta as delta_module
from topdeck.core.cache import pointers
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.nix.narinfo import parse_narinfo
from topdeck.core.nix.signing import load_secret_key
from topdeck.core.nix.store import parse_store_path
from topdeck.lab import factory
from topdeck.lab.lab import BUCKET, _key_of
from topdeck.lab.wan import make_wan

ADDRESS = "127.0.61.11"  # a lab of its own: the session lab holds TOPDECK_TEST_BASE_ADDRESS

HOSTS = ("host-1", "host-2", "host-3")  # native (Nix 2.8), trixie (2.26), sid (2.34)
TOOK_DELTA = "fetching the delta from"
DELTA_FAILED = "the delta did not work"
AHEAD_FAILED = "fetching ahead did not work"
_VERSIONS = itertools.count(1)  # each release upgrades the app to a newer version


@pytest.fixture(scope="module")
def far_lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("delta-lab"), ADDRESS, MIXED_KINDS) as lab:
        lab.set_wan(make_wan({"cache": 50}))
        yield lab


@pytest.fixture
def inventory(far_lab, tmp_path):
    """Every host follows a pointer of its own and runs its first version; the hosts fetch through the cache relay."""
    return far_inventory(far_lab, tmp_path / "hosts", "delta", HOSTS)


def _next_version(root, role: str, host: str) -> str:
    return release(root, role, lambda spec: factory.upgrade(spec, f"{role}-app", f"2.{next(_VERSIONS)}"), via=host)


def _cache(lab, prefix: str, gc: bool = False) -> B2Cache:
    key = _key_of(lab.b2_gc_credentials) if gc else lab.b2_key()
    return B2Cache(BUCKET, prefix, lab.emulator.url, *key)


def _pointer(lab, prefix: str, role: str) -> pointers.Pointer:
    return pointers.read_verified(_cache(lab, prefix), role, [load_secret_key(lab.cache_secret_key).public_key()])


def _host_downloads(lab, prefix: str, since: int) -> list[str]:
    """The paths under the prefix that hosts (curl or Nix, not topdeck) downloaded since download `since`."""
    downloads = lab.emulator_control("GET", "downloads")["downloads"][since:]
    return [d["path"].split(f"/{prefix}/", 1)[1] for d in downloads
            if d["path"].startswith(f"/file/{BUCKET}/{prefix}/")
            and ("curl/" in d["user_agent"] or " Nix/" in d["user_agent"])]


def _downloads(lab) -> int:
    return len(lab.emulator_control("GET", "downloads")["downloads"])


def _logs(result) -> list[str]:
    return [json.loads(line).get("text", "") for line in result.stdout.splitlines() if '"LogLine"' in line]


def test_hosts_on_the_previous_version_fetch_the_delta_with_one_request(far_lab, inventory):
    root, prefix, roles = inventory
    targets = {host: _next_version(root, roles[host], host) for host in HOSTS}
    for host in HOSTS:
        named = _pointer(far_lab, prefix, roles[host]).delta
        assert named is not None and named.target == parse_store_path(targets[host])
        assert named.source == parse_store_path(state(far_lab, host)["current"])
    since = _downloads(far_lab)

    result, plan, outcomes = deploy(root)

    assert {h: o["outcome"] for h, o in outcomes.items()} == dict.fromkeys(HOSTS, "done"), result.stdout[-3000:]
    planned = {h["host"]: h for h in plan["hosts"]}
    for host in HOSTS:
        assert planned[host]["delta_bytes"] > 0 and planned[host]["b2_class_b"] == 1, planned[host]
        assert state(far_lab, host)["current"] == targets[host]
    logs = _logs(result)
    assert sum(TOOK_DELTA in text for text in logs) == len(HOSTS), "\n".join(logs)
    assert not any(DELTA_FAILED in text or AHEAD_FAILED in text for text in logs), "\n".join(logs)
    fetched = _host_downloads(far_lab, prefix, since)
    assert sorted(fetched) == sorted([f"toplevels/{roles[h]}.json" for h in HOSTS] + [
        delta_module.object_name(_pointer(far_lab, prefix, roles[h]).delta.source,  # type: ignore[union-attr]
                                 parse_store_path(targets[h])) for h in HOSTS]), fetched  # 2 class B per host
    for host in HOSTS:
        assert far_lab.host(host).sh("ls /nix/var/nix/topdeck/fetch 2>&1 || true").strip().endswith(
            "No such file or directory"), "the folder was left behind"


def test_a_host_on_another_version_fetches_path_by_path(far_lab, inventory):
    root, prefix, roles = inventory
    host = "host-2"
    _next_version(root, roles[host], host)  # the host stays on version 1: the next delta is from version 2
    target = _next_version(root, roles[host], host)

    result, plan, outcomes = deploy(root, "--on", host)

    assert outcomes[host]["outcome"] == "done", result.stdout[-3000:]
    assert state(far_lab, host)["current"] == target
    planned = next(h for h in plan["hosts"] if h["host"] == host)
    assert planned["delta_bytes"] == 0 and planned["b2_class_b"] > 1, planned
    logs = _logs(result)
    assert any("the pointer's delta is from" in text for text in logs), "\n".join(logs)
    assert not any(TOOK_DELTA in text for text in logs)


@pytest.mark.parametrize("how", ["missing", "unreadable", "tampered"])
def test_a_delta_missing_unreadable_or_tampered_falls_back_to_path_by_path(far_lab, inventory, how):
    root, prefix, roles = inventory
    targets = {host: _next_version(root, roles[host], host) for host in HOSTS}
    names = [_pointer(far_lab, prefix, roles[h]).delta.name for h in HOSTS]  # type: ignore[union-attr]
    if how == "missing":
        deleting = _cache(far_lab, prefix, gc=True)
        for entry in deleting.all_versions():
            if entry.name in names:
                deleting.delete_version(entry)
    elif how == "tampered":
        cache = _cache(far_lab, prefix)
        for name in names:
            data = bytearray(cache.get_bytes(name))
            data[-1024 - 7] ^= 1  # a byte of the last member's data: still a tar, not the signed sha256
            cache.put_bytes(name, bytes(data), content_type="application/x-tar")
    else:
        far_lab.emulator_control("POST", "faults", {"service_unavailable": 1.0, "public_only": True,
                                                    "path_contains": "/deltas/", "retry_after": None})
    try:
        result, _, outcomes = deploy(root)
    finally:
        far_lab.emulator_control("DELETE", "faults")

    assert {h: o["outcome"] for h, o in outcomes.items()} == dict.fromkeys(HOSTS, "done"), result.stdout[-3000:]
    for host in HOSTS:
        assert state(far_lab, host)["current"] == targets[host]
    failed = [text for text in _logs(result) if DELTA_FAILED in text]
    assert len(failed) == len(HOSTS), "\n".join(_logs(result))
    expected = {"missing": "404", "unreadable": "503", "tampered": "its sha256 is not the one its pointer signed"}
    assert all(expected[how] in text for text in failed), failed
    assert not any(AHEAD_FAILED in text for text in _logs(result))


def test_a_tampered_nar_in_a_delta_is_refused_by_nix_and_the_host_fetches_path_by_path(far_lab, inventory):
    """The delta's signed fields vouch for a tampered NAR here (as a signer's bug could): Nix still refuses it, none
    of it reaches the store, and the host fetches the genuine paths one by one."""
    root, prefix, roles = inventory
    key = load_secret_key(far_lab.cache_secret_key)
    cache = _cache(far_lab, prefix)
    targets = {host: _next_version(root, roles[host], host) for host in HOSTS}
    for host in HOSTS:
        pointer = _pointer(far_lab, prefix, roles[host])
        assert pointer.delta is not None
        forged = _tampered(cache.get_bytes(pointer.delta.name), parse_store_path(targets[host]))
        cache.put_bytes(pointer.delta.name, forged, content_type="application/x-tar")
        pointers.publish(cache, roles[host], pointer.path, key,
                         delta=delta_module.describe(pointer.delta.source, pointer.path, forged))

    result, _, outcomes = deploy(root)

    assert {h: o["outcome"] for h, o in outcomes.items()} == dict.fromkeys(HOSTS, "done"), result.stdout[-3000:]
    logs = _logs(result)
    assert sum(DELTA_FAILED in text and "nix-store exit" in text for text in logs) == len(HOSTS), "\n".join(logs)
    assert any("hash mismatch" in text for text in logs), "\n".join(logs)
    for host in HOSTS:
        assert state(far_lab, host)["current"] == targets[host]
        script = far_lab.host(host).sh(f"cat {targets[host]}/bin/switch-to-configuration")
        assert "switch-to-configuratioN" not in script and "switch-to-configuration" in script


def _tampered(data: bytes, toplevel) -> bytes:
    """The delta with the toplevel's NAR changed (its narinfo, and so its signed NarHash, kept)."""
    files = delta_module.unpack(data)
    narinfo = parse_narinfo(files[f"{toplevel.hash_part}.narinfo"].decode())
    nar = zstandard.ZstdDecompressor().decompressobj().decompress(files[narinfo.url])
    changed = nar.replace(b"switch-to-configuration", b"switch-to-configuratioN", 1)
    assert changed != nar and hashlib.sha256(changed).digest() != narinfo.nar_hash
    files[narinfo.url] = zstandard.ZstdCompressor().compress(changed)
    members = [delta_module.Member(name, files[name], parse_narinfo(files[name].decode()).url,
                                   files[parse_narinfo(files[name].decode()).url])
               for name in files if name.endswith(".narinfo")]
    return delta_module.pack(members)


def test_fetch_parallel_0_in_the_inventory_has_nix_fetch_by_itself_and_no_delta(far_lab, inventory):
    root, prefix, roles = inventory
    host = "host-3"
    (root / "topdeck.toml").write_text((root / "topdeck.toml").read_text().replace(
        "[deploy]\n", "[deploy]\nfetch_parallel = 0\n", 1))
    target = _next_version(root, roles[host], host)
    since = _downloads(far_lab)

    result, _, outcomes = deploy(root, "--on", host)

    assert outcomes[host]["outcome"] == "done", result.stdout[-3000:]
    assert state(far_lab, host)["current"] == target
    fetched = _host_downloads(far_lab, prefix, since)
    assert any(name.startswith("nar/") for name in fetched) and not any(n.startswith("deltas/") for n in fetched)
    agents = {d["user_agent"] for d in far_lab.emulator_control("GET", "downloads")["downloads"][since:]
              if "/nar/" in d["path"]}
    assert agents and all(" Nix/" in agent for agent in agents), agents


def test_gc_keeps_the_current_pointers_delta_deletes_the_older_ones_and_hosts_still_take_it(far_lab, inventory):
    root, prefix, roles = inventory
    older = {host: _next_version(root, roles[host], host) for host in HOSTS}
    result, _, outcomes = deploy(root)
    assert all(o["outcome"] == "done" for o in outcomes.values()), result.stdout[-3000:]
    targets = {host: _next_version(root, roles[host], host) for host in HOSTS}  # the hosts stay on `older`
    cache = _cache(far_lab, prefix)
    deltas = {name for name in cache.listing() if name.startswith(delta_module.FOLDER)}
    current = {_pointer(far_lab, prefix, roles[h]).delta.name for h in HOSTS}  # type: ignore[union-attr]
    assert len(deltas) == 2 * len(HOSTS) and current < deltas

    run = topdeck(root, "gc", "--keep", "1", "--min-age", "0", "--yes", "--json")

    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    assert {name for name in cache.listing() if name.startswith(delta_module.FOLDER)} == current
    result, _, outcomes = deploy(root)
    assert {h: o["outcome"] for h, o in outcomes.items()} == dict.fromkeys(HOSTS, "done"), result.stdout[-3000:]
    assert sum(TOOK_DELTA in text for text in _logs(result)) == len(HOSTS)
    assert all(state(far_lab, host)["current"] == targets[host] for host in HOSTS)
    assert all(older[host] != targets[host] for host in HOSTS)
