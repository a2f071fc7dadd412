"""End-to-end: the host side (core/remote/host.sh, core/remote/probe.sh) gives the same answers on every Nix the lab
has.

One lab of its own mixes the kinds of host: host-1 native (this machine's Nix 2.8, no init), host-2 Debian 13
(Nix 2.26) and host-3 Debian sid (Nix 2.34), both booted with systemd as PID 1. Every test runs on each host (its
id names the host's Nix) and checks topdeck's answers against what that host's own Nix prints or does:
`nix-store -r --dry-run` (whose sizes 2.8 and 2.26 print as "%.2f MiB" and 2.34 in the unit that fits, one
decimal), `nix-env --list-generations`, /run/current-system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from deploytools import MIXED_KINDS, deploy, deploy_inventory, release, three_host_lab, topdeck
from labtools import connect as ssh_connect
from labtools import ssh_run

from topdeck.core.cache import pointers
from topdeck.core.cache.access import open_cache
from topdeck.core.cache.manifest import manifest_name, parse_manifest
from topdeck.core.inventory import load_inventory
from topdeck.core.nix import narinfo, nixbase32
from topdeck.core.nix.signing import generate_keypair, load_secret_key, sign_narinfo, ssh_public_key
from topdeck.core.nix.store import parse_store_path
from topdeck.core.operations import trusted_key
from topdeck.core.plan import parse_probe, probe_script
from topdeck.core.remote.hostverbs import host_command, host_script
from topdeck.core.remote.ssh import connect
from topdeck.lab import factory, images
from topdeck.lab.nixenv import lab_env

BASE_ADDRESS = "127.0.21.11"
CONFIRM_TIMEOUT = 6
ROLES = {"host-1": "web", "host-2": "web", "host-3": "db"}
HOST_SCRIPT = Path(__file__).resolve().parents[2] / "core" / "remote" / "host.sh"

# "these 45 paths will be fetched (3.32 MiB download, 8.24 MiB unpacked):" or "this path will be fetched (...)".
FETCHED = re.compile(r"^(?:these (\d+) paths|this path) will be fetched \((\S+ \S+) download, (\S+ \S+) unpacked\):$",
                     re.M)
SIZE = re.compile(r"^(\d+(?:\.(\d+))?) (B|bytes|[KMGTPEZY]iB)$")
# A setting no Nix knows: each warns of it on reading its configuration (2.8 in plain text, before its JSON logger).
UNKNOWN_SETTING = "topdeck-test-unknown-setting = 1"
NEEDS = re.compile(r"^the fetch needs up to (\d+) KiB on /nix \((.*)\), which has (\d+) KiB free$")


def _nix_versions() -> dict[str, str]:
    try:
        return {listing.info.name: listing.info.nix.split("+")[0] for listing in images.list_images()}
    except Exception:  # noqa: BLE001 (only the test ids need it)
        return {}


_VERSIONS = _nix_versions()
HOSTS = [pytest.param(name, id=f"{name}-{kind}-nix{_VERSIONS.get(kind, '')}") for name, kind in MIXED_KINDS.items()]


# --- the lab and what the tests share ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("versionslab"), BASE_ADDRESS, kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    return deploy_inventory(lab, tmp_path_factory.mktemp("versions") / "hosts", CONFIRM_TIMEOUT)


@pytest.fixture(scope="module")
def cache_access(inventory):
    """What a host is given to fetch from the lab's cache: (cache, substituter URL, trusted key)."""
    inv = load_inventory(inventory)
    cache = open_cache(inv.cache)
    return cache, cache.substituter_url, trusted_key(inv).to_text()


def nix_version(lab, name: str) -> str:
    return lab.host(name).sh("nix-store --version").strip()


def realise_options(url: str, key: str) -> str:
    """The options host.sh's realise() gives nix-store -r."""
    return (f"--option substituters {shlex.quote(url)} --option trusted-public-keys {shlex.quote(key)} "
            "--option require-sigs true --option narinfo-cache-negative-ttl 0 --option narinfo-cache-positive-ttl 0 "
            "--option fallback false --option connect-timeout 15")


