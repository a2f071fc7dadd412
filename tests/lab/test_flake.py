"""Flake fleets end to end, on a mixed lab (host-1 native, host-2 Debian 13 with Nix 2.26, host-3 sid with Nix 2.34):
topdeck.toml's `[build] flake = "."` builds each host's nixosConfigurations.<name> in one `nix build` (a wrapper on
PATH counts the Nix commands), `push --on` pushes the union once and publishes each pointer, `deploy` and `apply`
put the flake's toplevel on every host, a pointer conflict uploads nothing, and every Nix version (2.8, 2.26,
2.34) builds the same toplevel and says the flake gotchas in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from conftest import write_lab_inventory
from deploytools import MIXED_KINDS, state, three_host_lab

from topdeck.core import release as release_module
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.manifest import manifest_name
from topdeck.core.cache.presence import narinfo_name
from topdeck.core.errors import Cancelled, NixError
from topdeck.core.events import LogLine, Progress
from topdeck.core.inventory import Build, load_inventory
from topdeck.core.nix import flakes
from topdeck.core.nix.store import parse_store_path
from topdeck.lab import factory, flakefleet, images, opnix
from topdeck.lab.lab import BUCKET
from topdeck.lab.nixenv import lab_env

HOSTS = tuple(MIXED_KINDS)
ROLES = {"host-1": "web", "host-2": "web", "host-3": "db"}
NIX_KINDS = ["native", "trixie", "sid"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("flakelab"), "127.0.31.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory) -> Path:
    """The lab inventory, made a flake fleet: no host has a [build]; topdeck.toml says `[build] flake = "."`."""
    root = write_lab_inventory(lab, tmp_path_factory.mktemp("flake") / "hosts", f"flake-{uuid.uuid4().hex[:8]}")
    specs = {role: factory.spec_from_json((root / f"{role}.json").read_text()) for role in set(ROLES.values())}
    for name, role in ROLES.items():
        (root / name / "default.nix").unlink()
        (root / name / "host.toml").write_text(
            f'address = "{lab.host(name).address}"\npointer = "{role}"\ntags = ["{role}"]\n')
    flakefleet.write_flake(root, ROLES, specs)
    with (root / "topdeck.toml").open("a") as config:
        # no test here waits for a confirmation to time out; 20 s leaves a slow login on 2 shared cores its time
        config.write('\n[build]\nflake = "."\n\n[deploy]\nconfirm_timeout = 20\n')
    return root


@pytest.fixture(scope="module")
def counted(tmp_path_factory) -> Path:
    """A folder with a `nix` and a `nix-build` that log their arguments (one line a call) to nix.log beside them,
    then run the real ones."""
    folder = tmp_path_factory.mktemp("countnix")
    for tool in ("nix", "nix-build"):
        real = shutil.which(tool)
        assert real
        (folder / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {folder}/nix.log\nexec {real} "$@"\n')
        (folder / tool).chmod(0o755)
    return folder


def topdeck(inventory: Path, counted: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (counted / "nix.log").unlink(missing_ok=True)
    env = lab_env()
    env["PATH"] = f"{counted}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)


def nix_calls(counted: Path, command: str) -> int:
    """How many `nix COMMAND` calls the last topdeck run made (the feature flags come before the command)."""
    log = counted / "nix.log"
    lines = log.read_text().splitlines() if log.exists() else []
    features = ("--extra-experimental-features nix-command flakes", "--extra-experimental-features nix-command")
    words = [line.replace(features[0], "").replace(features[1], "").split() for line in lines]
    return sum(1 for tool, *rest in words if tool == "nix" and rest[:1] == [command])


def new_release(inventory: Path, role: str, change=lambda spec: spec) -> None:  # type: ignore[no-untyped-def]
    spec = change(factory.spec_from_json((inventory / "systems" / f"{role}.json").read_text()))
    flakefleet.write_specs(inventory, {role: dataclasses.replace(spec, version=f"24.11.{uuid.uuid4().hex[:6]}")})


def flake_toplevel(inventory: Path, host: str) -> str:
    """The host's toplevel as Nix itself evaluates it, without topdeck."""
    result = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--raw",
         f"{inventory}#nixosConfigurations.{host}.config.system.build.toplevel.outPath"],
        capture_output=True, text=True, env=lab_env(), check=True)
    return result.stdout.strip()


