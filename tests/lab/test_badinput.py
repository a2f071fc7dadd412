# ruff: noqa: E501  (the table reads best one row a line)
"""Bad and hostile input, as one table: every row is an input, the `topdeck` command run on it, and the
fragments its one error line must hold. Every row checks the same outcomes:

- exactly one line on stderr, `topdeck: error: ...`, naming what is wrong and where, and no traceback;
- a non-zero exit;
- nothing changed in the bucket (its whole listing, with upload times, before and after) nor on any lab host
  (/run/current-system and the generation), and the marker file hostile values try to create does not exist;
- no secret (the B2 application key, the SSH private key, the cache signing key) in anything printed.

The three ways a cache can lie to a host (a narinfo with a bad signature, a NAR whose hash does not match, a
truncated NAR) are a second table: a lab host's Nix, pulling with signatures required, refuses each one.
Commands run as a user runs them: `.venv/bin/topdeck` in a subprocess.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import TEST_BASE_ADDRESS
from labtools import ssh_run, substitute

from topdeck.core import runs
from topdeck.core.cache import pointers
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.manifest import manifest_name
from topdeck.core.cache.presence import narinfo_name
from topdeck.core.cache.push import push
from topdeck.core.inventory import Build
from topdeck.core.nix import flakes
from topdeck.core.nix.narinfo import parse_narinfo, render_narinfo
from topdeck.core.nix.signing import generate_keypair, load_secret_key
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.lab import factory, flakefleet
from topdeck.lab.b2emu import B2Emulator
from topdeck.lab.lab import BUCKET, Lab
from topdeck.lab.nixenv import lab_env

TOPDECK = str(Path(sys.executable).with_name("topdeck"))
MARKER = Path(f"/tmp/topdeck-badinput-pwned-{uuid.uuid4().hex[:8]}")  # /tmp is shared with the lab hosts
HASH = "0" * 32
# Addresses of this file's own listeners: in the test lab's range, clear of its hosts.
SILENT_ADDRESS = str(ipaddress.ip_address(TEST_BASE_ADDRESS) + 40)
OTHER_ACCOUNT_ADDRESS = str(ipaddress.ip_address(TEST_BASE_ADDRESS) + 41)
UNREACHABLE_ADDRESS = str(ipaddress.ip_address(TEST_BASE_ADDRESS) + 43)  # nothing listens there


# --- the fleet every row starts from ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(lab: Lab, tmp_path_factory):
    """A cache prefix holding a pushed toplevel that `web` points at, and an inventory of the three lab hosts."""
    workdir = tmp_path_factory.mktemp("badinput")
    spec = factory.SystemSpec(host="badinput", version=factory.DEFAULT_VERSION,
                              packages=factory.base_packages(15, seed=15, total_size=factory.MiB),
                              authorized_keys=(lab.client_public_key(),))
    toplevel = parse_store_path(factory.build(spec, workdir))
    prefix = f"badinput-{uuid.uuid4().hex[:8]}"
    push(toplevel, B2Cache(BUCKET, prefix, lab.emulator.url, *lab.b2_key()), load_secret_key(lab.cache_secret_key),
         pointer="web")
    inventory = workdir / "hosts"
    inventory.mkdir()
    (inventory / "topdeck.toml").write_text(
        f'[cache]\nbucket = "{BUCKET}"\nprefix = "{prefix}"\nrealm = "{lab.emulator.url}"\n'
        f'credentials_file = "{lab.b2_credentials}"\nsigning_key = "{lab.cache_secret_key}"\n'
        f'public_key_file = "{lab.cache_public_key}"\n\n'
        f'[ssh]\nknown_hosts = "{lab.known_hosts}"\nidentity = "{lab.client_key}"\nconnect_timeout = 5\n'
    )
    for name in ("host-1", "host-2", "host-3"):
        (inventory / name).mkdir()
        (inventory / name / "host.toml").write_text(host_toml(lab, name))
    return {"toplevel": toplevel, "prefix": prefix, "inventory": inventory}


def host_toml(lab: Lab, name: str) -> str:
    return f'address = "{lab.host(name).address}"\npointer = "web"\ntags = ["web"]\n'


@pytest.fixture(scope="module")
def other_account():
    """A second B2 account (its own emulator) with its own unrestricted key and bucket."""
    emulator = B2Emulator("other-account-key-id", "other-account-secret-key", host=OTHER_ACCOUNT_ADDRESS)
    emulator.create_bucket("other-account-bucket")
    with emulator.start():
        yield emulator


@dataclass
class Ctx:
    """One row's world: its own copy of the inventory, and what to undo on the lab afterwards."""

    lab: Lab
    inv: Path
    tmp: Path
    toplevel: StorePath
    prefix: str
    other_account: B2Emulator
    env: dict[str, str] = field(default_factory=dict)
    undo: list[Callable[[], None]] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.inv / "topdeck.toml"

    def edit_config(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text, old
        self.config.write_text(text.replace(old, new))

    def host(self, name: str, text: str | bytes) -> None:
        path = self.inv / name / "host.toml"
        path.parent.mkdir(exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)

    def cache(self, prefix: str | None = None) -> B2Cache:
        return B2Cache(BUCKET, prefix or self.prefix, self.lab.emulator.url, *self.lab.b2_key())

    def new_prefix(self) -> B2Cache:
        """Point the row's inventory at an empty cache prefix of its own."""
        prefix = f"badinput-row-{uuid.uuid4().hex[:8]}"
        self.edit_config(f'prefix = "{self.prefix}"', f'prefix = "{prefix}"')
        return self.cache(prefix)

    def published(self, key=None) -> B2Cache:  # type: ignore[no-untyped-def]
        """A prefix of the row's own where pointer `web` is published (signed by `key`, else the cache key)."""
        cache = self.new_prefix()
        pointers.publish(cache, "web", self.toplevel, key or load_secret_key(self.lab.cache_secret_key))
        return cache


# --- the rows --------------------------------------------------------------------------------------
# Each row: (id, prepare, expected). `prepare(ctx)` changes the row's inventory (or the lab, registering how
# to undo it) and returns the command's arguments after `--inventory DIR`. `expected` are fragments of the
# error line; `{inv}` is the row's inventory folder and `{top}` the pushed toplevel.


def _inventory_row(host: str | bytes, name: str = "host-1", argv: tuple[str, ...] = ("plan",)):  # type: ignore[no-untyped-def]
    def prepare(ctx: Ctx) -> list[str]:
        ctx.host(name, host)
        return list(argv)
    return prepare


def _host_folder(name: str):  # type: ignore[no-untyped-def]
    def prepare(ctx: Ctx) -> list[str]:
        ctx.host(name, 'address = "192.0.2.99"\npointer = "web"\n')
        return ["plan"]
    return prepare


def _config(old: str, new: str, argv: tuple[str, ...] = ("plan",)):  # type: ignore[no-untyped-def]
    def prepare(ctx: Ctx) -> list[str]:
        ctx.edit_config(old, new)
        return list(argv)
    return prepare


def _host_toml_is_a_folder(ctx: Ctx) -> list[str]:
    (ctx.inv / "host-2" / "host.toml").unlink()
    (ctx.inv / "host-2" / "host.toml").mkdir()
    return ["plan"]


def _host_toml_dangles(ctx: Ctx) -> list[str]:
    (ctx.inv / "host-2" / "host.toml").unlink()
    (ctx.inv / "host-2" / "host.toml").symlink_to(ctx.tmp / "gone.toml")
    return ["plan"]


def _no_hosts(ctx: Ctx) -> list[str]:
    for name in ("host-1", "host-2", "host-3"):
        shutil.rmtree(ctx.inv / name)
    (ctx.inv / "notes").mkdir()  # a folder without host.toml is not a host
    return ["plan"]


def _no_config(ctx: Ctx) -> list[str]:
    ctx.config.unlink()
    return ["plan"]


def _no_inventory(ctx: Ctx) -> list[str]:
    shutil.rmtree(ctx.inv)
    return ["plan"]


def _argv(*argv: str):  # type: ignore[no-untyped-def]
    return lambda ctx: [arg.format(top=ctx.toplevel, marker=MARKER) for arg in argv]


def _bad_signing_key(ctx: Ctx) -> list[str]:
    (ctx.tmp / "bad.sec").write_text("topdeck-lab-1:not-base64!\n")
    ctx.edit_config(str(ctx.lab.cache_secret_key), str(ctx.tmp / "bad.sec"))
    return ["push", str(ctx.toplevel), "--pointer", "web"]


def _no_signing_key(ctx: Ctx) -> list[str]:
    ctx.edit_config(f'signing_key = "{ctx.lab.cache_secret_key}"\n', "")
    return ["push", str(ctx.toplevel), "--pointer", "web"]


def _pointer_txt(content: bytes):  # type: ignore[no-untyped-def]
    """Pointer `web`'s .txt overwritten (by someone with write access) with `content`; the sidecar is genuine."""
    def prepare(ctx: Ctx) -> list[str]:
        cache = ctx.published()
        info = cache.listing()["toplevels/web.txt"].info  # the genuine signed info, kept
        cache.put_bytes("toplevels/web.txt", content, content_type="text/plain", info=dict(info))
        return ["pointers", "web"]
    return prepare


def _unsigned_pointer(ctx: Ctx) -> list[str]:
    cache = ctx.new_prefix()
    cache.put_bytes("toplevels/web.txt", f"{ctx.toplevel}\n".encode(), content_type="text/plain",
                    info={"topdeck-serial": "7", "topdeck-path": str(ctx.toplevel)})
    return ["pointers", "web"]


def _wrongly_signed_pointer(ctx: Ctx) -> list[str]:
    other, _ = generate_keypair("topdeck-lab-1")  # the trusted key's name, another key
    ctx.published(key=other)
    return ["pointers", "web"]


def _garbage_sidecar(ctx: Ctx) -> list[str]:
    cache = ctx.published()
    cache.put_bytes("toplevels/web.json", b'{"name": "web", "path": "$(touch /tmp/x)"', content_type="application/json")
    return ["pointers", "web"]


def _hand_written_pointer(ctx: Ctx) -> list[str]:
    ctx.new_prefix().put_bytes("toplevels/web.txt", f"{ctx.toplevel}\n".encode(), content_type="text/plain")
    return ["plan", "--on", "host-1"]


def _no_pointer(ctx: Ctx) -> list[str]:
    ctx.new_prefix()
    return ["plan", "--on", "host-1"]


def _wrong_b2_key(ctx: Ctx) -> list[str]:
    ctx.env.update(B2_APPLICATION_KEY_ID=ctx.lab.b2_key()[0], B2_APPLICATION_KEY="wrong-secret-9f8e7d6c5b4a")
    ctx.secrets.append("wrong-secret-9f8e7d6c5b4a")
    return ["pointers"]


def _b2_credentials_file(text: str | None):  # type: ignore[no-untyped-def]
    def prepare(ctx: Ctx) -> list[str]:
        path = ctx.tmp / "b2.toml"
        if text is not None:
            path.write_text(text)
        ctx.edit_config(str(ctx.lab.b2_credentials), str(path))
        return ["pointers"]
    return prepare


def _other_account(bucket: str):  # type: ignore[no-untyped-def]
    """The inventory names another B2 account's realm and key, and `bucket`."""
    def prepare(ctx: Ctx) -> list[str]:
        ctx.edit_config(ctx.lab.emulator.url, ctx.other_account.url)
        ctx.edit_config(f'bucket = "{BUCKET}"', f'bucket = "{bucket}"')
        ctx.env.update(B2_APPLICATION_KEY_ID="other-account-key-id", B2_APPLICATION_KEY="other-account-secret-key")
        ctx.secrets.append("other-account-secret-key")
        return ["push", str(ctx.toplevel), "--pointer", "web"]
    return prepare


def _unknown_host_key(ctx: Ctx) -> list[str]:
    known = ctx.tmp / "known_hosts"
    known.write_text("".join(line + "\n" for line in ctx.lab.known_hosts.read_text().splitlines()
                             if not line.startswith(ctx.lab.host("host-1").address + " ")))
    ctx.edit_config(str(ctx.lab.known_hosts), str(known))
    before = known.read_bytes()
    ctx.undo.append(lambda: _assert_unchanged(known, before))
    return ["plan", "--on", "host-1"]


def _assert_unchanged(path: Path, before: bytes) -> None:
    assert path.read_bytes() == before, f"{path} was changed"


def _changed_host_key(ctx: Ctx) -> list[str]:
    lab = ctx.lab
    lab.rotate_host_key("host-2")

    def repin() -> None:  # the lab's known_hosts learns the new key, for the rows after this one
        lab.known_hosts.write_text("".join(f"{h.address} {h.public_host_key()}\n" for h in lab.hosts.values()))
    ctx.undo.append(repin)
    return ["plan", "--on", "host-2"]


def _wrong_user_key(ctx: Ctx) -> list[str]:
    stranger = ctx.tmp / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    ctx.secrets.extend(line for line in stranger.read_text().splitlines() if len(line) > 20)
    ctx.edit_config(str(ctx.lab.client_key), str(stranger))
    return ["plan", "--on", "host-1"]


def _missing_identity(ctx: Ctx) -> list[str]:
    ctx.edit_config(str(ctx.lab.client_key), str(ctx.tmp / "no-such-key"))
    return ["plan", "--on", "host-1"]


def _silent_host(ctx: Ctx) -> list[str]:
    """host-1's address is a TCP listener that accepts connections and never says anything."""
    listener = socket.create_server((SILENT_ADDRESS, 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()
        assert held, "topdeck never connected to the silent host"
    ctx.undo.append(close)
    ctx.host("host-1", f'address = "{SILENT_ADDRESS}"\nport = {listener.getsockname()[1]}\npointer = "web"\n')
    ctx.edit_config("connect_timeout = 5", "connect_timeout = 1.5")
    return ["plan", "--on", "host-1"]


def _host_without_nix(ctx: Ctx) -> list[str]:
    """host-3 loses nix-store: an empty, non-executable file is bind-mounted over it in its namespace."""
    host = ctx.lab.host("host-3")
    empty = ctx.tmp / "not-nix"
    empty.write_text("")
    empty.chmod(0o644)
    target = host.sh("readlink -f \"$(command -v nix-store)\"").strip()
    host.run(["mount", "--bind", str(empty), target])
    ctx.undo.append(lambda: host.run(["umount", target]))
    return ["plan", "--on", "host-3"]


def _same_address(ctx: Ctx) -> list[str]:
    ctx.host("host-9", host_toml(ctx.lab, "host-1"))
    return ["plan"]


def _same_address_spelt_twice(ctx: Ctx) -> list[str]:
    ctx.host("host-8", 'address = "::1"\npointer = "web"\n')
    ctx.host("host-9", 'address = "0:0:0:0:0:0:0:1"\npointer = "web"\n')
    return ["plan"]


def _stopped_host(ctx: Ctx) -> list[str]:
    ctx.lab.stop_host("host-3")
    ctx.undo.append(lambda: ctx.lab.start_host("host-3"))
    return ["plan", "--on", "host-3"]


# --- ssh_config, jump hosts, trust ---------------------------------------------------------------------


def _ssh_config_row(text: str, address: str, argv: tuple[str, ...] = ("plan", "--on", "host-1")):  # type: ignore[no-untyped-def]
    """host-1 named by `address` in an [ssh] config of the row's own holding `text`."""
    def prepare(ctx: Ctx) -> list[str]:
        (ctx.tmp / "ssh_config").write_text(text.format(host1=ctx.lab.host("host-1").address))
        ctx.edit_config("connect_timeout = 5", f'connect_timeout = 5\nconfig = "{ctx.tmp / "ssh_config"}"')
        ctx.host("host-1", f'address = "{address}"\npointer = "web"\n')
        return list(argv)
    return prepare


def _trust_wrong_fingerprint(ctx: Ctx) -> list[str]:
    _unknown_host_key(ctx)  # host-1's key is not pinned, and the file must stay as it is
    return ["trust", "host-1", "--fingerprint", "SHA256:" + "A" * 43]



# --- deploy, rollback, status, generations --------------------------------------------------------------
# Rows that would change a host if topdeck let them through: each deploys or rolls back with --yes (without a
# terminal, deploy and rollback refuse to ask), so a row that passes proves the refusal, not a question.

HOST_SERIAL = "/nix/var/nix/topdeck/pointers/web.serial"  # the last serial of pointer `web` a host applied


def _deployable(ctx: Ctx, key=None) -> B2Cache:  # type: ignore[no-untyped-def]
    """A prefix of the row's own holding the whole closure, with pointer `web` (serial 1) signed by `key`."""
    cache = ctx.published(key=key)
    push(ctx.toplevel, cache, load_secret_key(ctx.lab.cache_secret_key))
    return cache


def _deploy_wrongly_signed(ctx: Ctx) -> list[str]:
    """The .txt and its signed file info are genuine (so the plan targets it); the sidecar, which the host reads,
    is signed by another key of the trusted key's name."""
    other, _ = generate_keypair("topdeck-lab-1")
    cache = _deployable(ctx)
    genuine = pointers.parse_sidecar(cache.get_bytes(pointers.sidecar_name("web")), "web.json")
    cache.put_bytes(pointers.sidecar_name("web"), pointers.render_sidecar(pointers.signed(genuine, other)),
                    content_type="application/json")
    return ["deploy", "--on", "host-1", "--yes"]


def _deploy_replayed_serial(ctx: Ctx) -> list[str]:
    """host-1 has applied serial 1000000 of `web` (its state file says so, as a deploy leaves it); the cache
    serves a genuine, correctly signed serial 1: a replayed or downgraded pointer."""
    _deployable(ctx)
    host = ctx.lab.host("host-1")
    before = host.sh(f"cat {HOST_SERIAL} 2>/dev/null || true").strip()
    assert before.isdigit() or not before, before
    host.sh(f"mkdir -p {Path(HOST_SERIAL).parent} && echo 1000000 > {HOST_SERIAL}")
    ctx.undo.append(lambda: host.sh(f"echo {before} > {HOST_SERIAL}" if before else f"rm -f {HOST_SERIAL}"))
    return ["deploy", "--on", "host-1", "--yes"]


def _deploy_target_not_pushed(ctx: Ctx) -> list[str]:
    ctx.published()  # a signed pointer, and nothing of its closure
    return ["deploy", "--on", "host-1", "--yes"]


def _deploy_incomplete_cache(ctx: Ctx) -> list[str]:
    """The manifest and every narinfo but the toplevel's own: a push that stopped short (or a pruned cache)."""
    cache, source = ctx.published(), ctx.cache()
    cache.put_bytes(manifest_name(ctx.toplevel), source.get_bytes(manifest_name(ctx.toplevel)),
                    content_type="application/json")
    for name in source.listing():
        if name.endswith(".narinfo") and name != narinfo_name(ctx.toplevel):
            cache.put_bytes(name, source.get_bytes(name), content_type="text/x-nix-narinfo")
    return ["deploy", "--on", "host-1", "--yes"]


def _stopped(name: str, *argv: str):  # type: ignore[no-untyped-def]
    def prepare(ctx: Ctx) -> list[str]:
        ctx.lab.stop_host(name)
        ctx.undo.append(lambda: ctx.lab.start_host(name))
        return list(argv)
    return prepare


def _run_record(hosts: list[dict[str, str]] | None, *more: str, legacy: bool = True):  # type: ignore[no-untyped-def]
    """The inventory's newest run record: one naming `hosts`, or (None) garbage; then a retry (with `more`).
    `legacy`: where earlier versions kept records, beside the inventory; else in its state folder."""
    def prepare(ctx: Ctx) -> list[str]:
        folder = ctx.inv / ".topdeck" / "runs" if legacy else runs.runs_dir(ctx.inv)
        folder.mkdir(parents=True)
        record = {"run_id": "20240101-000000-abcdef", "kind": "deploy", "mode": "switch", "started": 1.0,
                  "finished": 2.0, "stopped": "", "ok": False, "hosts": hosts}
        (folder / "20240101-000000-abcdef.json").write_text(json.dumps(record) if hosts is not None else "{not json")
        return ["deploy", "--retry-failed", "--yes", *more]
    return prepare


def _signing_key_in_flake(ctx: Ctx) -> list[str]:
    shutil.copy(ctx.lab.cache_secret_key, ctx.inv / "cache-key.sec")
    ctx.edit_config(str(ctx.lab.cache_secret_key), str(ctx.inv / "cache-key.sec"))
    ctx.edit_config("[ssh]\n", '[build]\nflake = "."\n\n[ssh]\n')
    return ["plan"]


def _flake_fleet(systems: dict[str, str], argv: tuple[str, ...], prebuild: bool = False):  # type: ignore[no-untyped-def]
    """The inventory as a flake fleet (`[build] flake = "."`) whose nixosConfigurations are the given names, each a
    trivial system named by its value; `prebuild` builds them first, so that the row's run has no build log."""
    def prepare(ctx: Ctx) -> list[str]:
        configurations = " ".join(
            f'"{name}".config.system.build.toplevel = builtins.derivation {{ name = "{system}"; system = '
            f'"{flakefleet.nix_system()}"; builder = "/bin/sh"; args = [ "-c" "/bin/mkdir $out" ]; }};'
            for name, system in systems.items())
        (ctx.inv / "flake.nix").write_text(f"{{ outputs = {{ self }}: {{ nixosConfigurations = {{ {configurations} }}; }}; }}\n")
        ctx.edit_config("[ssh]\n", '[build]\nflake = "."\n\n[ssh]\n')
        if prebuild:
            builds = [Build(kind="flake", flake=str(ctx.inv), name=name, where=name) for name in systems]
            flakes.build_flakes(builds, log=lambda _: None, env=lab_env())
        return list(argv)
    return prepare


NOT_ASKED = "Not asked: stdin is not a terminal; pass --yes"
DEPLOY_ROWS: list[tuple[str, Callable[[Ctx], list[str]], list[str]]] = [
    # --- deploy: refused by the host ---
    ("deploy: wrongly signed sidecar", _deploy_wrongly_signed, ["host-1: failed: pointer web: the sidecar's signature does not verify with the trusted key"]),
    ("deploy: older pointer serial (replay)", _deploy_replayed_serial, ["host-1: failed: pointer web: serial 1 is older than serial 1000000", "(a replayed or downgraded pointer)"]),
    ("deploy: host's sshd stopped", _stopped("host-3", "deploy", "--on", "host-3", "--yes"), ["host-3: failed: host-3 (root@", "unreachable: connection refused"]),
    # --- deploy: refused before any host is touched ---
    ("deploy: target not in the cache", _deploy_target_not_pushed, ["{top} is not in the cache (no manifest): push it first"]),
    ("deploy: cache lacks a path (completeness gate)", _deploy_incomplete_cache, ["the cache lacks 1 of the", "(first: {top}): push it again before deploying"]),
    ("deploy --target outside the store", _argv("deploy", "--target", "/etc/passwd", "--yes"), ["'/etc/passwd' is not a Nix store path"]),
    ("deploy --on unknown host", _argv("deploy", "--on", "host-9", "--yes"), ["--on host-9: no host matches (hosts: host-1, host-2, host-3)"]),
    ("deploy --on with '/'", _argv("deploy", "--on", "host-1/../host-2", "--yes"), ["--on host-1/../host-2: no host matches"]),
    ("deploy --on with ';'", _argv("deploy", "--on", "host-1;touch {marker}", "--yes"), ["--on host-1;touch /tmp/topdeck-badinput-pwned-", "no host matches"]),
    ("deploy --on with $(...)", _argv("deploy", "--on", "$(touch {marker})", "--yes"), ["--on $(touch /tmp/topdeck-badinput-pwned-", "no host matches"]),
    ("deploy --on with a newline", _argv("deploy", "--on", "host-1\ntopdeck: error: forged", "--yes"), ["--on host-1\\ntopdeck: error: forged: no host matches"]),
    ("deploy --on '' (not every host)", _argv("deploy", "--on", "", "--yes"), ["deploy: argument --on: '' names no host"]),
    ("deploy --on ',' (not every host)", _argv("deploy", "--on", ",", "--yes"), ["deploy: argument --on: ',' names no host"]),
    ("deploy --mode bogus", _argv("deploy", "--mode", "bogus", "--yes"), ["deploy: argument --mode: invalid choice: 'bogus'", "see `topdeck deploy --help`"]),
    ("deploy --mode with shell", _argv("deploy", "--mode", "switch;touch {marker}", "--yes"), ["deploy: argument --mode: invalid choice: 'switch;touch"]),
    ("deploy --canary -1", _argv("deploy", "--canary", "-1", "--yes"), ["--canary -1: must be 0 or more"]),
    ("deploy --canary abc", _argv("deploy", "--canary", "abc", "--yes"), ["deploy: argument --canary: invalid int value: 'abc'"]),
    ("deploy --wave 0", _argv("deploy", "--wave", "0", "--yes"), ["--wave '0': give a number of hosts (5) or a share of them (25%)"]),
    ("deploy --wave 150%", _argv("deploy", "--wave", "150%", "--yes"), ["--wave '150%': give a number of hosts"]),
    ("deploy --wave abc", _argv("deploy", "--wave", "abc", "--yes"), ["--wave 'abc': give a number of hosts"]),
    ("deploy --retry-failed, no run recorded", _argv("deploy", "--retry-failed", "--yes"), ["no earlier run to retry (none recorded in " + os.environ["XDG_STATE_HOME"] + "/topdeck/inventories/", "-hosts-", "/runs)"]),
    ("deploy --retry-failed, state run record garbage", _run_record(None, legacy=False), [os.environ["XDG_STATE_HOME"] + "/topdeck/inventories/", "/runs/20240101-000000-abcdef.json: not a readable run record"]),
    ("deploy --retry-failed, run record garbage", _run_record(None), ["{inv}/.topdeck/runs/20240101-000000-abcdef.json: not a readable run record"]),
    ("deploy --retry-failed, record names '*'", _run_record([{"host": "*", "outcome": "failed", "target": ""}]), ["names host '*', which is not in the inventory: nothing retried"]),
    ("deploy --retry-failed --on a host that did not fail", _run_record([{"host": "host-1", "outcome": "failed", "target": ""}], "--on", "host-2"), ["--on host-2: none of these hosts failed in the last run: nothing to retry"]),
    ("deploy --retry-failed, nothing failed", _run_record([{"host": "host-1", "outcome": "done", "target": ""}]), ["the last run had no failed hosts: nothing to retry"]),
    ("deploy without --yes, no terminal", _argv("deploy", "--on", "host-1"), ["switch 1 host(s) now? " + NOT_ASKED]),
    # --- rollback ---
    ("rollback --to 999 (no such generation)", _argv("rollback", "host-1", "--to", "999", "--yes"), ["host-1 has no system generation 999 (it has "]),
    ("rollback --to -1", _argv("rollback", "host-1", "--to", "-1", "--yes"), ["host-1 has no system generation -1"]),
    ("rollback --to abc", _argv("rollback", "host-1", "--to", "abc", "--yes"), ["rollback: argument --to: invalid int value: 'abc'"]),
    ("rollback --to with shell", _argv("rollback", "host-1", "--to", "1;touch {marker}", "--yes"), ["rollback: argument --to: invalid int value: '1;touch"]),
    ("rollback unknown host", _argv("rollback", "host-9", "--yes"), ["rollback host-9: no host matches (hosts: host-1, host-2, host-3)"]),
    ("rollback host with backticks", _argv("rollback", "`touch {marker}`", "--yes"), ["rollback `touch /tmp/topdeck-badinput-pwned-", "no host matches"]),
    ("rollback '' (not every host)", _argv("rollback", "", "--yes"), ["rollback: argument HOST: '' names no host"]),
    ("rollback without --yes, no terminal", _argv("rollback", "host-1", "--to", "1"), ["switch host-1 to generation 1? " + NOT_ASKED]),
    ("rollback unknown host, without --yes", _argv("rollback", "host-9"), ["rollback host-9: no host matches"]),
    ("rollback: host stopped", _stopped("host-2", "rollback", "host-2", "--to", "1", "--yes"), ["host-2 (root@", "unreachable: connection refused"]),
    # --- status, generations ---
    ("status --on unknown host", _argv("status", "--on", "host-9"), ["--on host-9: no host matches"]),
    ("status --on with backticks", _argv("status", "--on", "`touch {marker}`"), ["--on `touch /tmp/topdeck-badinput-pwned-", "no host matches"]),
    ("status --on ','", _argv("status", "--on", ","), ["status: argument --on: ',' names no host"]),
    ("generations: unknown host", _argv("generations", "host-9"), ["{inv}: no host named 'host-9'"]),
    ("generations: a glob is not a host", _argv("generations", "host-*"), ["{inv}: no host named 'host-*'"]),
    ("generations: shell in the host", _argv("generations", "host-1;touch {marker}"), ["no host named 'host-1;touch"]),
    ("generations: host stopped", _stopped("host-3", "generations", "host-3"), ["host-3 (root@", "unreachable: connection refused"]),
]


BAD_HOST = 'address = "127.0.0.250"\npointer = "web"\n'
ROWS: list[tuple[str, Callable[[Ctx], list[str]], list[str]]] = [
    # --- inventory ---
    ("host: missing address", _inventory_row('pointer = "web"\n'), ["{inv}/host-1/host.toml: address: missing"]),
    ("host: missing pointer", _inventory_row('address = "127.0.0.250"\n'), ["{inv}/host-1/host.toml: pointer: missing"]),
    ("host: port is a string", _inventory_row(BAD_HOST + 'port = "22"\n'), ["host-1/host.toml: port: '22' should be an integer"]),
    ("host: port out of range", _inventory_row(BAD_HOST + "port = 70000\n"), ["host-1/host.toml: port: 70000 is not a port"]),
    ("host: tags not a list", _inventory_row(BAD_HOST + 'tags = "web"\n'), ["host-1/host.toml: tags: 'web' should be a list"]),
    ("host: sudo not a boolean", _inventory_row(BAD_HOST + 'sudo = "yes"\n'), ["host-1/host.toml: sudo: 'yes' should be true or false"]),
    ("host: unknown key", _inventory_row(BAD_HOST + 'ssh_options = "-o ProxyCommand=sh"\n'), ["host-1/host.toml: ssh_options: unknown key"]),
    ("host: key given twice", _inventory_row(BAD_HOST + 'address = "127.0.0.251"\n'), ["host-1/host.toml: not valid TOML"]),
    ("host: not UTF-8", _inventory_row(b'address = "\xff\xfe"\npointer = "web"\n'), ["host-1/host.toml: not valid TOML"]),
    ("host: shell in address", _inventory_row(f'address = "a;touch {MARKER}"\npointer = "web"\n'), ["host-1/host.toml: address:", "is not an IP address or host name"]),
    ("host: newline in address", _inventory_row('address = "10.0.0.1\\nProxyCommand sh"\npointer = "web"\n'), ["host-1/host.toml: address:", "is not an IP address"]),
    ("host: shell in user", _inventory_row(BAD_HOST + f'user = "root$(touch {MARKER})"\n'), ["host-1/host.toml: user:", "is not a valid user name"]),
    ("host: '/' in pointer", _inventory_row('address = "127.0.0.250"\npointer = "web/../db"\n'), ["host-1/host.toml: pointer: 'web/../db' must be"]),
    ("host: '..' in pointer", _inventory_row('address = "127.0.0.250"\npointer = "web..db"\n'), ["host-1/host.toml: pointer: 'web..db' must be"]),
    ("host: shell in pointer", _inventory_row(f'address = "127.0.0.250"\npointer = "`touch {MARKER}`"\n'), ["host-1/host.toml: pointer:", "must be letters"]),
    ("host: shell in a tag", _inventory_row(BAD_HOST + 'tags = ["web;reboot"]\n'), ["host-1/host.toml: tags:", "bad tag 'web;reboot'"]),
    ("host name: '..'", _host_folder("web..1"), ["web..1/host.toml: host name 'web..1' must be"]),
    ("host name: space", _host_folder("web 1"), ["web 1/host.toml: host name 'web 1' must be"]),
    ("host name: ';'", _host_folder("web;reboot"), ["host name 'web;reboot' must be"]),
    ("host name: $(...)", _host_folder("$(reboot)"), ["host name '$(reboot)' must be"]),
    ("host name: backticks", _host_folder("`reboot`"), ["host name '`reboot`' must be"]),
    ("host name: '/' (selector)", _argv("push", "host-1/../host-2"), ["push host-1/../host-2: no host matches"]),
    ("same address twice", _same_address, ["host-9/host.toml: address:", "is also the address of host 'host-1'"]),
    ("same address, spelt another way", _same_address_spelt_twice, ["host-9/host.toml: address: [0:0:0:0:0:0:0:1]:22 is also the address of host 'host-8'"]),
    ("host.toml is a folder", _host_toml_is_a_folder, ["{inv}/host-2/host.toml: cannot read"]),
    ("host.toml is a broken link", _host_toml_dangles, ["{inv}/host-2/host.toml: file not found"]),
    ("no host folders", _no_hosts, ["{inv}: no hosts"]),
    ("no topdeck.toml", _no_config, ["{inv}/topdeck.toml: file not found"]),
    ("no inventory folder", _no_inventory, ["{inv}: inventory folder not found"]),
    ("config: unknown key", _config("[cache]\n", '[cache]\nsecret_key = "x"\n'), ["{inv}/topdeck.toml: cache.secret_key: unknown key"]),
    ("config: wrong type", _config("connect_timeout = 5", 'connect_timeout = "soon"'), ["topdeck.toml: ssh.connect_timeout: 'soon' should be"]),
    ("config: prefix escapes", lambda ctx: _config(f'prefix = "{ctx.prefix}"', 'prefix = "../other"')(ctx), ["topdeck.toml: cache.prefix: '../other' is not a safe prefix"]),
    ("config: download_url with a quote", _config("[cache]\n", "[cache]\ndownload_url = \"https://cache.example.com/x';touch " + str(MARKER) + "\"\n", ("deploy", "--yes")), ["{inv}/topdeck.toml: cache.download_url: ", "is not the http:// or https:// URL of the cache's root"]),
    ("config: download_url not http", _config("[cache]\n", '[cache]\ndownload_url = "file:///etc"\n', ("agent-config", "host-1")), ["{inv}/topdeck.toml: cache.download_url: 'file:///etc' is not the http:// or https:// URL"]),
    ("config: download_url with a user", _config("[cache]\n", '[cache]\ndownload_url = "https://user:pw@cache.example.com"\n'), ["{inv}/topdeck.toml: cache.download_url: must not carry a user or password"]),
    # --- flakes (build, push --on, apply) ---
    ("host: flake ref with shell", _inventory_row(BAD_HOST + f'[build]\nflake = "a b;touch {MARKER}#host-1"\n'), ["host-1/host.toml: build.flake: 'a b;touch /tmp/topdeck-badinput-pwned-", "is not a flake reference"]),
    ("host: flake without #name", _inventory_row(BAD_HOST + '[build]\nflake = "."\n'), ["host-1/host.toml: build.flake: '.' should be '<flake-ref>#<name>'"]),
    ("host: flake and nix together", _inventory_row(BAD_HOST + '[build]\nflake = ".#host-1"\nnix = "default.nix"\n'), ["host-1/host.toml: build: give exactly one of 'nix', 'nixos' or 'flake'"]),
    ("config: fleet flake with #name", _config("[ssh]\n", '[build]\nflake = ".#web"\n\n[ssh]\n'), ["topdeck.toml: build.flake: '.#web': give the flake only (no '#')"]),
    ("config: fleet flake folder missing", _config("[ssh]\n", '[build]\nflake = "./no-such-flake"\n\n[ssh]\n', ("push", "--on", "host-1")), ["topdeck.toml: build.flake: flake {inv}/no-such-flake: no such folder"]),
    ("flake: no nixosConfigurations.<host>", _flake_fleet({"other": "sys-other"}, ("push", "--on", "host-1")), ["topdeck.toml: build.flake: flake {inv} has no nixosConfigurations.host-1 (it has: other)"]),
    ("push --on: pointer shared, toplevels differ", _flake_fleet({"host-1": "sys-a", "host-2": "sys-b"}, ("push", "--on", "host-1,host-2"), prebuild=True), ["pointer web: its hosts build different toplevels (host-1 builds sys-a; host-2 builds sys-b)", "nothing was pushed"]),
    ("apply: pointer shared, toplevels differ", _flake_fleet({"host-1": "sys-a", "host-2": "sys-c"}, ("apply", "--on", "host-1,host-2", "--yes"), prebuild=True), ["pointer web: its hosts build different toplevels (host-1 builds sys-a; host-2 builds sys-c)"]),
    ("flake: signing key inside the flake", _signing_key_in_flake, ["topdeck.toml: cache.signing_key: {inv}/cache-key.sec would be copied with flake {inv} into the world-readable store", "keep secrets outside the flake's folder"]),
    ("push: HOST and --on together", _argv("push", "host-1", "--on", "host-2"), ["push: give a PATH or HOST, or --on SELECTOR (not both)"]),
    ("apply: host without [build]", _argv("apply", "--on", "host-1", "--yes"), ["host-1/host.toml: host host-1 has no [build] section"]),
    ("apply --mode bogus", _argv("apply", "--mode", "bogus", "--yes"), ["apply: argument --mode: invalid choice: 'bogus'"]),
    # --- paths and pointers ---
    ("push: path outside /nix/store", _argv("push", "/etc/passwd"), ["'/etc/passwd' is not a Nix store path"]),
    ("push: '..' out of the store", _argv("push", f"/nix/store/{HASH}-x/../../../etc/passwd"), ["is not a Nix store path"]),
    ("push: store path with ';'", _argv("push", f"/nix/store/{HASH}-x;touch {{marker}}"), ["is not a Nix store path"]),
    ("push: store path with $(...)", _argv("push", f"/nix/store/{HASH}-$(touch {{marker}})"), ["is not a Nix store path"]),
    ("push: store path not built here", _argv("push", f"/nix/store/{HASH}-never-built-1.0"), ["never-built-1.0", "not in the local store"]),
    ("push: hostile pointer name", _argv("push", "{top}", "--pointer", "web;touch {marker}"), ["pointer name 'web;touch", "no '/', no '..'"]),
    ("push: host without [build]", _argv("push", "host-1"), ["host-1/host.toml: host host-1 has no [build] section"]),
    ("push: garbage signing key", _bad_signing_key, ["bad.sec", "is not in Nix's format"]),
    ("push: no signing key", _no_signing_key, ["{inv}/topdeck.toml: cache.signing_key is not set"]),
    ("plan --target outside the store", _argv("plan", "--target", "/etc"), ["'/etc' is not a Nix store path"]),
    ("plan --target with backticks", _argv("plan", "--target", f"/nix/store/{HASH}-`touch {{marker}}`"), ["is not a Nix store path"]),
    ("plan --target not in the cache", _argv("plan", "--target", f"/nix/store/{HASH}-nixos-system-gone-1"), ["nixos-system-gone-1 is not in the cache (no manifest): push it first"]),
    ("pointer: .txt holds garbage", _pointer_txt(b"hello world\n"), ["toplevels/web.txt: 'hello world' is not a Nix store path"]),
    ("pointer: .txt holds two lines", _pointer_txt(b"/nix/store/" + HASH.encode() + b"-a\n/nix/store/" + HASH.encode() + b"-b\n"), ["toplevels/web.txt: must hold exactly one line"]),
    ("pointer: .txt holds binary", _pointer_txt(b"\xff\xfe\x00"), ["toplevels/web.txt: not text"]),
    ("pointer: .txt names another path", _pointer_txt(f"/nix/store/{HASH}-nixos-system-evil-1\n".encode()), ["pointer web: toplevels/web.txt names nixos-system-evil-1 but its signed sidecar names"]),
    ("pointer: unsigned (no sidecar)", _unsigned_pointer, ["pointer web: toplevels/web.json is missing: an unsigned pointer"]),
    ("pointer: wrongly signed sidecar", _wrongly_signed_pointer, ["pointer web: the sidecar's signature does not verify with the trusted key"]),
    ("pointer: sidecar is garbage", _garbage_sidecar, ["toplevels/web.json: not a valid pointer sidecar"]),
    ("pointer: hostile name", _argv("pointers", "web$(touch {marker})"), ["pointer name 'web$(touch", "no '/', no '..'"]),
    ("pointer: written by hand", _hand_written_pointer, ["host-1: pointer web: unverified: published without a signature in its file info (older topdeck); publish it again"]),
    ("pointer: does not exist", _no_pointer, ["host-1: pointer web not found"]),
    # --- B2 ---
    ("B2: wrong application key", _wrong_b2_key, ["B2 refused the application key"]),
    ("B2: credentials file missing", _b2_credentials_file(None), ["b2.toml: cannot read the B2 credentials"]),
    ("B2: credentials file garbage", _b2_credentials_file('key_id = "x"\n'), ["b2.toml: needs key_id and application_key"]),
    ("B2: missing bucket", _config(f'bucket = "{BUCKET}"', 'bucket = "no-such-bucket"', ("pointers",)), ["the B2 key is restricted to bucket 'topdeck-lab', not 'no-such-bucket'"]),
    ("B2: missing bucket, account key", _other_account("no-such-bucket"), ["B2 bucket 'no-such-bucket' not found"]),
    ("B2: realm unreachable", lambda ctx: _config(ctx.lab.emulator.url, f"http://{UNREACHABLE_ADDRESS}:9", ("pointers",))(ctx), ["authorizing with B2: B2 did not answer (connection refused)"]),
    ("B2: another account's bucket", _other_account(BUCKET), [f"B2 bucket '{BUCKET}' not found (or not visible to this key)"]),
    # --- SSH ---
    ("ssh: unknown host key", _unknown_host_key, ["host-1 (", "unknown host key ssh-ed25519 SHA256:", "not in {tmp}/known_hosts"]),
    ("ssh: changed host key", _changed_host_key, ["host-2 (", "HOST KEY CHANGED (possible man-in-the-middle attack"]),
    ("ssh: wrong user key", _wrong_user_key, ["host-1 (root@", "the server refused our key"]),
    ("ssh: identity file missing", _missing_identity, ["host-1 (root@", "identity file", "no-such-key not found"]),
    ("ssh: host says nothing", _silent_host, [f"host-1 (root@{SILENT_ADDRESS}:", "no SSH server answered (no SSH banner within 1.5 s)"]),
    ("ssh: host stopped", _stopped_host, ["host-3 (root@", "unreachable: connection refused"]),
    ("ssh: Nix missing on the host", _host_without_nix, ["host-3: nix-store is not installed on this host"]),
    ("ssh: unknown alias", _ssh_config_row("Host web-*\n    User root\n", "no-such-alias"), ["host-1 (root@no-such-alias): unknown host 'no-such-alias': not an IP address, not a name that resolves", "no Host block in {tmp}/ssh_config gives it a HostName"]),
    ("ssh: bastion down", _ssh_config_row(f"Host jumpbox\n    HostName {UNREACHABLE_ADDRESS}\nHost web-1\n    HostName {{host1}}\n    ProxyJump jumpbox\n", "web-1"), [f"host-1: jump host jumpbox (root@{UNREACHABLE_ADDRESS}): unreachable: connection refused"]),
    ("ssh: alias with a hostile HostName", _ssh_config_row(f"Host web-1\n    HostName a;touch{MARKER}\n", "web-1"), ["ssh_config: Host web-1: HostName 'a;touch", "is not an IP address or host name"]),
    ("ssh: ProxyJump hop with a hostile user", _ssh_config_row("Host web-1\n    HostName {host1}\n    ProxyJump $(reboot)@{host1}\n", "web-1"), ["ProxyJump hop '$(reboot)@", "is not a valid user name"]),
    ("config: [ssh] config missing", _config("connect_timeout = 5", 'connect_timeout = 5\nconfig = "no-such-ssh-config"'), ["{inv}/topdeck.toml: ssh.config: {inv}/no-such-ssh-config is not a file"]),
    ("trust: fingerprint mismatch", _trust_wrong_fingerprint, ["host-1: the host presented ssh-ed25519 SHA256:", "not SHA256:AAAA", "refusing it, nothing written"]),
    ("trust: not a fingerprint", _argv("trust", "host-1", "--fingerprint", "MD5:aa:bb"), ["trust: argument --fingerprint: 'MD5:aa:bb' is not a SHA256 fingerprint"]),
    *DEPLOY_ROWS,
]


# --- the checks every row gets ---------------------------------------------------------------------


def bucket_state(lab: Lab) -> dict[str, tuple[int, int]]:
    listing = B2Cache(BUCKET, "", lab.emulator.url, *lab.b2_key()).listing()
    return {name: (entry.size, entry.uploaded_ms) for name, entry in listing.items()}


def hosts_state(lab: Lab) -> dict[str, tuple[str, int]]:
    return {name: (host.current_system(), host.generation()) for name, host in lab.hosts.items()}


def lab_secrets(lab: Lab) -> list[str]:
    private = [line for line in lab.client_key.read_text().splitlines() if len(line) > 20 and "PRIVATE" not in line]
    return [lab.b2_key()[1], lab.cache_secret_key.read_text().strip().split(":", 1)[1], *private]


@pytest.mark.parametrize("name,prepare,expected", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_clear_line_and_changes_nothing(lab, fleet, other_account, tmp_path, name, prepare,
                                                         expected):
    inv = tmp_path / "hosts"
    shutil.copytree(fleet["inventory"], inv)
    ctx = Ctx(lab, inv, tmp_path, fleet["toplevel"], fleet["prefix"], other_account)
    try:
        argv = prepare(ctx)
        bucket, hosts = bucket_state(lab), hosts_state(lab)

        run = subprocess.run([TOPDECK, "--inventory", str(inv), *argv], capture_output=True, text=True,
                             env={**os.environ, **ctx.env}, stdin=subprocess.DEVNULL, timeout=120)

        code, out, err = run.returncode, run.stdout, run.stderr
    finally:
        for undo in reversed(ctx.undo):
            undo()
    assert code != 0, f"exit {code}; stdout: {out}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("topdeck: error: ") and "Traceback" not in err
    for fragment in expected:
        fragment = fragment.format(inv=inv, tmp=tmp_path, top=ctx.toplevel)
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    after = bucket_state(lab)
    recorded = {name for name in after.keys() - bucket.keys() if "/runs/" in f"/{name}"}
    assert {name: state for name, state in after.items() if name not in recorded} == bucket, "the bucket changed"
    for name in recorded:  # a deploy the hosts refused goes into the shared history, as a failed run
        record = json.loads(B2Cache(BUCKET, "", lab.emulator.url, *lab.b2_key()).get_bytes(name))["record"]
        assert record["hosts"] and all(host["outcome"] != "done" for host in record["hosts"]), record
    assert hosts_state(lab) == hosts, "a host's system changed"
    assert not MARKER.exists(), "a hostile value ran"
    for secret in [*lab_secrets(lab), *ctx.secrets]:
        assert secret not in out + err, "a secret was printed"


def test_the_unmodified_fleet_plans_and_lists_fine(lab, fleet):
    """The rows fail because of what each changes, not because the fleet they start from is broken."""
    for argv in (["plan"], ["pointers", "web"]):
        run = subprocess.run([TOPDECK, "--inventory", str(fleet["inventory"]), *argv], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert run.returncode == 0 and run.stderr == "", run.stderr
    assert "signature verified: topdeck-lab-1" in run.stdout
    assert len(ROWS) >= 30


# --- what a lying cache does to a host ---------------------------------------------------------------


def _bad_signature(cache: B2Cache, toplevel: StorePath) -> None:
    narinfo = parse_narinfo(cache.get_bytes(narinfo_name(toplevel)).decode())
    forged = dataclasses.replace(narinfo, sigs=("topdeck-lab-1:" + base64.b64encode(bytes(64)).decode(),))
    cache.put_bytes(narinfo_name(toplevel), render_narinfo(forged).encode(), content_type="text/x-nix-narinfo")


def _nar_of_another_path(cache: B2Cache, toplevel: StorePath) -> None:
    narinfo = parse_narinfo(cache.get_bytes(narinfo_name(toplevel)).decode())
    other = next(name for name in cache.listing() if name.startswith("nar/") and name != narinfo.url)
    cache.put_bytes(narinfo.url, cache.get_bytes(other), content_type="application/x-nix-nar")


def _truncated_nar(cache: B2Cache, toplevel: StorePath) -> None:
    narinfo = parse_narinfo(cache.get_bytes(narinfo_name(toplevel)).decode())
    data = cache.get_bytes(narinfo.url)
    cache.put_bytes(narinfo.url, data[: len(data) // 2], content_type="application/x-nix-nar")


LIES = [
    ("narinfo with a bad signature", _bad_signature, "not signed by any of the keys in 'trusted-public-keys'"),
    ("NAR whose hash does not match", _nar_of_another_path, "hash mismatch importing path"),
    ("truncated NAR", _truncated_nar, "Truncated zstd input"),
]


@pytest.mark.parametrize("name,tamper,expected", LIES, ids=[lie[0] for lie in LIES])
def test_a_host_refuses_what_a_tampered_cache_serves(lab, tmp_path, name, tamper, expected):
    spec = factory.SystemSpec(host=f"tampered-{len(name)}", version=factory.DEFAULT_VERSION,
                              packages=(factory.Package(f"victim{len(name)}", "1.0", size=300_000),),
                              authorized_keys=())
    toplevel = parse_store_path(factory.build(spec, tmp_path))
    cache = B2Cache(BUCKET, f"tampered-{uuid.uuid4().hex[:8]}", lab.emulator.url, *lab.b2_key())
    push(toplevel, cache, load_secret_key(lab.cache_secret_key))
    tamper(cache, toplevel)
    before = hosts_state(lab)

    code, _, err = substitute(lab, "host-2", str(toplevel), cache.substituter_url,
                              lab.cache_public_key.read_text().strip())

    assert code != 0 and expected in err, err
    assert ssh_run(lab, "host-2", f"nix-store --check-validity {toplevel}")[0] != 0, "the host accepted it"
    assert hosts_state(lab) == before

