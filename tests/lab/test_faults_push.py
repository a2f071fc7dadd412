"""Push under faults, against the lab: the real b2sdk over HTTP to the B2 emulator, real Nix, real lab hosts.

- 20% of B2 requests fail (503, timeouts, dropped connections, all three mixed): the push completes through
  retries, and a lab host substitutes the closure with signatures required.
- `topdeck push` SIGKILLed at 20 random moments: after every kill the bucket is consistent as a reader sees it,
  and a re-run uploads exactly what was missing.
- A B2 daily cap (403) during a push: one line naming the cap, exit 1, no pointer change, nothing half-published.

Run with `-s` to see the figures (the README's fault-tolerance table comes from them).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zstandard
from labtools import public_file, substitute

from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.manifest import manifest_name, parse_manifest
from topdeck.core.cache.presence import nar_name, narinfo_name
from topdeck.core.cache.push import push
from topdeck.core.nix import localnix
from topdeck.core.nix.narinfo import Narinfo, hash_to_nix32, parse_narinfo, render_narinfo
from topdeck.core.nix.signing import load_secret_key, sign_narinfo
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.statedir import b2_account_file
from topdeck.lab import factory
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.nixenv import lab_env

TOPDECK = str(Path(sys.executable).with_name("topdeck"))
SEED = 20240601


# --- helpers --------------------------------------------------------------------------------------


def cache(lab: Lab, prefix: str) -> B2Cache:
    return B2Cache(BUCKET, prefix, lab.emulator.url, *lab.b2_key())


def system(lab: Lab, workdir: Path, tag: str, count: int = 40, size: int = 3 * factory.MiB) -> StorePath:
    """A toplevel none of the lab hosts has: `tag` and `size` make every path's hash new."""
    spec = factory.SystemSpec(host=tag, version=factory.DEFAULT_VERSION,
                              packages=factory.base_packages(count, seed=len(tag), total_size=size),
                              authorized_keys=(lab.client_public_key(),))
    return parse_store_path(factory.build(spec, workdir))


def write_inventory(lab: Lab, root: Path, prefix: str) -> Path:
    root.mkdir(parents=True)
    (root / "topdeck.toml").write_text(
        f'[cache]\nbucket = "{BUCKET}"\nprefix = "{prefix}"\nrealm = "{lab.emulator.url}"\n'
        f'credentials_file = "{lab.b2_credentials}"\nsigning_key = "{lab.cache_secret_key}"\n'
        f'public_key_file = "{lab.cache_public_key}"\n'
        f'[ssh]\nknown_hosts = "{lab.known_hosts}"\nidentity = "{lab.client_key}"\nconnect_timeout = 5\n'
    )
    (root / "host-1").mkdir()
    (root / "host-1" / "host.toml").write_text(f'address = "{lab.host("host-1").address}"\npointer = "web"\n')
    return root


def requests(counters: dict) -> int:
    """Every request the emulator saw: the answered ones and the faulted ones."""
    return sum(counters["calls"].values()) + counters["faults"]


def consistent(lab: Lab, prefix: str, pointer: str = "web") -> dict:
    """The cache as a reader sees it must hold no narinfo without its NAR (of the right size) or without the
    narinfos of its references, and no pointer (.txt or sidecar) to a toplevel whose closure is incomplete.
    Returns what it found."""
    listing = cache(lab, prefix).listing()
    narinfos = {name for name in listing if name.endswith(".narinfo")}
    for name in narinfos:
        narinfo = parse_narinfo(public_file(lab, prefix, name).decode(), name)
        assert narinfo.url in listing, f"{name} names a NAR that is not stored"
        assert listing[narinfo.url].size == narinfo.file_size, f"{name}: stored NAR has the wrong size"
        for ref in narinfo.references:
            assert narinfo_name(ref) in listing, f"{name} refers to {ref} whose narinfo is missing"
    named = []
    text = public_file(lab, prefix, f"toplevels/{pointer}.txt")
    if text is not None:
        named.append(parse_store_path(text.decode().strip()))
    sidecar = public_file(lab, prefix, f"toplevels/{pointer}.json")
    if sidecar is not None:
        named.append(parse_store_path(json.loads(sidecar)["path"]))
    for toplevel in named:
        assert manifest_name(toplevel) in listing, f"pointer names {toplevel}, whose manifest is missing"
        for path in parse_manifest(public_file(lab, prefix, manifest_name(toplevel)), "manifest").paths:
            assert narinfo_name(path.path) in listing, f"pointer names {toplevel}, but {path.path} is missing"
    return {"listing": listing, "narinfos": len(narinfos), "txt": text is not None, "sidecar": sidecar is not None}