def json_lines(stdout: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def cache(lab, inventory: Path, prefix: str | None = None) -> B2Cache:  # type: ignore[no-untyped-def]
    config = load_inventory(inventory).cache
    return B2Cache(BUCKET, config.prefix if prefix is None else prefix, lab.emulator.url, *lab.b2_key())


# --- inventory ------------------------------------------------------------------------------------------


def test_the_fleet_flake_gives_each_host_its_own_configuration_and_a_host_may_override_it(inventory, tmp_path):
    hosts = load_inventory(inventory).hosts
    assert [(h.build.kind, h.build.flake, h.build.name) for h in hosts if h.build] == [
        ("flake", str(inventory), name) for name in HOSTS]
    copy = tmp_path / "hosts"
    shutil.copytree(inventory, copy)
    with (copy / "host-2" / "host.toml").open("a") as host:
        host.write('\n[build]\nflake = "../#host-1"\n')
    builds = {h.name: h.build for h in load_inventory(copy).hosts}
    assert builds["host-2"] == Build(kind="flake", flake=str(copy), name="host-1",
                                     where=f"{copy}/host-2/host.toml: build.flake")
    assert builds["host-1"] is not None and builds["host-1"].name == "host-1"


# --- build, push, deploy ------------------------------------------------------------------------------------


def test_push_on_builds_every_host_in_one_nix_build_and_pushes_once(lab, inventory, counted):
    new_release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "2.0"))
    new_release(inventory, "db", lambda s: factory.upgrade(s, "db-app", "2.0"))
    expected = {name: flake_toplevel(inventory, name) for name in HOSTS}
    before = lab.emulator_control("GET", "counters")

    result = topdeck(inventory, counted, "push", "--on", "@web,@db", "--json")

    after = lab.emulator_control("GET", "counters")
    assert result.returncode == 0, result.stderr
    assert nix_calls(counted, "build") == 1 and nix_calls(counted, "eval") == 1  # one evaluation, one build
    pushed = json_lines(result.stdout)[-1]
    assert pushed["event"] == "PushResult"
    assert sorted(pushed["toplevels"]) == sorted(set(expected.values()))
    assert {p["name"]: p["path"] for p in pushed["pointers"]} == {"web": expected["host-1"], "db": expected["host-3"]}
    assert expected["host-1"] == expected["host-2"] != expected["host-3"]
    listed = after["calls"].get("b2_list_file_names", 0) - before["calls"].get("b2_list_file_names", 0)
    assert 1 <= listed <= 2  # one listing (the names around nar/, then nar/ itself, as a one-toplevel push does)
    names = cache(lab, inventory).listing()  # the prefix's first push: every name in it is this push's
    manifests = {manifest_name(parse_store_path(toplevel)) for toplevel in expected.values()}
    assert manifests <= set(names) and all(narinfo_name(parse_store_path(t)) in names for t in expected.values())
    times = {kind: [entry.uploaded_ms for name, entry in names.items() if test(name)] for kind, test in (
        ("narinfo", lambda n: n.endswith(".narinfo")), ("manifest", lambda n: n in manifests),
        ("pointer", lambda n: n.startswith("toplevels/")))}
    assert max(times["narinfo"]) <= min(times["manifest"]) and max(times["manifest"]) <= min(times["pointer"])


def test_deploy_puts_the_flakes_toplevel_on_every_kind_of_host(lab, inventory, counted):
    expected = {name: flake_toplevel(inventory, name) for name in HOSTS}
    topdeck(inventory, counted, "push", "--on", "host-*")

    result = topdeck(inventory, counted, "deploy", "--yes", "--json")

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    for name in HOSTS:
        assert state(lab, name)["current"] == expected[name], name