def dry_run(lab, name: str, path: str, url: str, key: str) -> dict[str, object]:
    """What the host's own `nix-store -r --dry-run` says it would fetch: paths, and the sizes as it prints them."""
    code, _, err = ssh_run(lab, name, f"nix-store -r {path} --dry-run {realise_options(url, key)}")
    assert code == 0, err
    match = FETCHED.search(err)
    if match is None:
        return {"paths": 0, "download": "", "unpacked": "", "text": err}
    return {"paths": int(match.group(1) or 1), "download": match.group(2), "unpacked": match.group(3), "text": err}


def size_bounds(printed: str) -> tuple[float, float]:
    """The bytes a size as Nix printed it may stand for: its value, and half its last digit (the rounding)."""
    match = SIZE.match(printed)
    assert match, f"Nix printed a size this test cannot read: {printed!r}"
    unit = 1 if match.group(3) in ("B", "bytes") else 1024 ** ("KMGTPEZY".index(match.group(3)[0]) + 1)
    decimals = len(match.group(2) or "")
    return float(match.group(1)) * unit, 0.5 / 10 ** decimals * unit


def assert_printed_as(printed: str, exact: int, what: str) -> None:
    """`exact` bytes are what Nix printed as `printed`, to the precision it printed."""
    value, half = size_bounds(printed)
    assert abs(exact - value) <= half * (1 + 1e-9), f"{what}: {exact} bytes, but the host's Nix printed {printed}"


def run_host_script(inventory, name: str, verb: str, *args: str | int,
                    nix_config: str = "") -> tuple[int, list[list[str]]]:
    """core/remote/host.sh run on the host as topdeck runs it (over SSH, on stdin): its exit status and its lines.
    `nix_config`: a NIX_CONFIG for the host's Nix."""
    inv = load_inventory(inventory)
    host = inv.host(name)
    command = host_command(host, verb, *args)
    if nix_config:
        command = f"NIX_CONFIG={shlex.quote(nix_config)} {command}"
    with connect(host, inv.ssh) as session:
        result = session.run(command, stdin=host_script(), timeout=300)
    return result.exit_status, [line.split("\t") for line in result.stdout.decode().splitlines()]


def ssh_with_input(lab, name: str, command: str, data: bytes) -> tuple[int, str, str]:
    client = ssh_connect(lab, name)
    try:
        stdin, stdout, stderr = client.exec_command(command, timeout=120)
        stdin.write(data)
        stdin.channel.shutdown_write()
        out, err = stdout.read().decode(), stderr.read().decode()
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


def run_agent(lab, name: str, role: str, url: str, key: str, signer: str) -> tuple[int, str, str]:
    """Install the host script on the host as its pull agent, and run it once for the pointer `role`."""
    code, _, err = ssh_with_input(lab, name, "mkdir -p /root/agent && cat > /root/agent/topdeck-host.sh",
                                  host_script())
    assert code == 0, err
    return ssh_run(lab, name, shlex.join(["sh", "/root/agent/topdeck-host.sh", "agent", "--pointer", role,
                                          "--sidecar", f"{url}/toplevels/{role}.json", "--cache", url, "--key", key,
                                          "--signer", signer]))


def host_state(lab, name: str) -> dict[str, object]:
    host = lab.host(name)
    return {"current": host.sh("readlink -f /run/current-system").strip(),
            "profile": host.sh("readlink -f /nix/var/nix/profiles/system").strip(),
            "generation": host.generation(),
            "links": host.sh("cd /nix/var/nix/profiles && ls -d system-*-link | sort").split()}


def plan_json(inventory, *args: str) -> dict[str, dict]:
    result = topdeck(inventory, "plan", "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return {host["host"]: host for host in json.loads(result.stdout)["hosts"]}


def build_and_push(inventory, role: str, change, workdir: Path) -> str:
    """A variant of the role's system, built and pushed without moving any pointer."""
    spec = change(factory.spec_from_json((inventory / f"{role}.json").read_text()))
    toplevel = factory.build(spec, workdir / uuid.uuid4().hex[:8])
    result = topdeck(inventory, "push", toplevel, "--json")
    assert result.returncode == 0, result.stderr
    return toplevel


def manifest_of(cache, toplevel: str):
    return parse_manifest(cache.get_bytes(manifest_name(parse_store_path(toplevel))), toplevel)


# --- a deploy: the plan, the host's own dry run and the fetch agree ---------------------------------


@pytest.fixture(scope="module")
def deployed(lab, inventory, cache_access):
    """New web and db systems, what each host's Nix says it would fetch of them, then `topdeck deploy` of both."""
    _, url, key = cache_access
    targets = {"web": release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "1.1", size=300_000)),
               "db": release(inventory, "db", lambda s: factory.upgrade(s, "db-app", "2.0", size=250_000))}
    before = {name: host_state(lab, name) for name in ROLES}
    nix_says = {name: dry_run(lab, name, targets[role], url, key) for name, role in ROLES.items()}
    result, plan, outcomes = deploy(inventory)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    return {"targets": targets, "before": before, "nix": nix_says,
            "plan": {host["host"]: host for host in plan["hosts"]}, "outcomes": outcomes}