@pytest.fixture(autouse=True)
def no_faults_left(lab):
    yield
    lab.emulator_control("DELETE", "faults")


# --- 20% of requests fail -------------------------------------------------------------------------

FAULTS = {
    "503": {"service_unavailable": 0.2},
    "timeout": {"timeout": 0.2, "timeout_seconds": 0.5},
    "drop": {"drop": 0.2},
    "mixed": {"service_unavailable": 0.07, "timeout": 0.06, "drop": 0.07, "timeout_seconds": 0.5},
}
SURVIVED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def clean_requests(lab, tmp_path_factory) -> int:
    """How many requests a fault-free push of a 40-package closure costs (the baseline for retries)."""
    toplevel = system(lab, tmp_path_factory.mktemp("clean"), "faults-clean")
    before = lab.emulator_control("GET", "counters")
    push(toplevel, cache(lab, f"clean-{uuid.uuid4().hex[:8]}"), load_secret_key(lab.cache_secret_key),
         pointer="web")
    return requests(lab.emulator_control("GET", "counters")) - requests(before)


@pytest.mark.parametrize("kind", list(FAULTS))
def test_push_with_a_fifth_of_requests_failing_completes_and_the_cache_is_valid(lab, tmp_path, kind,
                                                                                  clean_requests):
    toplevel = system(lab, tmp_path, f"faults-{kind}", size=3 * factory.MiB + 1024 * len(kind))
    prefix = f"faults-{kind}-{uuid.uuid4().hex[:8]}"
    before = lab.emulator_control("GET", "counters")
    lab.emulator_control("POST", "faults", {**FAULTS[kind], "seed": SEED})

    started = time.monotonic()
    result = push(toplevel, cache(lab, prefix), load_secret_key(lab.cache_secret_key), pointer="web")
    seconds = time.monotonic() - started

    lab.emulator_control("DELETE", "faults")
    after = lab.emulator_control("GET", "counters")
    failed = after["faults"] - before["faults"]
    extra = requests(after) - requests(before) - clean_requests
    closure = localnix.closure([toplevel])
    assert failed >= 10, f"only {failed} faults were injected: the test proves nothing"
    assert extra >= failed, "every failed request must have been sent again"
    assert result.paths_uploaded == result.paths_total == len(closure)
    assert result.pointer_changed and result.pointer_serial == 1
    found = consistent(lab, prefix)
    assert found["narinfos"] == len(closure) and found["txt"] and found["sidecar"]

    code, _, err = substitute(lab, "host-1", str(toplevel), cache(lab, prefix).substituter_url,
                              lab.cache_public_key.read_text().strip())
    assert code == 0, err
    # every path of the closure is now valid on the host, with its NAR hash checked again
    verified = lab.host("host-1").run(["nix-store", "--verify-path", *[str(info.path) for info in closure]],
                                      check=False)
    assert verified.returncode == 0, verified.stderr
    SURVIVED[kind] = {"failed": failed, "extra_requests": extra, "clean": clean_requests,
                      "seconds": round(seconds, 1), "paths": len(closure)}
    by_kind = {k: n - before["faults_by_kind"].get(k, 0) for k, n in after["faults_by_kind"].items()
               if n - before["faults_by_kind"].get(k, 0)}
    print(f"\n{kind}: {failed} requests failed {by_kind}, "
          f"{extra} extra requests (retries and fresh upload URLs) over a clean push's {clean_requests}; "
          f"result: complete, {len(closure)} paths, substituted with signatures required, {seconds:.1f} s")


