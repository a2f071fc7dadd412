"""Keys: secrets from `[[keys]]` uploaded to hosts over SSH, never through the cache.

A key's content is read on the operator's machine (its `file`, or the stdout of its `command`) before any host is
touched; one that cannot be read stops everything with one line naming it. On the host it travels on the SSH
session's stdin (never on a command line), into a temporary file that already has the key's owner and mode, which
is then renamed over the key. Nothing else keeps the content: what the operator's side remembers, to say in a plan
whether a key changed, is an HMAC of it under a random secret of the state folder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from topdeck.core.errors import DeployError, InventoryError
from topdeck.core.events import Emit, LogLine, ignore
from topdeck.core.inventory import Host, Inventory, Key, select_hosts
from topdeck.core.remote.hostpool import each_host
from topdeck.core.remote.hostverbs import sudo_argv
from topdeck.core.remote.ssh import Connect, Session, connect, remote_command
from topdeck.core.statedir import ensure_inventory_state, inventory_state

COMMAND_TIMEOUT = 60.0
UPLOAD_TIMEOUT = 60.0
MAX_KEY = 1024 * 1024  # a key larger than this is a mistake (a whole file named by error)

# Run by `sh -c` on the host (through sudo where the host asks), the key's content on stdin. Its arguments are the
# folder, the name, the owner, the group and the mode; the temporary file has owner and mode before the content is
# written, and the rename makes the key appear whole.
UPLOAD_SNIPPET = r"""
set -u
dir=$1 name=$2 user=$3 group=$4 mode=$5
fail() { printf '%s\n' "$*"; exit 1; }
id -u -- "$user" >/dev/null 2>&1 || fail "user $user does not exist on the host"
[ -d "$dir" ] || { (umask 022 && mkdir -p -- "$dir") || fail "cannot create $dir"; }
[ -d "$dir/$name" ] && fail "$dir/$name is a folder"
umask 077
tmp=$(mktemp "$dir/.topdeck-key.XXXXXX") || fail "cannot create a temporary file in $dir"
trap 'rm -f -- "$tmp"' EXIT
chown -- "$user" "$tmp" || fail "cannot give $dir/$name to user $user"
chgrp -- "$group" "$tmp" 2>/dev/null || fail "group $group does not exist on the host"
chmod -- "$mode" "$tmp" || fail "cannot set mode $mode"
cat > "$tmp" || fail "cannot write $dir/$name"
mv -f -- "$tmp" "$dir/$name" || fail "cannot rename the key into $dir/$name"
trap - EXIT
printf 'key\t%s\n' "$dir/$name"
"""


@dataclass(frozen=True)
class KeyContent:
    """A key with its content read; the content is never printed (repr leaves it out) nor saved."""

    key: Key
    content: bytes = field(repr=False)

    def digest(self, secret: bytes) -> str:
        """What the operator's side keeps to tell a changed key: an HMAC of where it goes, how, and its content."""
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        for part in (self.key.dest, self.key.user, self.key.group, self.key.permissions):
            mac.update(part.encode() + b"\0")
        mac.update(self.content)
        return mac.hexdigest()


@dataclass(frozen=True)
class KeyPlan:
    """What a plan says of one key of a host: where it goes, when, and whether it changed since the last upload."""

    name: str
    dest: str
    upload: str
    change: str  # "new", "changed" or "unchanged"


