"""The fetch ahead (core/remote/host.sh `fetch_ahead`), end to end on every host kind, 50 ms from the cache (the WAN
lab's cache relay): the host fetches the missing narinfos and NARs itself with curl into a folder, and Nix substitutes
from it with signatures required; a tampered NAR or narinfo is refused by Nix with nothing changed; a failing fetch
falls back to Nix fetching from the cache itself and the deploy still succeeds."""

from __future__ import annotations

import json

import pytest
import zstandard
from deploytools import MIXED_KINDS, deploy, far_inventory, release, state, three_host_lab

from topdeck.core.cache.b2 import B2Cache
from topdeck.core.nix.narinfo import parse_narinfo
from topdeck.core.nix.store import parse_store_path
from topdeck.lab.lab import BUCKET
from topdeck.lab.wan import make_wan

ADDRESS = "127.0.56.11"  # a lab of its own: the session lab holds TOPDECK_TEST_BASE_ADDRESS

HOSTS = ("host-1", "host-2", "host-3")  # native (Nix 2.8), trixie (2.26), sid (2.34)
AHEAD_FAILED = "fetching ahead did not work"


@pytest.fixture(scope="module")
def far_lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("ahead-lab"), ADDRESS, MIXED_KINDS) as lab:
        lab.set_wan(make_wan({"cache": 50}))
        yield lab


@pytest.fixture
def inventory(far_lab, tmp_path):
    """Each host on a pointer of its own, path by path (pushes write no delta objects: those are test_delta_lab.py)."""
    root, prefix, _ = far_inventory(far_lab, tmp_path / "hosts", "ahead", HOSTS, "delta_max_mib = 0\n")
    return root, prefix


def _nar_fetchers(lab, prefix: str, since: int) -> set[str]:
    """The User-Agents of the NAR downloads of the prefix since download number `since`."""
    downloads = lab.emulator_control("GET", "downloads")["downloads"][since:]
    return {d["user_agent"] for d in downloads if d["path"].startswith(f"/file/{BUCKET}/{prefix}/nar/")}


def _downloads(lab) -> int:
    return len(lab.emulator_control("GET", "downloads")["downloads"])


def _next_version(inventory, host: str) -> str:
    from topdeck.lab import factory

    role = _role(inventory, host)
    return release(inventory, role, lambda spec: factory.upgrade(spec, f"{role}-app", "2.0"), via=host)


def _role(inventory, host: str) -> str:
    return next(line.split('"')[1] for line in (inventory / host / "host.toml").read_text().splitlines()
                if line.startswith("pointer = "))


def test_a_deploy_fetches_ahead_and_nix_substitutes_from_the_folder(far_lab, inventory):
    root, prefix = inventory
    since = _downloads(far_lab)
    targets = {host: _next_version(root, host) for host in HOSTS}

    result, _, outcomes = deploy(root)

    assert {h: o["outcome"] for h, o in outcomes.items()} == dict.fromkeys(HOSTS, "done"), result.stdout[-3000:]
    assert AHEAD_FAILED not in result.stdout
    assert "the fetched folder and what Nix unpacks from it" in result.stdout  # the free-space check counted it
    for host in HOSTS:
        assert state(far_lab, host)["current"] == targets[host]
        assert outcomes[host]["fetched_bytes"] > 0
    agents = _nar_fetchers(far_lab, prefix, since)
    assert agents and all(" Nix/" not in agent for agent in agents), agents  # every NAR came through curl
    for host in HOSTS:
        assert far_lab.host(host).sh("ls /nix/var/nix/topdeck/fetch 2>&1 || true").strip().endswith(
            "No such file or directory"), "the folder was left behind"


@pytest.mark.parametrize("what", ["nar", "narinfo"])
def test_a_tampered_path_is_refused_by_nix_with_nothing_changed(far_lab, inventory, what):
    root, prefix = inventory
    cache = B2Cache(BUCKET, prefix, far_lab.emulator.url, *far_lab.b2_key())
    before = {host: state(far_lab, host) for host in HOSTS}
    targets = {host: _next_version(root, host) for host in HOSTS}
    for target in targets.values():
        _tamper(cache, target, what)

    result, _, outcomes = deploy(root)

    assert {h: o["outcome"] for h, o in outcomes.items()} == dict.fromkeys(HOSTS, "failed"), result.stdout[-3000:]
    for host in HOSTS:
        assert state(far_lab, host) == before[host]
        assert "nothing was changed" in outcomes[host]["reason"]
        valid = far_lab.host(host).sh(f"nix-store --check-validity {targets[host]} 2>/dev/null && echo valid || true")
        assert valid.strip() == ""
    logs = [json.loads(line).get("text", "") for line in result.stdout.splitlines() if '"LogLine"' in line]
    if what == "nar":
        assert any("hash mismatch" in text for text in logs), "\n".join(logs)
    else:  # refused in the folder first, then from the cache itself
        assert any("file:///nix/var/nix/topdeck/fetch" in text and "trusted-public-keys" in text for text in logs), \
            "\n".join(logs)


def _tamper(cache: B2Cache, target: str, what: str) -> None:
    """Rewrite the toplevel's NAR (other bytes, its narinfo untouched) or its narinfo (another NarHash, the
    signature kept)."""
    name = f"{parse_store_path(target).hash_part}.narinfo"
    text = cache.get_bytes(name).decode()
    if what == "narinfo":
        hash_line = next(line for line in text.splitlines() if line.startswith("NarHash: "))
        forged = hash_line[:-4] + ("aaaa" if not hash_line.endswith("aaaa") else "bbbb")
        cache.put_bytes(name, text.replace(hash_line, forged).encode(), content_type="text/x-nix-narinfo")
        return
    url = parse_narinfo(text).url
    nar = zstandard.ZstdDecompressor().decompressobj().decompress(cache.get_bytes(url))
    tampered = nar.replace(b"switch-to-configuration", b"switch-to-configuratioN", 1)
    assert tampered != nar
    cache.put_bytes(url, zstandard.ZstdCompressor().compress(tampered), content_type="application/x-nix-nar")


@pytest.mark.parametrize("host", HOSTS)
def test_a_failing_fetch_falls_back_to_nix_and_the_deploy_succeeds(far_lab, inventory, host):
    root, prefix = inventory
    target = _next_version(root, host)
    since = _downloads(far_lab)
    far_lab.emulator_control("POST", "faults", {"service_unavailable": 1.0, "public_only": True,
                                                "path_contains": "/nar/", "max_faults": 1, "retry_after": None})
    try:
        result, _, outcomes = deploy(root, "--on", host)
    finally:
        far_lab.emulator_control("DELETE", "faults")

    assert outcomes[host]["outcome"] == "done", result.stdout[-3000:]
    assert state(far_lab, host)["current"] == target
    logs = [json.loads(line) for line in result.stdout.splitlines() if AHEAD_FAILED in line]
    assert logs and "503" in json.dumps(logs), result.stdout[-3000:]
    agents = _nar_fetchers(far_lab, prefix, since)
    assert any(" Nix/" in agent for agent in agents), agents  # Nix fetched the NARs itself