def failing(error: BaseException, times: int, calls: list[int]):  # type: ignore[no-untyped-def]
    """An operation that raises `error` the first `times` calls, then succeeds; each call is noted in `calls`."""
    def operation() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"
    return operation


def test_retrying_tries_transient_failures_again_and_everything_else_once():
    """The unit under the fault tests: 503s, timeouts and dropped connections are tried again (with a growing
    pause), then reported in one line; a cap, a refused key or a missing file is reported at the first failure."""
    from b2sdk.v2.exception import B2ConnectionError, ServiceError, TransactionCapExceeded, Unauthorized

    from topdeck.core.cache.b2 import retrying
    from topdeck.core.errors import CacheError, TransientCacheError

    for transient in (ServiceError("503 service_unavailable"), B2ConnectionError("Connection refused"),
                      ConnectionResetError("Connection reset by peer")):
        calls: list[int] = []
        pauses: list[float] = []
        assert retrying("uploading x", failing(transient, 2, calls), sleep=pauses.append) == "done"
        assert len(calls) == 3 and pauses == [0.5, 1.0]
        with pytest.raises(TransientCacheError, match=r"^uploading x: B2 did not answer \(") as caught:
            retrying("uploading x", failing(transient, 99, []), attempts=3, sleep=lambda _: None)
        assert "\n" not in str(caught.value)
    for final in (TransactionCapExceeded(), Unauthorized("bad key", "unauthorized"), CacheError("x: not there")):
        calls = []
        with pytest.raises(CacheError) as caught:
            retrying("listing the cache", failing(final, 99, calls), sleep=lambda _: None)
        assert len(calls) == 1 and not isinstance(caught.value, TransientCacheError)


# --- SIGKILL at random moments --------------------------------------------------------------------

KILLS = 20


def uploads_so_far(lab: Lab) -> int:
    return lab.emulator_control("GET", "counters")["calls"].get("b2_upload_file", 0)