@pytest.mark.parametrize("name", HOSTS)
def test_a_deploy_fetches_what_the_plan_and_the_hosts_nix_said(lab, deployed, name):
    target = deployed["targets"][ROLES[name]]
    planned, nix, outcome = deployed["plan"][name], deployed["nix"][name], deployed["outcomes"][name]
    after = host_state(lab, name)

    assert outcome["outcome"] == "done", outcome["reason"]
    assert after["current"] == after["profile"] == target
    assert after["generation"] == deployed["before"][name]["generation"] + 1
    # The plan's numbers are the host's own dry run's, in the unit and precision that Nix prints.
    assert planned["fetch_paths"] == nix["paths"] > 0, nix["text"]
    assert_printed_as(nix["download"], planned["download_bytes"], f"{name} ({nix_version(lab, name)}) download")
    assert_printed_as(nix["unpacked"], planned["unpacked_bytes"], f"{name} ({nix_version(lab, name)}) unpacked")
    # The live progress, from Nix's internal-json log, ends on exactly what the plan said.
    assert outcome["fetched_paths"] == planned["fetch_paths"]
    assert outcome["fetched_bytes"] == planned["download_bytes"]


@pytest.mark.parametrize("name", HOSTS)
def test_status_and_generations_are_what_the_hosts_nix_says(lab, inventory, deployed, name):
    status = json.loads(topdeck(inventory, "status", "--on", name, "--json").stdout)[0]
    listed = json.loads(topdeck(inventory, "generations", name, "--json").stdout)
    own = lab.host(name).sh("nix-env -p /nix/var/nix/profiles/system --list-generations")
    rows = [re.match(r"^\s*(\d+)\s+(\S+ \S+)\s*(\(current\))?\s*$", line) for line in own.splitlines() if line.strip()]
    assert all(rows), own

    assert status["current"] == lab.host(name).sh("readlink -f /run/current-system").strip()
    assert status["generation"] == host_state(lab, name)["generation"]
    assert status["status"] == ("up-to-date" if status["current"] == status["desired"] else "behind")
    assert [(g["number"], g["date"], g["current"]) for g in listed] == \
        [(int(row.group(1)), row.group(2), bool(row.group(3))) for row in rows]
    for generation in listed:
        link = lab.host(name).sh(f"readlink -f /nix/var/nix/profiles/system-{generation['number']}-link").strip()
        assert generation["path"] == link
        assert generation["version"] == lab.host(name).sh(f"cat {link}/nixos-version").strip()


@pytest.mark.parametrize("name", HOSTS)
def test_closures_are_the_ones_the_cache_and_the_builder_know(lab, inventory, cache_access, deployed, name):
    cache, _, _ = cache_access
    target = deployed["targets"][ROLES[name]]
    installed = deployed["before"][name]["current"]  # the lab's first system: built here, never pushed
    code, lines = run_host_script(inventory, name, "closures", installed)
    assert code == 0, lines
    closures: dict[str, dict[str, int]] = {"0": {}, "1": {}}
    for kind, index, path, size in lines:
        assert kind == "closure"
        closures[index][path] = int(size)

    assert closures["0"] == {str(p.path): p.nar_size for p in manifest_of(cache, target).paths}
    paths = subprocess.run(["nix-store", "-qR", installed], capture_output=True, text=True, check=True,
                           env=lab_env()).stdout.split()
    sizes = subprocess.run(["nix-store", "-q", "--size", *paths], capture_output=True, text=True, check=True,
                           env=lab_env()).stdout.split()
    assert closures["1"] == dict(zip(paths, map(int, sizes), strict=True))


# --- a plan of a small change: sizes below a MiB ---------------------------------------------------


