"""What a push costs in B2 transactions, read from the emulator's own counters (server side), against bucket size.

The B2 emulator (lab/b2emu.py, the unmodified b2sdk over HTTP) runs in this process on 127.0.37.1; closures are
built with real Nix (lab/factory.py); buckets are filled with unrelated narinfo and NAR names straight into the
emulator's store. No lab hosts are needed.
"""

from __future__ import annotations

import hashlib
import io
import random
import secrets
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from topdeck.core.cache.access import open_cache
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.manifest import manifest_name, parse_manifest
from topdeck.core.cache.push import PushSettings, push, push_all
from topdeck.core.errors import CacheError
from topdeck.core.inventory import CacheConfig
from topdeck.core.nix import localnix
from topdeck.core.nix.nixbase32 import ALPHABET
from topdeck.core.nix.signing import SecretKey, load_secret_key
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.lab import factory
from topdeck.lab.b2emu import B2Emulator
from topdeck.lab.nixenv import lab_env

ADDRESS = "127.0.37.1"
BUCKET = "cost-bucket"
KEY_ID = "cost-key"
SMALL, BIG = 1_000, 20_000
TOPDECK = str(Path(sys.executable).with_name("topdeck"))


@pytest.fixture(scope="module")
def emulator() -> Iterator[B2Emulator]:
    with B2Emulator("cost-admin", secrets.token_hex(16), host=ADDRESS).start() as running:
        running.create_bucket(BUCKET)
        running.add_bucket_key(KEY_ID, KEY, BUCKET)
        yield running


KEY = secrets.token_hex(16)


@pytest.fixture(scope="module")
def signing_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("key")
    subprocess.run(["nix-store", "--generate-binary-cache-key", "cost-1", str(folder / "sec"),
                    str(folder / "sec.pub")], check=True, env=lab_env())
    (folder / "sec").chmod(0o600)
    return folder / "sec"


@pytest.fixture(scope="module")
def signing_key(signing_file) -> SecretKey:
    return load_secret_key(signing_file)


@pytest.fixture(scope="module")
def systems(tmp_path_factory) -> dict[int, StorePath]:
    """The base system (0) and, for k in 1, 5, 20, one with k of its leaf packages upgraded."""
    workdir = tmp_path_factory.mktemp("systems")
    base = factory.initial_system(authorized_keys=["ssh-ed25519 AAAA cost"], host="cost", count=70,
                                  total_size=2 * factory.MiB)
    needed = {dep for package in base.packages for dep in package.deps}
    leaves = [package.pname for package in base.packages if package.pname not in needed]
    assert len(leaves) >= 20
    built = {0: parse_store_path(factory.build(base, workdir))}
    for k in (1, 5, 20):
        spec = base
        for pname in leaves[:k]:
            spec = factory.upgrade(spec, pname, spec.package(pname).version + ".1")
        built[k] = parse_store_path(factory.build(spec, workdir))
    return built


def fill(emulator: B2Emulator, prefix: str, count: int, seed: int = 0) -> None:
    """`count` unrelated names under `prefix`, half narinfos and half NARs, as another closure's would be."""
    bucket = emulator.calls.sim.bucket_by_name(BUCKET)
    token = emulator.calls.sim.admin_token
    rng = random.Random(seed)
    for i in range(count):
        digits = "".join(rng.choice(ALPHABET) for _ in range(32 if i % 2 else 52))
        name = f"{prefix}/{digits}.narinfo" if i % 2 else f"{prefix}/nar/{digits}.nar.zst"
        data = b"x" * 16
        bucket.upload_file("fill", token, name, len(data), "application/octet-stream",
                           hashlib.sha1(data).hexdigest(), {}, io.BytesIO(data))


def account(tmp_path: Path) -> Path:
    return tmp_path / "b2-account.sqlite"


def cache(emulator: B2Emulator, prefix: str, account_info: Path | None) -> B2Cache:
    return B2Cache(BUCKET, prefix, emulator.url, KEY_ID, KEY, account_info=account_info)


