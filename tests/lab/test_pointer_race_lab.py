"""One serial, one system, with two operators (issue 26, item 5), end to end: two `topdeck push PATH --pointer race`
processes started at the same moment with different systems, twenty times, on the B2 emulator; and hosts of every
kind (native Nix 2.8, trixie 2.26, sid 2.34) refusing a serial they already applied with another path. The
folder-cache half is tests/unit/test_pointer_race.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from deploytools import MIXED_KINDS, deploy, deploy_inventory, release, three_host_lab, topdeck

from topdeck.core.cache import pointers
from topdeck.core.cache.access import open_cache
from topdeck.core.inventory import load_inventory
from topdeck.core.nix.signing import load_secret_key
from topdeck.core.nix.store import parse_store_path
from topdeck.lab.nixenv import lab_env

pytestmark = pytest.mark.lab
HOSTS = tuple(MIXED_KINDS)
ROUNDS = 20


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    with three_host_lab(tmp_path_factory.mktemp("racelab"), "127.0.46.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):  # type: ignore[no-untyped-def]
    return deploy_inventory(lab, tmp_path_factory.mktemp("race") / "hosts", 8)


def published(inventory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {name: version["path"] for name, version in json.loads(topdeck(inventory, "pointers", "--json").stdout)
            .items()}


def push_at_once(inventory, paths: list[str]) -> list[subprocess.CompletedProcess]:  # type: ignore[no-untyped-def]
    started = [subprocess.Popen([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), "push", path,
                                 "--pointer", "race"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=lab_env(), stdin=subprocess.DEVNULL) for path in paths]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in started]


def test_two_pushes_at_the_same_moment_twenty_times_never_give_one_serial_two_systems(lab, inventory):
    """Each round first points `race` at a third system, so both pushes publish (a push whose pointer already names
    its system publishes nothing), then starts both at once."""
    third = published(inventory)["web"]
    systems = sorted({published(inventory)["db"], release(inventory, "web", lambda spec: spec)})
    cache = open_cache(load_inventory(inventory).cache)
    for round_ in range(ROUNDS):
        assert topdeck(inventory, "push", third, "--pointer", "race").returncode == 0
        results = push_at_once(inventory, systems if round_ % 2 else systems[::-1])
        for result in results:
            assert "Traceback" not in result.stderr, result.stderr
            assert result.returncode == 0 or (result.stderr.count("\n") == 1 and "another publish took serial"
                                              in result.stderr), result.stderr
        history = json.loads(topdeck(inventory, "pointers", "race", "--history", "--json").stdout)
        named: dict[int, set[str]] = defaultdict(set)
        for version in history:
            assert not version["problem"], version
            named[version["serial"]].add(version["path"])
        assert all(len(paths) == 1 for paths in named.values()), named
        newest = max(history, key=lambda v: v["serial"])
        assert newest["path"] in systems
    claims = len(cache.versions(pointers.sidecar_name("race")))
    print(f"{ROUNDS} rounds: {len(history)} versions, {claims - len(history)} claims stepped back from a race")
    sidecar = pointers.read_verified(cache, "race", [load_secret_key(lab.cache_secret_key).public_key()])
    assert str(sidecar.path) == newest["path"] and sidecar.serial == newest["serial"]
    recorded = [e["record"] for e in json.loads(topdeck(inventory, "history", "--json").stdout) if e["verified"]]
    publishes = sorted((r["serial"], r["path"]) for r in recorded if r["kind"] == "publish" and r["pointer"] == "race")
    assert publishes == sorted((serial, paths.pop()) for serial, paths in named.items())  # both, in the history


def test_hosts_of_every_kind_refuse_a_serial_they_applied_with_another_path(lab, inventory):
    _, _, outcomes = deploy(inventory)
    assert {host: o["outcome"] for host, o in outcomes.items()} == dict.fromkeys(HOSTS, "done"), outcomes
    before = {host: lab.host(host).current_system() for host in HOSTS}
    cache = open_cache(load_inventory(inventory).cache)
    key = load_secret_key(lab.cache_secret_key)
    now = published(inventory)
    for name, other in (("web", now["db"]), ("db", now["web"])):  # what a race of older topdecks left behind
        serial = pointers.read_verified(cache, name, [key.public_key()]).serial
        twin = pointers.signed(pointers.Pointer(name, parse_store_path(other), serial, int(time.time())), key)
        cache.put_bytes(pointers.sidecar_name(name), pointers.render_sidecar(twin), content_type="application/json")
        cache.put_bytes(pointers.text_name(name), f"{other}\n".encode(), content_type="text/plain",
                        info=pointers.info_of(twin))
    _, _, outcomes = deploy(inventory)
    for host in HOSTS:
        assert outcomes[host]["outcome"] == "failed", outcomes[host]
        assert "two publishes took one serial" in outcomes[host]["reason"], outcomes[host]
        assert lab.host(host).current_system() == before[host]