def test_apply_builds_pushes_and_deploys_in_one_command(lab, inventory, counted):
    new_release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "3.0"))
    new_release(inventory, "db", lambda s: factory.add_package(s, factory.Package("db-tools", "1.0", size=50_000)))
    expected = {name: flake_toplevel(inventory, name) for name in HOSTS}
    assert all(state(lab, name)["current"] != expected[name] for name in HOSTS)

    result = topdeck(inventory, counted, "apply", "--yes", "--json")

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert nix_calls(counted, "build") == 1
    events = json_lines(result.stdout)
    kinds = [e["event"] for e in events]
    assert kinds.index("PushResult") < kinds.index("Plan") < kinds.index("DeployResult"), kinds[-5:]
    assert events[-1]["event"] == "DeployResult"
    outcomes = {o["host"]: o for o in events[-1]["outcomes"]}
    for name in HOSTS:
        assert state(lab, name)["current"] == expected[name], name
        assert outcomes[name]["outcome"] == "done" and outcomes[name]["after"] == expected[name]


def test_apply_exits_non_zero_when_a_host_fails(lab, inventory, counted):
    before = state(lab, "host-3")
    new_release(inventory, "db", lambda s: factory.with_activation(s, "fail"))
    new_release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "4.0"))
    web = flake_toplevel(inventory, "host-1")

    result = topdeck(inventory, counted, "apply", "--yes", "--json")

    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    outcomes = {o["host"]: o for o in json_lines(result.stdout)[-1]["outcomes"]}
    assert outcomes["host-3"]["outcome"] != "done"
    assert state(lab, "host-3")["current"] == before["current"]
    assert [state(lab, name)["current"] for name in ("host-1", "host-2")] == [web, web]
    assert "topdeck: error: host-3:" in result.stderr
    new_release(inventory, "db", lambda s: factory.with_activation(s, "ok"))


def test_hosts_of_one_pointer_building_different_toplevels_are_refused_with_nothing_uploaded(lab, inventory,
                                                                                           counted, tmp_path):
    conflict = tmp_path / "hosts"
    shutil.copytree(inventory, conflict)
    specs = {role: factory.spec_from_json((conflict / "systems" / f"{role}.json").read_text())
             for role in ("web", "db")}
    flakefleet.write_flake(conflict, {**ROLES, "host-2": "db"}, specs)  # host-2 follows `web` but builds db's system
    listing = {name: entry.uploaded_ms for name, entry in cache(lab, conflict, "").listing().items()}

    result = topdeck(conflict, counted, "push", "--on", "@web")

    assert result.returncode == 1
    *log, error = result.stderr.splitlines()
    assert all(line.startswith("flake | ") for line in log)  # the build's own log, then one error line
    assert error.startswith("topdeck: error: pointer web: its hosts build different toplevels")
    assert "host-1 builds " in error and "host-2 builds " in error and "nothing was pushed" in error
    assert {name: entry.uploaded_ms for name, entry in cache(lab, conflict, "").listing().items()} == listing


# --- every Nix version ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nix_envs(tmp_path_factory) -> dict[str, dict[str, str]]:
    work = tmp_path_factory.mktemp("flakenix")
    envs = {"native": opnix.native_env()}
    for kind in ("trixie", "sid"):
        envs[kind] = opnix.image_env(images.ensure_image(kind).root, work / kind / "store", work / kind / "nix")
    return envs


def test_every_nix_builds_the_same_toplevels_from_the_flake(inventory, nix_envs):
    builds = [Build(kind="flake", flake=str(inventory), name=name, where=name) for name in HOSTS]
    built = {kind: flakes.build_flakes(builds, log=lambda _: None, env=env) for kind, env in nix_envs.items()}
    assert built["native"] == built["trixie"] == built["sid"]
    assert {str(path) for path in built["native"].values()} == {flake_toplevel(inventory, n) for n in HOSTS}