def costs(emulator: B2Emulator, before: dict) -> tuple[int, int, int]:
    after = emulator.counters()
    return after["A"] - before["A"], after["B"] - before["B"], after["C"] - before["C"]


def calls(emulator: B2Emulator, before: dict, name: str) -> int:
    return emulator.counters()["calls"].get(name, 0) - before["calls"].get(name, 0)


def seeded(emulator: B2Emulator, systems, signing_key, tmp_path: Path, size: int, tag: str) -> tuple[str, Path]:
    """A prefix holding `size` unrelated names and the base system under pointer `web`; the account-info file
    of the run that pushed it."""
    prefix = f"{tag}-{size}-{secrets.token_hex(4)}"
    fill(emulator, prefix, size, seed=size)
    info = tmp_path / f"{prefix}.sqlite"
    push(systems[0], cache(emulator, prefix, info), signing_key, pointer="web")
    return prefix, info


# --- the goals ------------------------------------------------------------------------------------


def test_a_noop_push_costs_one_class_c_and_one_class_b_at_1000_and_at_20000_names(emulator, systems, signing_key,
                                                                                 tmp_path):
    measured, listed = {}, {}
    for size in (SMALL, BIG):
        prefix, info = seeded(emulator, systems, signing_key, tmp_path, size, "noop")
        before = emulator.counters()
        result = push(systems[0], cache(emulator, prefix, info), signing_key, pointer="web")
        measured[size] = costs(emulator, before)
        assert result.paths_uploaded == 0 and not result.pointer_changed
        assert (result.transactions.a, result.transactions.b, result.transactions.c) == measured[size]
        # the same push told to verify lists the whole cache: the counters do see the bucket's size
        before = emulator.counters()
        push(systems[0], cache(emulator, prefix, info), signing_key, pointer="web",
             settings=PushSettings(verify=True))
        listed[size] = costs(emulator, before)[2]
    print(f"\nno-op push (A, B, C): {measured}; with verify, class C: {listed}")
    assert measured[SMALL] == measured[BIG] == (0, 1, 1)
    assert listed[BIG] >= BIG // 2000 > listed[SMALL]  # the listing skips the NARs, half the names


@pytest.mark.parametrize("k", [1, 5, 20])
def test_a_push_of_k_changed_paths_costs_the_same_at_any_size_and_grows_with_k(emulator, systems, signing_key,
                                                                             tmp_path, k):
    changed = {info.path for info in localnix.closure([systems[k]])} - \
        {info.path for info in localnix.closure([systems[0]])}
    measured = {}
    for size in (SMALL, BIG):
        prefix, info = seeded(emulator, systems, signing_key, tmp_path, size, f"change{k}")
        before = emulator.counters()
        result = push(systems[k], cache(emulator, prefix, info), signing_key, pointer="web")
        measured[size] = costs(emulator, before)
        assert result.paths_uploaded == len(changed) and result.pointer_changed
        manifest = parse_manifest(cache(emulator, prefix, info).get_bytes(manifest_name(systems[k])), "manifest")
        assert {p.path for p in manifest.paths} == {i.path for i in localnix.closure([systems[k]])}
    _, b, c = measured[BIG]
    print(f"\n{k} packages changed, {len(changed)} paths: (A, B, C) {measured}")
    assert measured[SMALL][1:] == measured[BIG][1:]  # class A (free) varies with b2sdk's upload-URL reuse
    # the two manifests (the emulator bills no 404), each changed path's narinfo and NAR by name, the pointers;
    # class C: the listing of toplevels/, the pointer's versions (its next serial is 1 + its highest verified one),
    # and its sidecar's versions read back after the claim (no other publish took that serial: docs/DEPLOY.md)
    assert 2 * len(changed) <= b <= 2 + 2 * len(changed) and c == 3
    COSTS[k] = (len(changed), b + 10 * c)
    if len(COSTS) == 3:
        paths = [COSTS[n][0] for n in sorted(COSTS)]
        prices = [COSTS[n][1] for n in sorted(COSTS)]
        assert paths == sorted(paths) and prices == sorted(prices) and prices[0] < prices[-1]


