"""Pointers: `toplevels/<name>.txt` names the system a group of hosts should run.

The .txt holds the store path and a newline, so `curl` + `nix-store -r` read it as it is. Beside it a signed
sidecar `toplevels/<name>.json` carries the path, a serial that only grows, and the time, so hosts can
refuse a forged or older pointer. The serial and path are also in the .txt's B2 file info, so one listing
shows every pointer without downloads. History is the .txt's file versions; a rollback publishes an older
path as a new version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from topdeck.core.cache import NO_CACHING, Cache, Entry
from topdeck.core.errors import CacheMissing, PointerError, StorePathError
from topdeck.core.inventory import is_safe_name
from topdeck.core.signing import PublicKey, SecretKey, sign, ssh_signature, verify
from topdeck.core.store import StorePath, parse_store_path

DIRECTORY = "toplevels"
FINGERPRINT_PREFIX = "topdeck-pointer-1"
SSH_NAMESPACE = "topdeck-pointer"


@dataclass(frozen=True)
class Pointer:
    name: str
    path: StorePath
    serial: int
    time: int
    sig: str = ""
    sshsig: str = ""  # the same fingerprint as an SSH signature, which hosts check with `ssh-keygen -Y verify`


@dataclass(frozen=True)
class PointerVersion:
    path: str
    serial: int
    uploaded_ms: int


def check_name(name: str) -> str:
    if not is_safe_name(name):
        raise PointerError(f"pointer name {name!r}: letters, digits, '.', '_' or '-' only (no '/', no '..')")
    return name


def text_name(name: str) -> str:
    return f"{DIRECTORY}/{check_name(name)}.txt"


def sidecar_name(name: str) -> str:
    return f"{DIRECTORY}/{check_name(name)}.json"


def fingerprint(pointer: Pointer) -> str:
    return f"{FINGERPRINT_PREFIX};{pointer.name};{pointer.path};{pointer.serial};{pointer.time}"


def signed(pointer: Pointer, key: SecretKey) -> Pointer:
    text = fingerprint(pointer)
    return Pointer(pointer.name, pointer.path, pointer.serial, pointer.time, sign(key, text),
                   ssh_signature(key, text, SSH_NAMESPACE))


def render_sidecar(pointer: Pointer) -> bytes:
    """One field a line, always in this order: the host-side script reads it with sed."""
    fields = {"name": pointer.name, "path": str(pointer.path), "serial": pointer.serial, "time": pointer.time,
              "sig": pointer.sig, "sshsig": pointer.sshsig}
    return (json.dumps(fields, indent=1) + "\n").encode()


def parse_sidecar(data: bytes, source: str) -> Pointer:
    try:
        fields = json.loads(data)
        serial, stamp, sig, sshsig = fields["serial"], fields["time"], fields["sig"], fields.get("sshsig", "")
        if not (isinstance(serial, int) and isinstance(stamp, int) and isinstance(sig, str)
                and isinstance(sshsig, str)):
            raise TypeError("serial and time must be integers, sig and sshsig strings")
        return Pointer(check_name(fields["name"]), parse_store_path(fields["path"]), serial, stamp, sig, sshsig)
    except (ValueError, KeyError, TypeError, StorePathError) as error:
        raise PointerError(f"{source}: not a valid pointer sidecar ({error})") from None


def parse_text(data: bytes, source: str) -> StorePath:
    """The .txt: exactly one store path and a newline."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise PointerError(f"{source}: not text") from None
    if not text.endswith("\n") or text.count("\n") != 1:
        raise PointerError(f"{source}: must hold exactly one line")
    try:
        return parse_store_path(text[:-1])
    except StorePathError as error:
        raise PointerError(f"{source}: {error}") from None


def verify_pointer(pointer: Pointer, keys: Iterable[PublicKey], newer_than: int = 0) -> Pointer:
    if not verify(keys, fingerprint(pointer), pointer.sig):
        raise PointerError(f"pointer {pointer.name}: the sidecar's signature does not verify with the trusted key")
    if pointer.serial <= newer_than:
        raise PointerError(f"pointer {pointer.name}: serial {pointer.serial} is not newer than {newer_than} "
                           "(a replayed or older pointer)")
    return pointer


def current(listing: Mapping[str, Entry]) -> dict[str, PointerVersion]:
    """Every pointer in a cache listing, from the .txt files' info."""
    pointers = {}
    for name, entry in listing.items():
        if name.startswith(f"{DIRECTORY}/") and name.endswith(".txt"):
            pointers[name[len(DIRECTORY) + 1:-4]] = version_of(entry)
    return dict(sorted(pointers.items()))


def history(cache: Cache, name: str) -> list[PointerVersion]:
    """Every published version of a pointer, newest first."""
    return [version_of(entry) for entry in cache.versions(text_name(name))]


def publish(cache: Cache, name: str, path: StorePath, key: SecretKey, listing: Mapping[str, Entry],
            clock: Callable[[], float] = time.time) -> Pointer:
    """Publish `path` under `name` as a new version: the signed sidecar first, then the .txt."""
    before = current(listing).get(check_name(name))
    pointer = signed(Pointer(name, path, (before.serial if before else 0) + 1, int(clock())), key)
    cache.put_bytes(sidecar_name(name), render_sidecar(pointer), content_type="application/json",
                    cache_control=NO_CACHING)
    cache.put_bytes(text_name(name), f"{path}\n".encode(), content_type="text/plain", cache_control=NO_CACHING,
                    info={"topdeck-serial": str(pointer.serial), "topdeck-path": str(path)})
    return pointer


def rollback_target(versions: list[PointerVersion], to: str | None) -> StorePath:
    """The path to roll back to: the newest earlier path, or the version with serial `to`, or the path `to`."""
    if not versions:
        raise PointerError("the pointer has no versions to roll back to")
    if to is None:
        for version in versions[1:]:
            if version.path != versions[0].path:
                return parse_store_path(version.path)
        raise PointerError("the pointer has no earlier, different target")
    for version in versions:
        if to in (str(version.serial), version.path):
            return parse_store_path(version.path)
    raise PointerError(f"the pointer never had serial or path {to!r}")


def version_of(entry: Entry) -> PointerVersion:
    info = {key.lower(): value for key, value in entry.info.items()}
    serial = info.get("topdeck-serial", "0")
    return PointerVersion(path=info.get("topdeck-path", ""), serial=int(serial) if serial.isdigit() else 0,
                          uploaded_ms=entry.uploaded_ms)


def read_verified(cache: Cache, name: str, keys: Iterable[PublicKey]) -> Pointer:
    """The pointer as a host sees it: the .txt's one store path, vouched for by a sidecar that names the same
    path and is signed by a trusted key. PointerError (one line, naming the file) for anything else."""
    try:
        text = cache.get_bytes(text_name(name))
    except CacheMissing:
        raise PointerError(f"pointer {name}: {text_name(name)} is not in the cache") from None
    path = parse_text(text, text_name(name))
    try:
        sidecar = cache.get_bytes(sidecar_name(name))
    except CacheMissing:
        raise PointerError(f"pointer {name}: {sidecar_name(name)} is missing: an unsigned pointer, which hosts "
                           "refuse") from None
    pointer = parse_sidecar(sidecar, sidecar_name(name))
    if pointer.name != name:
        raise PointerError(f"pointer {name}: {sidecar_name(name)} is signed for pointer {pointer.name!r}")
    verify_pointer(pointer, keys)
    if pointer.path != path:
        raise PointerError(f"pointer {name}: {text_name(name)} names {path.name} but its signed sidecar names "
                           f"{pointer.path.name} (a publish in progress, or a forged .txt)")
    return pointer
