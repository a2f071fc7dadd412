"""The security review's claims, each proved against the lab (docs/SECURITY.md says what they mean):

- every value that reaches a remote shell is validated, then quoted: hostile values sent through
  `remote_command` reach a real host verbatim and run nothing; hostile inventory values and hostile store paths
  from a tampered cache are refused before any SSH session, and everything the inventory accepts is inert even
  unquoted;
- host keys: nothing is ever accepted by itself; known_hosts is written only by an explicit acceptance;
- secrets (the B2 application key, the SSH private key, the cache signing key) never appear in output or logs;
- the minimal B2 key (listFiles, readFiles, writeFiles; no deleteFiles, no listBuckets) is enough, topdeck never
  deletes or hides, and hosts fetch with no key at all.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import random
import re
import shlex
import string
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import TEST_BASE_ADDRESS
from labtools import ssh_run

from topdeck.core.cache import pointers
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.manifest import manifest_name
from topdeck.core.cache.push import push
from topdeck.core.errors import ChangedHostKey, InventoryError, UnknownHostKey
from topdeck.core.inventory import Host, SSHConfig, load_inventory
from topdeck.core.nix.signing import load_secret_key
from topdeck.core.nix.store import parse_store_path
from topdeck.core.remote.ssh import HostKeys, connect, quote, remote_command
from topdeck.lab import factory
from topdeck.lab.b2emu import B2Emulator
from topdeck.lab.lab import BUCKET, Lab

REPO = Path(__file__).resolve().parents[2]
TOPDECK = str(Path(sys.executable).with_name("topdeck"))
MARKER = Path(f"/tmp/topdeck-security-pwned-{uuid.uuid4().hex[:8]}")  # /tmp is shared with the lab hosts
EMULATOR_ADDRESS = str(ipaddress.ip_address(TEST_BASE_ADDRESS) + 42)

HOSTILE = [
    f"$(touch {MARKER})",
    f"`touch {MARKER}`",
    f"; touch {MARKER}",
    f"x && touch {MARKER}",
    f"x || touch {MARKER}",
    f"| touch {MARKER}",
    f"& touch {MARKER} &",
    f"> {MARKER}",
    f"x\ntouch {MARKER}",
    f"x\r\ntouch {MARKER}",
    f"'; touch {MARKER}; '",
    f'"; touch {MARKER}; "',
    f"\\'; touch {MARKER} #",
    f"${{IFS}}touch${{IFS}}{MARKER}",
    f"$((1))$(touch {MARKER})",
    "* ? [a-z] ~root {a,b}",
    "--help",
    "-oProxyCommand=sh",
    "",
    " ",
    "tab\there",
    "ünïcödé ✓",
    f"\\\ntouch {MARKER}",
]


def lab_host(lab: Lab, name: str) -> Host:
    return Host(name=name, address=lab.host(name).address, pointer="web")


def lab_ssh(lab: Lab, known_hosts: Path | None = None) -> SSHConfig:
    return SSHConfig(known_hosts=known_hosts or lab.known_hosts, identity=lab.client_key, connect_timeout=5)


def assert_nothing_ran(lab: Lab) -> None:
    assert not MARKER.exists(), "a hostile value ran here"
    for name in lab.hosts:
        assert ssh_run(lab, name, f"test -e {shlex.quote(str(MARKER))}")[0] == 1, f"a hostile value ran on {name}"


# --- values reaching a remote shell ------------------------------------------------------------------


def test_hostile_values_through_remote_command_arrive_verbatim_and_run_nothing(lab):
    with connect(lab_host(lab, "host-1"), lab_ssh(lab)) as session:
        plain = session.run(remote_command("printf", "%s\\0", *HOSTILE))
        # the way topdeck runs its scripts: `sh -c SCRIPT NAME ARGS...`, the values as positional arguments
        wrapped = session.run(remote_command("sh", "-c", 'printf "%s\\0" "$@"', "topdeck-test", *HOSTILE))
        # a quoted value inside a longer command line the caller assembles from quoted words
        joined = session.run(" ".join(["printf", quote("%s\\0"), *map(quote, HOSTILE)]))
    for result in (plain, wrapped, joined):
        assert result.ok, result.stderr
        assert result.stdout.decode().split("\0")[:-1] == HOSTILE
    assert_nothing_ran(lab)


def test_quote_refuses_what_a_shell_word_cannot_hold():
    with pytest.raises(ValueError, match="NUL"):
        quote("a\0b")
    with pytest.raises(ValueError):
        remote_command()
    for value in HOSTILE:
        assert shlex.split(quote(value)) == [value]


FIELDS = {  # host.toml fields that reach SSH or a remote command line, and the message naming each
    "address": 'address = {value}\npointer = "web"\n',
    "user": 'address = "192.0.2.1"\npointer = "web"\nuser = {value}\n',
    "pointer": 'address = "192.0.2.1"\npointer = {value}\n',
    "tags": 'address = "192.0.2.1"\npointer = "web"\ntags = [{value}]\n',
}


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@pytest.mark.parametrize("field", list(FIELDS))
def test_every_hostile_inventory_value_is_refused_naming_file_and_field(tmp_path, field):
    refused = 0
    for number, value in enumerate(HOSTILE):
        root = tmp_path / str(number)
        (root / "host-1").mkdir(parents=True)
        (root / "topdeck.toml").write_text('[cache]\nbucket = "topdeck-lab"\n')
        (root / "host-1" / "host.toml").write_text(FIELDS[field].format(value=toml_string(value)))
        with pytest.raises(InventoryError) as caught:
            load_inventory(root)
        message = str(caught.value)
        assert f"{root}/host-1/host.toml: {field}" in message and "\n" not in message
        refused += 1
    assert refused == len(HOSTILE)


def test_what_the_inventory_accepts_is_inert_even_unquoted(tmp_path):
    """Fuzz: valid values with shell metacharacters spliced in. Whatever the loader accepts for a name, pointer,
    tag, user or address needs no quoting at all (shlex.quote leaves it as it is), so no shell can read it as
    anything but one plain word."""
    rng = random.Random(8)
    alphabet = string.ascii_letters + string.digits + "._-" + "$`;&|<>(){}[]*?~!#'\"\\ \t\n%^=+,:@/"
    accepted = 0
    seeds = {"name": "web-1", "pointer": "web", "tag": "db", "user": "deploy", "address": "web-1.example.org"}
    for attempt in range(400):
        kind, seed = rng.choice(list(seeds.items()))
        position = rng.randrange(len(seed) + 1)
        value = seed[:position] + "".join(rng.choices(alphabet, k=rng.randint(1, 3))) + seed[position:]
        root = tmp_path / str(attempt)
        name = value if kind == "name" else "host-1"
        try:
            (root / name).mkdir(parents=True)
        except (OSError, ValueError):
            continue  # not even a folder name (a '/', a NUL)
        (root / "topdeck.toml").write_text('[cache]\nbucket = "topdeck-lab"\n')
        fields = {"address": "192.0.2.1", "pointer": "web", "user": "root", "tags": ["web"]}
        if kind in ("pointer", "user", "address"):
            fields[kind] = value
        elif kind == "tag":
            fields["tags"] = [value]
        (root / name / "host.toml").write_text(
            "".join(f"{key} = {json.dumps(item)}\n" for key, item in fields.items()))
        try:
            host = load_inventory(root).hosts[0]
        except InventoryError:
            continue
        accepted += 1
        for word in (host.name, host.address, host.user, host.pointer, *host.tags):
            assert shlex.quote(word) == word, f"accepted {kind} {word!r} would need quoting"
    assert 20 <= accepted < 400  # the fuzz did exercise both sides


def test_hostile_inventory_values_never_reach_a_host(lab, tmp_path):
    """The same values through the command line: refused in one line, and nothing ran on any lab host."""
    for number, (field, value) in enumerate((f, v) for f in FIELDS for v in HOSTILE[:8]):
        root = tmp_path / str(number)
        (root / "host-1").mkdir(parents=True)
        (root / "topdeck.toml").write_text(
            f'[cache]\nbucket = "{BUCKET}"\nrealm = "{lab.emulator.url}"\ncredentials_file = "{lab.b2_credentials}"\n'
            f'[ssh]\nknown_hosts = "{lab.known_hosts}"\nidentity = "{lab.client_key}"\n')
        text = FIELDS[field].format(value=toml_string(value)).replace("192.0.2.1", lab.host("host-1").address)
        (root / "host-1" / "host.toml").write_text(text)
        run = subprocess.run([TOPDECK, "--inventory", str(root), "plan"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=60)
        assert run.returncode == 1 and run.stderr.count("\n") == 1 and f"host.toml: {field}" in run.stderr
    assert_nothing_ran(lab)


def test_hostile_store_paths_in_a_tampered_manifest_never_reach_the_probe(lab, tmp_path):
    """Someone with write access to the bucket rewrites a manifest so a 'store path' carries a command. The plan
    refuses the manifest before any SSH session; the probe never sees it."""
    spec = factory.SystemSpec(host="tampered-manifest", version=factory.DEFAULT_VERSION,
                              packages=(factory.Package("inert", "1.0", size=10_000),), authorized_keys=())
    toplevel = parse_store_path(factory.build(spec, tmp_path))
    prefix = f"security-{uuid.uuid4().hex[:8]}"
    cache = B2Cache(BUCKET, prefix, lab.emulator.url, *lab.b2_key())
    push(toplevel, cache, load_secret_key(lab.cache_secret_key), pointer="web")
    document = json.loads(cache.get_bytes(manifest_name(toplevel)))
    document["paths"][0]["path"] = f"/nix/store/{'0' * 32}-x$(touch {MARKER})"
    cache.put_bytes(manifest_name(toplevel), json.dumps(document).encode(), content_type="application/json")
    inventory = tmp_path / "hosts"
    (inventory / "host-1").mkdir(parents=True)
    (inventory / "topdeck.toml").write_text(
        f'[cache]\nbucket = "{BUCKET}"\nprefix = "{prefix}"\nrealm = "{lab.emulator.url}"\n'
        f'credentials_file = "{lab.b2_credentials}"\npublic_key_file = "{lab.cache_public_key}"\n'
        f'[ssh]\nknown_hosts = "{lab.known_hosts}"\nidentity = "{lab.client_key}"\n')
    (inventory / "host-1" / "host.toml").write_text(f'address = "{lab.host("host-1").address}"\npointer = "web"\n')
    sessions = lab.host("host-1").sshd_log.read_text().count("Accepted publickey")

    run = subprocess.run([TOPDECK, "--inventory", str(inventory), "plan"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)

    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert "not a valid manifest" in run.stderr and "is not a Nix store path" in run.stderr
    assert lab.host("host-1").sshd_log.read_text().count("Accepted publickey") == sessions, "a session was opened"
    assert_nothing_ran(lab)


# --- host keys -------------------------------------------------------------------------------------


def _inventory(lab: Lab, root: Path, known_hosts: Path) -> Path:
    (root / "host-1").mkdir(parents=True)
    (root / "topdeck.toml").write_text(
        f'[cache]\nbucket = "{BUCKET}"\nrealm = "{lab.emulator.url}"\ncredentials_file = "{lab.b2_credentials}"\n'
        f'[ssh]\nknown_hosts = "{known_hosts}"\nidentity = "{lab.client_key}"\nconnect_timeout = 5\n')
    (root / "host-1" / "host.toml").write_text(f'address = "{lab.host("host-1").address}"\npointer = "web"\n')
    return root


@pytest.mark.parametrize("case", ["unknown", "changed"])
def test_a_refused_host_key_leaves_every_known_hosts_file_as_it_was(lab, tmp_path, case):
    known = tmp_path / "known_hosts"
    other = lab.host("host-2").public_host_key()
    known.write_text(f"{lab.host('host-1').address} {other}\n" if case == "changed" else "# nothing pinned\n")
    home = tmp_path / "home"  # where ssh and paramiko would write a user's known_hosts
    home.mkdir()
    stamp = known.stat().st_mtime_ns, known.read_bytes()
    expected = UnknownHostKey if case == "unknown" else ChangedHostKey

    for _ in range(2):  # a second try is refused the same way: nothing was remembered in between
        with pytest.raises(expected):
            connect(lab_host(lab, "host-1"), lab_ssh(lab, known))
    run = subprocess.run([TOPDECK, "--inventory", str(_inventory(lab, tmp_path / "inv", known)), "plan",
                          "--target", f"/nix/store/{'0' * 32}-x"], capture_output=True, text=True,
                         env={**os.environ, "HOME": str(home)}, stdin=subprocess.DEVNULL, timeout=60)
    assert run.returncode == 1

    assert (known.stat().st_mtime_ns, known.read_bytes()) == stamp
    assert list(home.rglob("*")) == [], "something was written under HOME"
    pinned = [key.get_base64() for key in HostKeys(known).lookup(lab.host("host-1").address)]
    assert pinned == ([] if case == "unknown" else [other.split()[1]])


def test_only_an_explicit_accept_pins_an_unknown_key(lab, tmp_path):
    """connect refuses an unknown key and writes nothing; the separate accept step pins it, one line."""
    from topdeck.core.remote.ssh import accept_host_key

    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(UnknownHostKey) as caught:
        connect(lab_host(lab, "host-1"), lab_ssh(lab, known))
    assert known.read_text() == ""
    accept_host_key(known, caught.value.address, caught.value.port, caught.value.key)
    assert known.read_text() == f"{lab.host('host-1').address} {lab.host('host-1').public_host_key()}\n"
    with connect(lab_host(lab, "host-1"), lab_ssh(lab, known)) as session:
        assert session.run("true").ok


def test_only_the_operator_facing_backend_writes_known_hosts():
    """Static: nothing in the engine or the lab calls accept_host_key or uses a policy that accepts keys; the only
    caller is core/remote/trust.py's `pin`, which `topdeck trust` and the TUI's explicit accept action both use."""
    callers = []
    for path in [*REPO.joinpath("core").rglob("*.py"), *REPO.joinpath("tui").rglob("*.py"),
                 *REPO.joinpath("cli").rglob("*.py"), *REPO.joinpath("lab").rglob("*.py")]:
        text = path.read_text()
        assert not re.search(r"AutoAddPolicy|WarningPolicy|save_host_keys|StrictHostKeyChecking\W+(no|accept-new)",
                             text), path
        if re.search(r"\baccept_host_key\(", text.replace("def accept_host_key(", "")):
            callers.append(path.relative_to(REPO).as_posix())
    # topdeck trust and the TUI's accept action (base.py, through the backend and the facade) pin through trust.py
    assert callers == ["core/remote/trust.py"], callers
    assert "backend.pin_host_key(" in REPO.joinpath("tui/screens/base.py").read_text()
    assert "trust.pin(" in REPO.joinpath("core/facade.py").read_text()


# --- secrets ---------------------------------------------------------------------------------------


def lab_secrets(lab: Lab) -> list[str]:
    private = [line for line in lab.client_key.read_text().splitlines() if len(line) > 20 and "PRIVATE" not in line]
    return [lab.b2_key()[1], lab.cache_secret_key.read_text().strip().split(":", 1)[1], *private]


def test_secrets_never_appear_in_output_or_in_debug_logs(lab, tmp_path):
    """A push, the pointers and a plan, with every library logging at DEBUG: no key (nor B2's session token) in
    any log record or output."""
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(args)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        spec = factory.SystemSpec(host="secrets", version=factory.DEFAULT_VERSION,
                                  packages=(factory.Package("plain", "1.0", size=10_000),),
                                  authorized_keys=(lab.client_public_key(),))
        toplevel = parse_store_path(factory.build(spec, tmp_path))
        prefix = f"secrets-{uuid.uuid4().hex[:8]}"
        cache = B2Cache(BUCKET, prefix, lab.emulator.url, *lab.b2_key())
        push(toplevel, cache, load_secret_key(lab.cache_secret_key), pointer="web")
        pointers.history(cache, "web", [load_secret_key(lab.cache_secret_key).public_key()])
        token = cache.api.account_info.get_account_auth_token()  # a bearer credential for a day
        with connect(lab_host(lab, "host-1"), lab_ssh(lab)) as session:
            session.run("true")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    inventory = _inventory(lab, tmp_path / "inv", lab.known_hosts)
    config = inventory / "topdeck.toml"
    config.write_text(config.read_text().replace("[cache]\n", f'[cache]\nprefix = "{prefix}"\n'
                                                 f'signing_key = "{lab.cache_secret_key}"\n'))
    outputs = [subprocess.run([TOPDECK, "--inventory", str(inventory), *argv], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
               for argv in (["push", str(toplevel), "--pointer", "web", "--json"], ["pointers", "--json"],
                            ["pointers", "web", "--history"], ["plan", "--json"])]
    assert all(run.returncode == 0 for run in outputs), [run.stderr for run in outputs]
    text = records.getvalue() + "".join(run.stdout + run.stderr for run in outputs)
    assert len(records.getvalue()) > 1000, "the libraries logged nothing: the check proves nothing"
    for secret in [*lab_secrets(lab), token]:
        assert secret not in text


def test_an_error_from_b2_never_carries_the_key(lab):
    from topdeck.core.errors import CacheError

    key_id, key = lab.b2_key()
    for attempt in (lambda: B2Cache(BUCKET, "x", lab.emulator.url, key_id, key + "x"),
                    lambda: B2Cache("someone-elses", "x", lab.emulator.url, key_id, key)):
        with pytest.raises(CacheError) as caught:
            attempt()
        assert key not in str(caught.value) and key[:8] not in str(caught.value)


# --- the minimal B2 key, and hosts without one ---------------------------------------------------------


def test_the_minimal_b2_key_is_enough_and_topdeck_never_deletes(lab, tmp_path):
    """A key restricted to the bucket with only listFiles, readFiles and writeFiles (no deleteFiles, no
    listBuckets): push, pointers, history and a pointer rollback all work; no delete or hide call is ever made;
    and the key really cannot delete."""
    emulator = B2Emulator("account-id", f"account-{uuid.uuid4().hex}", host=EMULATOR_ADDRESS)
    emulator.create_bucket("minimal-key-bucket")
    secret = f"minimal-{uuid.uuid4().hex}"
    emulator.add_bucket_key("minimal-key-id", secret, "minimal-key-bucket", ("listFiles", "readFiles", "writeFiles"))
    spec = factory.SystemSpec(host="minimal", version=factory.DEFAULT_VERSION,
                              packages=(factory.Package("small", "1.0", size=20_000),), authorized_keys=())
    first = parse_store_path(factory.build(spec, tmp_path))
    second = parse_store_path(factory.build(factory.upgrade(spec, "small", "1.1"), tmp_path))
    key = load_secret_key(lab.cache_secret_key)
    with emulator.start():
        cache = B2Cache("minimal-key-bucket", "cache", emulator.url, "minimal-key-id", secret)
        push(first, cache, key, pointer="web")
        push(second, cache, key, pointer="web")
        versions = pointers.history(cache, "web", [key.public_key()])
        pointers.publish(cache, "web", pointers.rollback_target(versions, None), key)
        assert [v.path for v in pointers.history(cache, "web", [key.public_key()])] == [str(first), str(second),
                                                                                         str(first)]
        calls = emulator.counters()["calls"]
        assert not {"b2_delete_file_version", "b2_hide_file", "b2_list_buckets"} & set(calls), calls
        # anyone can read the cache without a key: that is how hosts fetch
        with urllib.request.urlopen(f"{cache.substituter_url}/nix-cache-info", timeout=10) as answer:
            assert answer.status == 200 and b"StoreDir: /nix/store" in answer.read()
        from b2sdk.v2.exception import B2Error
        entry = cache.bucket.get_file_info_by_name("cache/toplevels/web.txt")
        with pytest.raises(B2Error, match="unauthorized"):
            cache.bucket.delete_file_version(entry.id_, entry.file_name)


def test_hosts_fetch_with_no_b2_credentials(lab, tmp_path):
    """The substituter URL a host gets carries no key, and the host's environment holds none."""
    cache = B2Cache(BUCKET, "x", lab.emulator.url, *lab.b2_key())
    assert "@" not in cache.substituter_url and lab.b2_key()[1] not in cache.substituter_url
    code, out, _ = ssh_run(lab, "host-1", "env; cat /etc/nix/nix.conf 2>/dev/null; ls -a /root")
    assert code == 0
    assert "B2_APPLICATION_KEY" not in out and lab.b2_key()[1] not in out