@pytest.fixture(scope="module")
def small_change(inventory, deployed):
    """web and db with one small package upgraded, published after the deploy."""
    return {"web": release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "1.2", size=40_000)),
            "db": release(inventory, "db", lambda s: factory.upgrade(s, "db-app", "2.1", size=40_000))}


@pytest.mark.parametrize("name", HOSTS)
def test_a_small_change_plans_what_the_hosts_nix_would_fetch(lab, inventory, cache_access, small_change, name):
    _, url, key = cache_access
    small = small_change
    planned = plan_json(inventory, "--on", name)[name]
    nix = dry_run(lab, name, small[ROLES[name]], url, key)

    assert planned["target"] == small[ROLES[name]] and planned["status"] == "change"
    assert planned["current"] == lab.host(name).sh("readlink -f /run/current-system").strip()
    assert planned["generation"] == host_state(lab, name)["generation"]
    assert planned["fetch_paths"] == nix["paths"] > 0, nix["text"]
    assert planned["unpacked_bytes"] < 1 << 20  # so Nix 2.34 prints KiB, the others "0.xx MiB"
    assert_printed_as(nix["download"], planned["download_bytes"], f"{name} ({nix_version(lab, name)}) download")
    assert_printed_as(nix["unpacked"], planned["unpacked_bytes"], f"{name} ({nix_version(lab, name)}) unpacked")


@pytest.mark.parametrize("name", HOSTS)
def test_the_probe_finds_missing_what_the_hosts_nix_would_fetch_warnings_or_not(lab, cache_access, small_change, name):
    cache, url, key = cache_access
    target = small_change[ROLES[name]]
    paths = "".join(f"{p.path}\n" for p in manifest_of(cache, target).paths).encode()
    nix = dry_run(lab, name, target, url, key)
    would_fetch = sorted(line.strip() for line in str(nix["text"]).splitlines() if line.startswith("  /nix/store/"))

    answers = {}
    for config in ("", UNKNOWN_SETTING):  # a Nix that warns on stderr answers the same on stdout
        env = f"NIX_CONFIG={shlex.quote(config)} " if config else ""
        code, out, err = ssh_with_input(lab, name, f"{env}sh -c {shlex.quote(probe_script())} topdeck-probe", paths)
        assert code == 0, err
        assert not config or "topdeck-test-unknown-setting" in err
        answers[config] = parse_probe(out, name)

    plain, warned = answers.values()
    assert plain == dataclasses.replace(warned, free_bytes=plain.free_bytes)
    assert sorted(str(path) for path in plain.missing) == would_fetch and len(would_fetch) == nix["paths"]
    assert str(plain.current) == lab.host(name).sh("readlink -f /run/current-system").strip()
    assert plain.generation == host_state(lab, name)["generation"]


# --- the free-space check reads every unit the host's Nix prints -----------------------------------

# Claimed sizes of a path the cache only describes (a signed narinfo, no NAR): what a dry run prints for them goes
# through every unit: 2.34 prints "0.7 KiB", "293.0 KiB", "50.0 MiB", "3.0 GiB", "5.0 TiB"; 2.8 and 2.26 MiB.
CLAIMED = {"700B": 700, "300kB": 300_000, "50MiB": 50 << 20, "3GiB": 3 << 30, "5TiB": 5 << 40}