COSTS: dict[int, tuple[int, int]] = {}


# --- the authorization, kept between runs ---------------------------------------------------------


def test_the_authorization_is_kept_0600_per_key_and_a_second_run_does_not_authorize(emulator, systems, signing_key,
                                                                                    tmp_path):
    config = CacheConfig(kind="b2", bucket=BUCKET, prefix=f"auth-{secrets.token_hex(4)}", realm=emulator.url)
    environ = {"XDG_STATE_HOME": str(tmp_path / "state"), "B2_APPLICATION_KEY_ID": KEY_ID,
               "B2_APPLICATION_KEY": KEY}
    before = emulator.counters()
    push(systems[0], open_cache(config, environ), signing_key, pointer="web")
    assert calls(emulator, before, "b2_authorize_account") == 1
    files = list((tmp_path / "state" / "topdeck" / "b2").iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    assert KEY not in files[0].name and KEY_ID not in files[0].name

    before = emulator.counters()
    result = push(systems[0], open_cache(config, environ), signing_key, pointer="web")
    assert calls(emulator, before, "b2_authorize_account") == 0
    assert costs(emulator, before) == (0, 1, 1) and result.paths_uploaded == 0

    # another key (here: the emulator's, under another id) never shares the entry
    emulator.add_bucket_key("cost-key-2", KEY + "2", BUCKET)
    before = emulator.counters()
    open_cache(config, {**environ, "B2_APPLICATION_KEY_ID": "cost-key-2", "B2_APPLICATION_KEY": KEY + "2"})
    assert calls(emulator, before, "b2_authorize_account") == 1
    assert len(list(files[0].parent.iterdir())) == 2


def test_a_stale_token_is_replaced_by_one_new_authorization(emulator, systems, signing_key, tmp_path):
    prefix, info = seeded(emulator, systems, signing_key, tmp_path, 10, "stale")
    with sqlite3.connect(info) as database:  # what B2 says to an expired token: 401, expired_auth_token
        database.execute("UPDATE account SET account_auth_token = 'expired-token'")
    before = emulator.counters()
    result = push(systems[1], cache(emulator, prefix, info), signing_key, pointer="web")
    assert calls(emulator, before, "b2_authorize_account") == 1
    assert result.pointer_changed and result.paths_uploaded > 0
    before = emulator.counters()
    push(systems[1], cache(emulator, prefix, info), signing_key, pointer="web")
    assert calls(emulator, before, "b2_authorize_account") == 0


# --- what a manifest may and may not answer for ---------------------------------------------------


def test_a_pointer_whose_target_has_no_manifest_is_checked_path_by_path(emulator, systems, signing_key, tmp_path):
    """An older push left no manifest: every path is looked up by name, and only the changed ones are sent."""
    prefix, info = seeded(emulator, systems, signing_key, tmp_path, SMALL, "nomanifest")
    admin = emulator.calls.sim.bucket_by_name(BUCKET)
    name = f"{prefix}/{manifest_name(systems[0])}"
    admin.delete_file_version(emulator.calls.sim.admin_token, _file_id(admin, name), name)
    changed = {i.path for i in localnix.closure([systems[5]])} - {i.path for i in localnix.closure([systems[0]])}
    result = push(systems[5], cache(emulator, prefix, info), signing_key, pointer="web")
    assert result.paths_uploaded == len(changed)
    closure = localnix.closure([systems[5]])
    listing = cache(emulator, prefix, info).listing()
    assert all(f"{i.path.hash_part}.narinfo" in listing for i in closure)


def _file_id(bucket, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(file.file_id for file in bucket.file_id_to_file.values() if file.name == name)


def test_a_narinfo_deleted_under_a_manifest_is_trusted_away_and_verify_puts_it_back(emulator, systems, signing_key,
                                                                                     tmp_path):
    """A cache broken by something other than topdeck (a narinfo deleted by hand, its manifest left): a push takes
    the manifest's word and does not see the hole; `PushSettings(verify=True)` lists the cache, finds it and fills it
    (the NAR is there: only the narinfo goes up again)."""
    prefix, info = seeded(emulator, systems, signing_key, tmp_path, SMALL, "broken")
    closure = localnix.closure([systems[0]])
    victim = next(i for i in closure if not i.references)
    admin = emulator.calls.sim.bucket_by_name(BUCKET)
    name = f"{prefix}/{victim.path.hash_part}.narinfo"
    admin.delete_file_version(emulator.calls.sim.admin_token, _file_id(admin, name), name)

    before = emulator.counters()
    trusted = push(systems[0], cache(emulator, prefix, info), signing_key, pointer="web")
    assert trusted.paths_uploaded == 0 and calls(emulator, before, "b2_upload_file") == 0

    before = emulator.counters()
    repaired = push(systems[0], cache(emulator, prefix, info), signing_key, pointer="web",
                    settings=PushSettings(verify=True))
    assert repaired.paths_uploaded == 0  # the NAR was still there
    assert calls(emulator, before, "b2_upload_file") == 1
    listing = cache(emulator, prefix, info).listing()
    assert all(f"{i.path.hash_part}.narinfo" in listing for i in closure)


def test_push_all_of_several_closures_reads_one_manifest_each_when_nothing_changed(emulator, systems, signing_key,
                                                                                  tmp_path):
    prefix = f"all-{secrets.token_hex(4)}"
    fill(emulator, prefix, BIG, seed=7)
    info = account(tmp_path)
    tops = [systems[0], systems[5]]
    push_all(tops, cache(emulator, prefix, info), signing_key, pointers={"web": tops[0], "db": tops[1]})
    before = emulator.counters()
    result = push_all(tops, cache(emulator, prefix, info), signing_key, pointers={"web": tops[0], "db": tops[1]})
    assert costs(emulator, before) == (0, 2, 1)
    assert result.paths_uploaded == 0 and not any(p.changed for p in result.pointers)


# --- lookup by name, both ways --------------------------------------------------------------------


@pytest.mark.parametrize("wanted", [7, 300, 3000])
def test_lookup_answers_exactly_what_a_listing_says(emulator, tmp_path, wanted):
    """Few names are checked one by one, many by listing pages from the names on; both must agree with a listing
    of the whole cache, for names present and absent, at the edges of pages too."""
    prefix = f"lookup-{wanted}-{secrets.token_hex(4)}"
    fill(emulator, prefix, 5000, seed=wanted)
    b2 = cache(emulator, prefix, account(tmp_path))
    everything = b2.listing()
    rng = random.Random(wanted)
    present = rng.sample(sorted(everything), wanted // 2)
    absent = [f"{''.join(rng.choice(ALPHABET) for _ in range(32))}.narinfo" for _ in range(wanted - wanted // 2)]
    before = emulator.counters()
    found = b2.lookup(present + absent)
    assert set(found) == set(present)
    assert all(found[name].size == everything[name].size for name in present)
    _, b, c = costs(emulator, before)
    assert b + 10 * c <= 10 * (5000 // 1000 + 2) + wanted, "never dearer than listing it all or asking each"


def test_a_revoked_key_with_a_kept_authorization_fails_in_one_line_and_uploads_nothing(emulator, systems,
                                                                                        signing_key, tmp_path):
    key_id, key = "cost-revoked", secrets.token_hex(16)
    emulator.add_bucket_key(key_id, key, BUCKET)
    prefix, info = f"revoked-{secrets.token_hex(4)}", account(tmp_path)
    push(systems[0], B2Cache(BUCKET, prefix, emulator.url, key_id, key, account_info=info), signing_key,
         pointer="web")
    sim = emulator.calls.sim
    revoked = sim.key_id_to_key.pop(key_id)
    for token in [t for t, k in sim.auth_token_to_key.items() if k is revoked]:
        del sim.auth_token_to_key[token]
    before = emulator.counters()
    with pytest.raises(CacheError) as caught:
        push(systems[1], B2Cache(BUCKET, prefix, emulator.url, key_id, key, account_info=info), signing_key,
             pointer="web")
    message = str(caught.value)
    print(f"\n{message}")
    assert "\n" not in message and key not in message and "B2 refused the application key" in message
    assert calls(emulator, before, "b2_authorize_account") == 1  # the token refused, then the key
    assert calls(emulator, before, "b2_upload_file") == 0


# --- the command line -----------------------------------------------------------------------------


def inventory(tmp_path: Path, emulator: B2Emulator, prefix: str, signing: Path) -> Path:
    root = tmp_path / "inventory"
    root.mkdir()
    credentials = tmp_path / "b2.toml"
    credentials.write_text(f'key_id = "{KEY_ID}"\napplication_key = "{KEY}"\n')
    credentials.chmod(0o600)
    (root / "topdeck.toml").write_text(
        f'[cache]\nbucket = "{BUCKET}"\nprefix = "{prefix}"\nrealm = "{emulator.url}"\n'
        f'credentials_file = "{credentials}"\nsigning_key = "{signing}"\npublic_key_file = "{signing}.pub"\n')
    (root / "host-1").mkdir()
    (root / "host-1" / "host.toml").write_text('address = "127.0.37.2"\npointer = "web"\n')
    return root


def test_topdeck_push_twice_authorizes_once_and_verify_repairs_a_deleted_narinfo(emulator, systems, signing_file,
                                                                                 tmp_path):
    prefix = f"cli-{secrets.token_hex(4)}"
    root = inventory(tmp_path, emulator, prefix, signing_file)
    env = lab_env({"XDG_STATE_HOME": str(tmp_path / "state")})
    env.pop("B2_APPLICATION_KEY_ID", None)
    env.pop("B2_APPLICATION_KEY", None)
    run = [TOPDECK, "--inventory", str(root), "push", str(systems[0]), "--pointer", "web"]
    before = emulator.counters()
    first = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stderr == "" and calls(emulator, before, "b2_authorize_account") == 1

    before = emulator.counters()
    second = subprocess.run([*run, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and second.stderr == "", second.stderr
    assert calls(emulator, before, "b2_authorize_account") == 0 and costs(emulator, before)[1:] == (1, 1)

    victim = next(i for i in localnix.closure([systems[0]]) if not i.references)
    admin = emulator.calls.sim.bucket_by_name(BUCKET)
    name = f"{prefix}/{victim.path.hash_part}.narinfo"
    admin.delete_file_version(emulator.calls.sim.admin_token, _file_id(admin, name), name)
    before = emulator.counters()
    repaired = subprocess.run([*run, "--verify"], capture_output=True, text=True, env=env, timeout=120)
    assert repaired.returncode == 0, repaired.stderr
    assert calls(emulator, before, "b2_upload_file") == 1
    assert f"{victim.path.hash_part}.narinfo" in cache(emulator, prefix, None).listing()
    for output in (first, second, repaired):
        assert KEY not in output.stdout + output.stderr


def test_a_manifest_that_is_not_valid_answers_for_nothing_and_its_own_push_writes_it_again(emulator, systems,
                                                                                           signing_key, tmp_path):
    prefix, info = seeded(emulator, systems, signing_key, tmp_path, SMALL, "garbage")
    b2 = cache(emulator, prefix, info)
    b2.put_bytes(manifest_name(systems[0]), b'{"format": 1}', content_type="application/json")
    changed = {i.path for i in localnix.closure([systems[1]])} - {i.path for i in localnix.closure([systems[0]])}
    assert push(systems[1], cache(emulator, prefix, info), signing_key, pointer="web").paths_uploaded == len(changed)
    again = push(systems[0], cache(emulator, prefix, info), signing_key, pointer="web")
    assert again.paths_uploaded == 0 and again.pointer_changed
    manifest = parse_manifest(cache(emulator, prefix, info).get_bytes(manifest_name(systems[0])), "manifest")
    assert {p.path for p in manifest.paths} == {i.path for i in localnix.closure([systems[0]])}