def _small_flake(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "flake.nix").write_text("{ outputs = { self }: { nixosConfigurations = " + body + "; }; }\n")
    return folder


@pytest.mark.parametrize("kind", NIX_KINDS)
def test_the_flake_gotchas_are_one_clear_line_with_every_nix(nix_envs, tmp_path, kind):
    def error(folder: Path, name: str = "a") -> str:
        with pytest.raises(NixError) as raised:
            flakes.build_flakes([Build(kind="flake", flake=str(folder), name=name, where="W: build.flake")],
                                log=lambda _: None, env=nix_envs[kind])
        assert "\n" not in str(raised.value)
        return str(raised.value)

    toplevel = '{ config.system.build.toplevel = import ./sys.nix; }'
    assert error(_small_flake(tmp_path / "missing", "{ a = 1; b = 2; }"), "c") == (
        f"W: build.flake: flake {tmp_path}/missing has no nixosConfigurations.c (it has: a, b)")
    tracked = _small_flake(tmp_path / "git", "{ a = " + toplevel + "; }")
    (tracked / "sys.nix").write_text("/bin/sh\n")
    subprocess.run(["git", "init", "-q", str(tracked)], check=True)
    subprocess.run(["git", "-C", str(tracked), "add", "flake.nix"], check=True)
    assert error(tracked) == (f"W: build.flake: {tracked}/sys.nix is not tracked by git: a flake in a git "
                              "repository sees only its tracked files (git add sys.nix)")
    below = _small_flake(tmp_path / "repo" / "fleet", "{ a = " + toplevel + "; }")  # a flake below the repository's top
    (below / "sys.nix").write_text("/bin/sh\n")
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "add", "fleet/flake.nix"], check=True)
    assert error(below) == (f"W: build.flake: {below}/sys.nix is not tracked by git: a flake in a git "
                            "repository sees only its tracked files (git add sys.nix)")
    outside = _small_flake(tmp_path / "outside", '{ a = { config.system.build.toplevel = builtins.readFile '
                           f'{tmp_path}/secret; }}; }}')
    (tmp_path / "secret").write_text("x")
    assert error(outside).startswith(f"W: build.flake: flake {outside} reads /tmp")  # 2.26: the first folder refused
    assert "outside the flake, which pure evaluation forbids" in error(outside)
    assert error(tmp_path / "nowhere") == f"W: build.flake: flake {tmp_path}/nowhere: no such folder"


def test_build_builds_every_selected_host_in_one_nix_build(inventory, counted):
    new_release(inventory, "db", lambda s: factory.upgrade(s, "db-app", "5.0"))

    result = topdeck(inventory, counted, "build", "host-*", "--json")

    assert result.returncode == 0, result.stderr
    assert nix_calls(counted, "build") == 1 and nix_calls(counted, "eval") == 1
    assert json.loads(result.stdout) == {name: flake_toplevel(inventory, name) for name in HOSTS}
    assert "flake | building '/nix/store/" in result.stderr  # Nix's live log, from the one shared build


def test_the_tuis_build_and_push_releases_the_hosts_and_can_be_cancelled(lab, inventory):
    from topdeck.tui.backend import Backend

    backend = Backend(load_inventory(inventory))
    new_release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "6.0"))
    before = backend.pointers()["web"].path
    cancel = threading.Event()
    logged: list[LogLine] = []

    def cancel_on_first_log_line(event):  # type: ignore[no-untyped-def]
        if isinstance(event, LogLine):
            logged.append(event)
            cancel.set()

    with pytest.raises(Cancelled):
        backend.release(["host-1", "host-2"], cancel_on_first_log_line, cancel)
    assert logged[0].host == "flake" and backend.pointers()["web"].path == before  # nothing published

    events: list[object] = []  # the build may have finished before the cancel stopped it: then nothing is logged
    result = backend.release(["host-1", "host-2"], events.append, threading.Event())

    expected = flake_toplevel(inventory, "host-1")
    assert result.toplevels == (expected,) and backend.pointers()["web"].path == expected
    assert any(isinstance(e, Progress) and e.phase == "upload" for e in events)
    plan = backend.plan(["host-1", "host-2"], None)
    assert {h.host: str(h.target) for h in plan.plan.hosts} == {"host-1": expected, "host-2": expected}