def read_key(key: Key, cwd: Path) -> KeyContent:
    """The key's content: its file, or its command's stdout (run in `cwd`); DeployError naming the key otherwise.
    A command's stderr is not shown: it may hold the secret."""
    if key.file is not None:
        try:
            content = key.file.read_bytes()
        except OSError as error:
            raise DeployError(f"{key.where}: cannot read {key.file}: {error.strerror}; nothing deployed") from None
    else:
        try:
            done = subprocess.run(key.command, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            why = f"timed out after {COMMAND_TIMEOUT:g} s" if isinstance(error, subprocess.TimeoutExpired) \
                else f"cannot run {key.command[0]}: {error.strerror}"
            raise DeployError(f"{key.where}: its command {why}; nothing deployed") from None
        if done.returncode != 0:
            raise DeployError(f"{key.where}: its command exited {done.returncode} (its output is not shown: it may "
                              "hold the secret); nothing deployed")
        content = done.stdout
    if len(content) > MAX_KEY:
        raise DeployError(f"{key.where}: {len(content)} bytes, over {MAX_KEY // 1024} KiB; nothing deployed")
    return KeyContent(key, content)


def read_keys(inventory: Inventory, hosts: Iterable[Host]) -> dict[str, tuple[KeyContent, ...]]:
    """Every key of every host, each key read once; the first that fails stops it all (one line)."""
    read: dict[Key, KeyContent] = {}
    found: dict[str, tuple[KeyContent, ...]] = {}
    for host in hosts:
        keys = inventory.keys_for(host)
        for key in keys:
            if key not in read:
                read[key] = read_key(key, inventory.root)
        found[host.name] = tuple(read[key] for key in keys)
    return found


def upload_command(host: Host, key: Key) -> str:
    return remote_command(*sudo_argv(host), "sh", "-c", UPLOAD_SNIPPET, "topdeck-key", key.dest_dir, key.name,
                          key.user, key.group, key.permissions)


def upload(session: Session, contents: Sequence[KeyContent]) -> None:
    """Write the keys on the session's host, one command each, the content on stdin; DeployError naming the first
    key that failed."""
    for item in contents:
        result = session.run(upload_command(session.host, item.key), stdin=item.content, timeout=UPLOAD_TIMEOUT)
        lines = result.stdout.decode(errors="replace").splitlines()
        if result.exit_status != 0 or not lines or not lines[-1].startswith("key\t"):
            why = lines[-1] if lines else f"the upload exited {result.exit_status}"
            raise DeployError(f"{session.host.name}: key {item.key.name} ({item.key.dest}): {why}")


# --- what the operator's side remembers ---------------------------------------------------------------


def _folder(root: Path) -> Path:
    return inventory_state(root) / "keys"


def _secret(root: Path) -> bytes:
    folder = ensure_inventory_state(root) / "keys"
    folder.mkdir(exist_ok=True, mode=0o700)
    path = folder / "hmac-secret"
    try:  # created once, whole (a second process at the same moment reads the first one's)
        fd = os.open(path.with_suffix(f".{os.getpid()}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        os.link(path.with_suffix(f".{os.getpid()}"), path)
    except FileExistsError:
        pass
    finally:
        path.with_suffix(f".{os.getpid()}").unlink(missing_ok=True)
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as error:
        raise DeployError(f"{path}: not a key digest secret ({error}); delete it to make a new one") from None


def _digests(root: Path, host: str) -> dict[str, str]:
    try:
        found = json.loads((_folder(root) / f"{host}.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(found, dict) else {}


def remember(root: Path, host: str, contents: Sequence[KeyContent]) -> None:
    """Keep the digests of the keys a host was given (after they were uploaded)."""
    secret = _secret(root)
    record = {**_digests(root, host), **{item.key.name: item.digest(secret) for item in contents}}
    path = _folder(root) / f"{host}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)


def grouped(plans: Mapping[str, Sequence[KeyPlan]]) -> tuple[tuple[tuple[str, ...], tuple[KeyPlan, ...]], ...]:
    """Hosts that would receive the same keys with the same changes, together (as the plan groups diffs); hosts
    without keys are left out."""
    groups: dict[tuple[KeyPlan, ...], list[str]] = {}
    for host, items in plans.items():
        if items:
            groups.setdefault(tuple(items), []).append(host)
    return tuple((tuple(hosts), items) for items, hosts in groups.items())


def plan_keys(root: Path, contents: Mapping[str, Sequence[KeyContent]]) -> dict[str, tuple[KeyPlan, ...]]:
    """Per host, each key it would receive and whether it changed since topdeck last uploaded it there."""
    secret = _secret(root) if any(contents.values()) else b""
    plans: dict[str, tuple[KeyPlan, ...]] = {}
    for host, items in contents.items():
        known = _digests(root, host)
        plans[host] = tuple(KeyPlan(item.key.name, item.key.dest, item.key.upload,
                                    "new" if item.key.name not in known else
                                    "unchanged" if hmac.compare_digest(known[item.key.name], item.digest(secret))
                                    else "changed")
                            for item in items)
    return plans


# --- `topdeck upload-keys` ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeysUploaded:
    """How `upload-keys` went on one host: the keys it was given, or why not."""

    host: str
    keys: tuple[str, ...] = ()
    error: str = ""


def upload_keys(inventory: Inventory, selectors: Iterable[str], *, connect: Connect = connect,
                emit: Emit = ignore, cancel: threading.Event | None = None) -> tuple[KeysUploaded, ...]:
    """Every key (pre- and post-activation alike) to the selected hosts, read before any host is touched."""
    hosts = select_hosts(inventory, list(selectors))
    contents = read_keys(inventory, hosts)
    if not any(contents.values()):
        raise InventoryError(f"{inventory.root}: no [[keys]] for {', '.join(h.name for h in hosts)}")

    def one(host: Host) -> KeysUploaded:
        chosen = contents[host.name]
        if chosen:
            with connect(host, inventory.ssh) as session:
                upload(session, chosen)
            remember(inventory.root, host.name, chosen)
        names = tuple(item.key.name for item in chosen)
        emit(LogLine(f"uploaded {', '.join(names)}" if names else "no keys", host.name))
        return KeysUploaded(host.name, names)

    results = each_host(hosts, one, parallel=inventory.deploy.parallel, cancel=cancel)
    return tuple(result if isinstance(result, KeysUploaded) else KeysUploaded(host.name, error=str(result))
                 for host, result in zip(hosts, results, strict=True))