def test_push_killed_at_twenty_random_moments_leaves_a_consistent_cache_and_reruns_upload_only_the_rest(
        lab, tmp_path):
    """Each moment is a random point of the push's progress (after the k-th of its uploads, k drawn from 0 to all
    of them, plus a random few milliseconds), so the kills fall all along it, from before the listing to between
    the pointer's sidecar and its .txt, whatever the machine's load."""
    toplevel = system(lab, tmp_path, "killed", count=60, size=6 * factory.MiB)
    closure = localnix.closure([toplevel])
    rng = random.Random(SEED)

    # One uninterrupted run counts the uploads a whole push makes.
    inventory = write_inventory(lab, tmp_path / "whole", f"whole-{uuid.uuid4().hex[:8]}")
    before = uploads_so_far(lab)
    whole = subprocess.run([TOPDECK, "--inventory", str(inventory), "push", str(toplevel), "--pointer", "web",
                            "--jobs", "2"], capture_output=True, text=True, env=lab_env(), timeout=120)
    assert whole.returncode == 0, whole.stderr
    total_uploads = uploads_so_far(lab) - before
    nars = len({nar_name(info) for info in closure})  # paths with the same contents share one NAR
    assert total_uploads == nars + len(closure) + 5  # NARs, narinfos, nix-cache-info, manifest, sidecar, .txt, record

    moments = []
    for round_ in range(KILLS):
        prefix = f"kill-{round_}-{uuid.uuid4().hex[:8]}"
        inventory = write_inventory(lab, tmp_path / f"round-{round_}", prefix)
        after_uploads = rng.randint(0, total_uploads - 1)
        jitter = rng.uniform(0, 0.03)
        before = uploads_so_far(lab)
        started = time.monotonic()
        process = subprocess.Popen([TOPDECK, "--inventory", str(inventory), "push", str(toplevel), "--pointer",
                                    "web", "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=lab_env())
        while process.poll() is None and uploads_so_far(lab) - before < after_uploads:
            time.sleep(0.005)
        time.sleep(jitter)
        finished_first = process.poll() is not None
        process.kill()
        process.wait()
        delay = time.monotonic() - started
        time.sleep(0.2)  # let the emulator finish storing a body it had wholly received

        found = consistent(lab, prefix)
        listing = found["listing"]
        missing_nars = [i for i in closure if f"nar/{_nar32(i)}.nar.zst" not in listing]
        missing_narinfos = [i for i in closure if narinfo_name(i.path) not in listing]
        expected_uploads = (len({_nar32(i) for i in missing_nars}) + len(missing_narinfos)
                            + ("nix-cache-info" not in listing)
                            + (manifest_name(toplevel) not in listing)
                            + 3 * (not found["txt"]))  # the sidecar, the .txt and the run record
        before = uploads_so_far(lab)

        rerun = subprocess.run([TOPDECK, "--inventory", str(inventory), "push", str(toplevel), "--pointer", "web",
                                "--json"], capture_output=True, text=True, env=lab_env(), timeout=120)

        assert rerun.returncode == 0, f"round {round_} (killed after {delay:.2f} s): {rerun.stderr}"
        result = json.loads(rerun.stdout.splitlines()[-1])
        uploads = uploads_so_far(lab) - before
        assert result["paths_uploaded"] == len(missing_nars), f"round {round_}: re-uploaded NARs already stored"
        assert uploads == expected_uploads, f"round {round_}: {uploads} uploads, {expected_uploads} were missing"
        assert result["pointer_serial"] == 1
        assert consistent(lab, prefix)["narinfos"] == len(closure)
        moments.append({"after": after_uploads, "delay": round(delay, 2), "finished_first": finished_first,
                        "nars": len(closure) - len(missing_nars), "narinfos": found["narinfos"],
                        "sidecar": found["sidecar"], "txt": found["txt"], "reuploads": uploads})

    partial = [m for m in moments if 0 < m["nars"] and not m["txt"]]
    print(f"\n{KILLS} SIGKILLs during a {total_uploads}-upload push of {len(closure)} paths, {KILLS} clean re-runs "
          f"that uploaded only what was missing ({sum(m['reuploads'] for m in moments)} uploads in all); "
          f"{len(partial)} kills left a partial push; at each kill NARs/narinfos stored: "
          + ", ".join(f"{m['nars']}/{m['narinfos']}{'+sidecar' if m['sidecar'] else ''}{'+txt' if m['txt'] else ''}"
                      f" ({m['delay']}s)" for m in moments))
    assert len(partial) >= KILLS // 3, f"too few kills fell inside the push: {moments}"
    assert sum(m["finished_first"] for m in moments) <= KILLS // 4, f"too many pushes ended before the kill: {moments}"


def _nar32(info: localnix.PathInfo) -> str:
    return hash_to_nix32(info.nar_hash)


# --- a B2 daily cap during a push -----------------------------------------------------------------


def _foreign_narinfo(lab: Lab, prefix: str, path: StorePath) -> None:
    """Store `path` the way another tool (nix copy, an older pusher) would: its NAR under another name."""
    info = next(i for i in localnix.closure([path]) if i.path == path)
    with localnix.nar_stream(path) as nar:
        data = zstandard.ZstdCompressor(level=3).compress(nar.read())
    b2 = cache(lab, prefix)
    url = f"nar/foreign-{info.path.hash_part}.nar.zst"
    b2.put_bytes(url, data, content_type="application/x-nix-nar")
    narinfo = Narinfo(store_path=path, url=url, compression="zstd", file_hash=hashlib.sha256(data).digest(),
                      file_size=len(data), nar_hash=info.nar_hash, nar_size=info.nar_size,
                      references=info.references)
    signed = sign_narinfo(narinfo, load_secret_key(lab.cache_secret_key))
    b2.put_bytes(narinfo_name(path), render_narinfo(signed).encode(), content_type="text/x-nix-narinfo")


CAPS = {
    # real B2 answers every class C call (authorize included) with this 403 once the cap is reached; the run
    # authorizes when it holds no authorization from an earlier run (removed here) or its token expired
    "class C cap at authorize": ({"transaction_cap": True}, "authorizing with B2: the B2 daily transaction cap"),
    "class C cap at the listing": ({"transaction_cap": True, "calls": ["b2_list_file_names"]},
                                   "listing the cache: the B2 daily transaction cap"),
    # the push's first class B is reading the manifests that say what the cache holds, before any upload (the
    # re-run then needs a narinfo another tool wrote, for the manifest: a class B download)
    "download cap at the presence check": ({"download_cap": True}, "the B2 daily download cap is exceeded"),
}


@pytest.mark.parametrize("case", list(CAPS))
def test_a_daily_cap_stops_the_push_in_one_line_without_touching_the_pointer(lab, tmp_path, case):
    faults, expected = CAPS[case]
    prefix = f"cap-{uuid.uuid4().hex[:8]}"
    inventory = write_inventory(lab, tmp_path / "hosts", prefix)
    first = system(lab, tmp_path, "cap-first", count=12, size=1 * factory.MiB)
    second = system(lab, tmp_path, f"cap-{len(case)}", count=30, size=2 * factory.MiB)
    run = [TOPDECK, "--inventory", str(inventory), "push"]
    assert subprocess.run([*run, str(first), "--pointer", "web"], capture_output=True, env=lab_env()).returncode == 0
    if "download" in case:
        leaf = next(i.path for i in localnix.closure([second]) if not i.references)
        _foreign_narinfo(lab, prefix, leaf)
    versions = [(e.size, e.uploaded_ms) for e in cache(lab, prefix).versions("toplevels/web.txt")]
    sidecars = cache(lab, prefix).versions("toplevels/web.json")
    if "authorize" in case:
        b2_account_file(lab.emulator.url, *lab.b2_key()).unlink()
    before = lab.emulator_control("GET", "counters")
    lab.emulator_control("POST", "faults", faults)

    failed = subprocess.run([*run, str(second), "--pointer", "web"], capture_output=True, text=True,
                            env=lab_env(), timeout=120)

    lab.emulator_control("DELETE", "faults")
    capped = lab.emulator_control("GET", "counters")["faults"] - before["faults"]
    assert capped == 1, "a cap is not a transient error: nothing should try again"
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert expected in failed.stderr and failed.stderr.startswith("topdeck: error: ")
    assert lab.b2_key()[1] not in failed.stderr + failed.stdout
    b2 = cache(lab, prefix)
    assert [(e.size, e.uploaded_ms) for e in b2.versions("toplevels/web.txt")] == versions
    assert len(b2.versions("toplevels/web.json")) == len(sidecars)
    assert public_file(lab, prefix, "toplevels/web.txt") == f"{first}\n".encode()
    found = consistent(lab, prefix)
    assert manifest_name(second) not in found["listing"]
    if "download" in case:  # stopped before any upload: nothing of `second` but the other tool's narinfo is up
        old = {i.path for i in localnix.closure([first])} | {leaf}
        assert not [i for i in localnix.closure([second]) if i.path not in old
                    and narinfo_name(i.path) in found["listing"]]
    # once the cap is lifted a re-run finishes the job
    again = subprocess.run([*run, str(second), "--pointer", "web"], capture_output=True, text=True, env=lab_env())
    assert again.returncode == 0, again.stderr
    assert "pointer web: published (serial 2)" in again.stdout