def test_hosts_built_from_nix_files_share_one_nix_build(lab, counted, tmp_path):
    files = write_lab_inventory(lab, tmp_path / "hosts", f"files-{uuid.uuid4().hex[:8]}")  # a default.nix per host

    result = topdeck(files, counted, "build", "host-*", "--json")

    assert result.returncode == 0, result.stderr
    calls = (counted / "nix.log").read_text().splitlines()
    assert [line.split()[0] for line in calls].count("nix-build") == 1
    built = json.loads(result.stdout)
    assert list(built) == list(HOSTS) and built["host-1"] == built["host-2"] != built["host-3"]
    assert all(Path(path, "bin", "switch-to-configuration").exists() for path in built.values())


def test_the_demo_fleets_flake_variant_builds_offline_the_same_systems_as_the_demo_fleet(tmp_path):
    demo = Path(__file__).resolve().parents[2] / "hosts"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFlakeFleetTestKeyOnlyForThisTest0000 operator@lab"
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "id_ed25519.pub").write_text(key + "\n")
    env = {**lab_env(), "TOPDECK_LAB_DIR": str(tmp_path / "lab")}  # where hosts/fleet.nix reads the key
    from_files = release_module.build_hosts(load_inventory(demo).hosts, env=env)

    fleet = flakefleet.demo_flake_fleet(load_inventory(demo), tmp_path / "flake-fleet", [key])

    flake_hosts = load_inventory(fleet).hosts
    assert {h.name: (h.build.kind, h.build.name) for h in flake_hosts if h.build} == {
        name: ("flake", name) for name in ("db-1", "web-1", "web-2")}
    assert release_module.build_hosts(flake_hosts, env=lab_env()) == from_files


def test_demo_flake_sets_the_lab_up_and_publishes_the_flake_fleets_systems(tmp_path):
    """`topdeck demo --flake --no-tui` on a copy of the demo fleet moved to a lab folder, addresses and port of this
    test's own (the demo's topdeck.toml names the default lab's folder, /var/lib/topdeck-lab)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lab_dir, demo = tmp_path / "lab", tmp_path / "hosts"
    shutil.copytree(Path(__file__).resolve().parents[2] / "hosts", demo)
    config = (demo / "topdeck.toml").read_text().replace("/var/lib/topdeck-lab", str(lab_dir))
    (demo / "topdeck.toml").write_text(config.replace("127.0.0.1:17890", f"127.0.0.1:{port}"))
    for name, address in (("web-1", "127.0.34.21"), ("web-2", "127.0.34.22"), ("db-1", "127.0.34.23")):
        host = demo / name / "host.toml"
        host.write_text(re.sub(r'address = "[^"]*"', f'address = "{address}"', host.read_text()))
    env = {**lab_env(), "TOPDECK_LAB_DIR": str(lab_dir)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "topdeck.cli", *args], capture_output=True, text=True,
                              timeout=300, env=env, stdin=subprocess.DEVNULL)

    try:
        result = run("--inventory", str(demo), "demo", "--flake", "--no-tui")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        fleet = lab_dir / "flake-fleet"
        assert (fleet / "flake.nix").is_file() and f"flake fleet: {fleet}" in result.stdout
        listed = json.loads(run("--inventory", str(fleet), "pointers", "--json").stdout)
        assert listed["web"]["path"] == flake_toplevel(fleet, "web-1") == flake_toplevel(fleet, "web-2")
        assert listed["db"]["path"] == flake_toplevel(fleet, "db-1")
    finally:
        run("lab", "down")