@pytest.fixture(scope="module")
def claimed_paths(inventory, cache_access):
    """Store paths the cache only describes: {size: path}, each with a narinfo signed by the cache's key that claims
    `size` bytes unpacked (half as many to download), and no NAR. Made on first use."""
    cache, _, _ = cache_access
    secret_key = load_secret_key(load_inventory(inventory).cache.signing_key)
    made: dict[int, str] = {}

    def path_of(size: int) -> str:
        if size not in made:
            name = nixbase32.encode(hashlib.sha256(uuid.uuid4().bytes).digest()[:20])
            digest = hashlib.sha256(name.encode()).digest()
            info = narinfo.Narinfo(store_path=parse_store_path(f"/nix/store/{name}-claimed-{size}"),
                                   url=f"nar/{name}.nar.zst", compression="zstd", nar_hash=digest, nar_size=size,
                                   file_hash=digest, file_size=size // 2)
            cache.put_bytes(f"{name}.narinfo", narinfo.render_narinfo(sign_narinfo(info, secret_key)).encode(),
                            content_type="text/x-nix-narinfo")
            made[size] = str(info.store_path)
        return made[size]

    return path_of


@pytest.mark.parametrize("claimed", list(CLAIMED.values()), ids=list(CLAIMED))
@pytest.mark.parametrize("name", HOSTS)
def test_the_free_space_check_reads_the_size_in_every_unit(lab, inventory, cache_access, claimed_paths, name, claimed):
    """host.sh without --need-kib reads the unpacked size from the host's own dry run, in the unit it printed, and
    refuses a fetch that /nix cannot hold, with nothing changed."""
    _, url, key = cache_access
    path = claimed_paths(claimed)
    nix = dry_run(lab, name, path, url, key)
    before = host_state(lab, name)

    # No --need-kib: the host asks its own Nix (as the pull agent does).
    code, lines = run_host_script(inventory, name, "deploy", f"space-{uuid.uuid4().hex[:6]}", "test", path,
                                  "--cache", url, "--key", key)

    needs = [NEEDS.match(fields[1]) for fields in lines if fields[0] == "log" and NEEDS.match(fields[1])]
    assert len(needs) == 1, lines
    need_kib, source, free_kib = int(needs[0].group(1)), needs[0].group(2), int(needs[0].group(3))
    assert source == f"nix-store --dry-run: {nix['unpacked']} unpacked"
    # Never less than the real size, and no more than the most the printed (rounded) size can stand for.
    value, half = size_bounds(nix["unpacked"])
    assert claimed <= need_kib * 1024 <= value + half + 1024, (nix["unpacked"], need_kib)
    result = lines[-1]
    assert code == 1 and result[:2] == ["result", "failed"] and "nothing was changed" in result[2]
    if claimed > free_kib * 1024:
        assert result[2].startswith(f"/nix has {free_kib // 1024} MiB free; the fetch needs "), result
    else:  # it fits: the fetch is tried, and fails for the NAR the cache does not have
        assert result[2].startswith(f"fetching {path} from {url} failed"), result
    assert claimed != 5 << 40 or claimed > free_kib * 1024  # the largest is refused (no lab disk has 5 TiB free)
    assert host_state(lab, name) == before


# --- Nix's messages come through whole --------------------------------------------------------------


@pytest.mark.parametrize("failure", ["no-nar", "untrusted-key"])
@pytest.mark.parametrize("name", HOSTS)
def test_nix_errors_and_warnings_come_through_as_nix_prints_them(lab, inventory, cache_access, claimed_paths, name,
                                                                  failure):
    """A fetch that fails (the cache has the narinfo but not the NAR; or the host trusts another key than the one
    that signed it): host.sh's log has every error and warning the host's own nix-store prints."""
    _, url, key = cache_access
    path = claimed_paths(CLAIMED["300kB"])
    if failure == "untrusted-key":
        key = generate_keypair("someone-else-1")[1].to_text()
    _, _, plain = ssh_run(lab, name, f"NIX_CONFIG={shlex.quote(UNKNOWN_SETTING)} nix-store -r {path} "
                                     f"{realise_options(url, key)}")
    said = [" ".join(line.split()) for line in plain.splitlines() if line.startswith(("error:", "warning:"))]
    assert any("topdeck-test-unknown-setting" in text for text in said) and any(
        text.startswith("error:") for text in said), plain

    code, lines = run_host_script(inventory, name, "deploy", f"errors-{uuid.uuid4().hex[:6]}", "test", path,
                                  "--cache", url, "--key", key, "--need-kib", 1, nix_config=UNKNOWN_SETTING)

    logged = [" ".join(fields[1].split()) for fields in lines if fields[0] == "log"]
    assert code == 1 and lines[-1][:2] == ["result", "failed"]
    for text in said:
        assert text in logged, (text, logged)
    assert not [text for text in logged if "raw_msg" in text or "\\u00" in text or "@nix" in text]


# --- the host's awk counts large fetches exactly ------------------------------------------------------


def progress_awk() -> str:
    """PROGRESS_AWK as host.sh runs it: its JSON reader (JSON_AWK), then the program that reads the log with it."""
    text = HOST_SCRIPT.read_text()
    reader = re.search(r"^JSON_AWK='(\n.*?)'$", text, re.S | re.M)
    program = re.search(r"^PROGRESS_AWK=\"\$JSON_AWK\"'(\n.*?)'$", text, re.S | re.M)
    assert reader and program
    return reader.group(1) + program.group(1)


@pytest.fixture(scope="module")
def leaf_package(inventory, cache_access, tmp_path_factory):
    """A package that no host has, in the cache, and its closure from the cache's manifest: {path: FileSize}."""
    cache, _, _ = cache_access
    toplevel = build_and_push(inventory, "web", lambda s: factory.add_package(
        s, factory.Package("progress-probe", "1.0", size=150_000)), tmp_path_factory.mktemp("leaf"))
    entries = {str(p.path): p for p in manifest_of(cache, toplevel).paths}
    leaf = next(path for path, entry in entries.items() if entry.path.name.startswith("progress-probe-"))
    closure, todo = {}, [leaf]
    while todo:
        entry = entries[todo.pop()]
        if str(entry.path) not in closure:
            closure[str(entry.path)] = entry.file_size
            todo.extend(str(reference) for reference in entry.references if reference != entry.path)
    return leaf, closure


@pytest.mark.parametrize("name", HOSTS)
def test_fetch_progress_from_the_hosts_own_log_counts_past_4_gib(lab, cache_access, leaf_package, name):
    """A real fetch's internal-json log from the host's Nix, read by the host's awk (Debian 12's mawk prints no
    integer past 2^31 with %d); then the same log with its byte counts scaled up to a 5 GiB download."""
    _, url, key = cache_access
    leaf, closure = leaf_package
    _, invalid, _ = ssh_run(lab, name, f"nix-store --check-validity --print-invalid {' '.join(closure)}")
    missing = invalid.split()
    assert leaf in missing
    code, log, err = ssh_run(lab, name, f"nix-store -r {leaf} {realise_options(url, key)} --log-format internal-json "
                                        "-v 2>&1 >/dev/null")
    assert code == 0, err
    assert lab.host(name).sh(f"nix-store --check-validity {leaf} && echo valid").strip() == "valid"
    paths, download = str(len(missing)), sum(closure[path] for path in missing)
    scale = (5 << 30) // download + 1  # a 5 GiB download
    command = f"awk {shlex.quote(progress_awk())}"

    code, out, err = ssh_with_input(lab, name, command, log.encode())
    assert code == 0, err
    final = [line.split("\t") for line in out.splitlines() if line.startswith("progress\t")][-1]
    assert final == ["progress", paths, paths, str(download), str(download)]
    assert sorted(line[8:] for line in out.splitlines() if line.startswith("current\t")) == sorted(missing)

    code, out, err = ssh_with_input(lab, name, command, scaled_log(log, scale).encode())
    assert code == 0, err
    final = [line.split("\t") for line in out.splitlines() if line.startswith("progress\t")][-1]
    assert final == ["progress", paths, paths, str(download * scale), str(download * scale)]
    assert download * scale > 5 << 30


def scaled_log(log: str, scale: int) -> str:
    """The log with the NAR downloads' byte counts and the expected download size `scale` times larger."""
    nar_ids = set()
    lines = []
    for line in log.splitlines():
        if not line.startswith("@nix "):
            lines.append(line)
            continue
        event = json.loads(line[5:])
        if event["action"] == "start" and event.get("type") == 101 and "/nar/" in event["fields"][0]:
            nar_ids.add(event["id"])
        elif event["action"] == "result" and event.get("type") == 105 and event["id"] in nar_ids:
            event["fields"][:2] = [n * scale for n in event["fields"][:2]]
        elif event["action"] == "result" and event.get("type") == 106 and event["fields"][0] == 101:
            event["fields"][1] *= scale
        lines.append("@nix " + json.dumps(event, separators=(",", ":")))
    return "\n".join(lines) + "\n"


# --- the pull agent: its own free-space check, on each Nix ------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_the_pull_agent_applies_its_pointer(lab, inventory, cache_access, small_change, name):
    """The installed script run as a timer runs it: it checks /nix's room from the narinfos it fetched ahead (no
    plan), fetches what the plan says, switches, and does nothing the second time."""
    _, url, key = cache_access
    role = ROLES[name]
    target = small_change[role]
    planned = plan_json(inventory, "--on", name)[name]
    signer = ssh_public_key(trusted_key(load_inventory(inventory)))
    before = host_state(lab, name)
    code, out, err = run_agent(lab, name, role, url, key, signer)

    assert code == 0, out[-2000:] + err
    after = host_state(lab, name)
    assert after["current"] == after["profile"] == target and after["generation"] == before["generation"] + 1
    needs = [NEEDS.match(line[4:]) for line in out.splitlines() if line.startswith("log\t") and NEEDS.match(line[4:])]
    assert len(needs) == 1, out
    # The fetch ahead counts the folder it fills and what Nix unpacks from it, from the narinfos it fetched.
    assert needs[0].group(2) == "the fetched folder and what Nix unpacks from it"
    assert int(needs[0].group(1)) == (planned["download_bytes"] + planned["unpacked_bytes"]) // 1024 + 1
    progress = [line.split("\t") for line in out.splitlines() if line.startswith("progress\t")][-1]
    assert progress[1:4] == [str(planned["fetch_paths"]), str(planned["fetch_paths"]), str(planned["download_bytes"])]

    code, out, _ = run_agent(lab, name, role, url, key, signer)
    assert code == 0 and "already running" in out
    assert host_state(lab, name) == after


# --- rollback, and the magic rollback of a failed activation ----------------------------------------

@pytest.fixture(scope="module")
def failing_systems(inventory, tmp_path_factory):
    """Per role, a system whose activation fails, pushed without a pointer. Built on first use."""
    built: dict[str, str] = {}

    def system_of(role: str) -> str:
        if role not in built:
            built[role] = build_and_push(inventory, role, lambda s: factory.with_activation(
                factory.upgrade(s, f"{role}-app", f"9.{time.time_ns()}"), "fail"), tmp_path_factory.mktemp("bad"))
        return built[role]

    return system_of


@pytest.mark.parametrize("name", HOSTS)
def test_rollback_and_a_failed_activation_go_back_on_each_nix(lab, inventory, deployed, failing_systems, name):
    """`topdeck rollback` (nix-env --switch-generation) and the rollback of a failed activation (--switch-generation,
    --delete-generations of the new one) leave the host exactly on the previous system and generations."""
    listed = json.loads(topdeck(inventory, "generations", name, "--json").stdout)
    current = next(g for g in listed if g["current"])
    previous = max((g for g in listed if g["number"] < current["number"]), key=lambda g: g["number"])

    back = topdeck(inventory, "rollback", name, "--yes")

    assert back.returncode == 0, back.stdout + back.stderr
    rolled = host_state(lab, name)
    assert rolled["current"] == rolled["profile"] == previous["path"]
    assert rolled["generation"] == previous["number"]

    result, _, outcomes = deploy(inventory, "--on", name, "--target", failing_systems(ROLES[name]))

    assert result.returncode == 1
    assert outcomes[name]["outcome"] == "rolled-back" and "failed" in outcomes[name]["reason"]
    # The same system, profile and generation, and the generation the deploy made is gone again.
    assert host_state(lab, name) == rolled
    assert lab.host(name).sh("tail -n 1 /run/lab/activation.log").strip().endswith(f"{previous['path']}\tok")


# --- the validity window: an expired pointer, refused by the host's own clock on each kind -----------------------


@pytest.fixture
def expired_pointers(inventory, cache_access):
    """web and db republished (their current systems) signed two hours ago, valid for one; published again,
    valid for good, afterwards."""
    cache = cache_access[0]
    key = load_secret_key(load_inventory(inventory).cache.signing_key)
    current = {role: pointers.read_verified(cache, role, [key.public_key()]).path for role in ("web", "db")}
    for role, path in current.items():
        pointers.publish(cache, role, path, key, clock=lambda: time.time() - 7200, valid_for=3600)
    yield current
    for role, path in current.items():
        pointers.publish(cache, role, path, key)


@pytest.mark.parametrize("name", HOSTS)
def test_an_expired_pointer_is_refused_by_the_agent_on_each_kind(lab, inventory, cache_access, expired_pointers, name):
    _, url, key = cache_access
    role = ROLES[name]
    signer = ssh_public_key(trusted_key(load_inventory(inventory)))
    before = host_state(lab, name)
    code, out, err = run_agent(lab, name, role, url, key, signer)
    assert code == 1, out + err
    result = [line.split("\t") for line in out.splitlines() if line.startswith("result\t")]
    assert len(result) == 1 and re.fullmatch(rf"pointer {role}: expired at \S+Z \(signed \S+Z\); publish it again",
                                             result[0][2]), out
    assert host_state(lab, name) == before
