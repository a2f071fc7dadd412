"""Pointers: `toplevels/<name>.txt` names the system a group of hosts should run.

The .txt holds the store path and a newline, so `curl` + `nix-store -r` read it as it is. Beside it a signed
sidecar `toplevels/<name>.json` carries the path, a serial that only grows, when it was signed and until when it is
valid, so hosts can refuse a forged, older or stale pointer. The same signed fields and the Nix-format signature are
also in the .txt's B2 file info, so one listing shows every pointer without downloads: file info is anyone's to
write, so it becomes a `PointerVersion` with a path only once its signature verifies with the trusted key. History is
the .txt's file versions; a rollback publishes an older verified path as a new version.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from topdeck.core import strict
from topdeck.core.cache import delta as delta_module
from topdeck.core.cache.delta import Delta
from topdeck.core.cache.interface import NO_CACHING, Cache, Entry
from topdeck.core.errors import CacheError, CacheMissing, PointerError, PointerRace, StorePathError
from topdeck.core.inventory import is_safe_name
from topdeck.core.nix.signing import PublicKey, SecretKey, sign, ssh_signature, verify
from topdeck.core.nix.store import StorePath, parse_store_path

DIRECTORY = "toplevels"
FINGERPRINT_V1 = "topdeck-pointer-1"  # name;path;serial;time: sidecars signed before pointers could expire
FINGERPRINT_V2 = "topdeck-pointer-2"  # name;path;serial;time;expires
SSH_NAMESPACE = "topdeck-pointer"
INFO_PATH, INFO_SERIAL, INFO_TIME, INFO_EXPIRES, INFO_SIG = (
    "topdeck-path", "topdeck-serial", "topdeck-time", "topdeck-expires", "topdeck-sig")
INFO_DELTA, INFO_DELTA_SIG = "topdeck-delta", "topdeck-delta-sig"
OLDER_TOPDECK = "unverified: published without a signature in its file info (older topdeck)"
FORGED_INFO = ("unverified: its file info's signature does not verify with the trusted key (written by someone "
               "without the signing key, or copied from another pointer)")


@dataclass(frozen=True)
class Pointer:
    name: str
    path: StorePath
    serial: int
    time: int
    sig: str = ""
    sshsig: str = ""  # the same fingerprint as an SSH signature, which hosts check with `ssh-keygen -Y verify`
    expires: int | None = 0  # when it stops being valid, 0 never; None: a v1 sidecar, signed before expiry existed
    # the delta object from the previous target (core/cache/delta.py), signed on its own (delta_module.fingerprint) so
    # that hosts that know nothing of deltas still verify the pointer as before
    delta: Delta | None = None
    delta_sig: str = ""
    delta_sshsig: str = ""


@dataclass(frozen=True)
class PointerVersion:
    """One published version, from the .txt's file info: its path, serial and times only when the info's signature
    verifies with the trusted key; else `problem` says why (one line) and path, serial and times are empty."""

    path: str
    serial: int
    uploaded_ms: int
    time: int = 0  # when it was signed (seconds since the epoch)
    expires: int = 0  # when it stops being valid, 0 never
    problem: str = ""
    delta: Delta | None = None  # only when its own signature verifies too

    @property
    def verified(self) -> bool:
        return not self.problem


def is_expired(expires: int | None, now: float) -> bool:
    return expires is not None and expires > 0 and now >= expires


def utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expired_reason(name: str, signed_at: int, expires: int) -> str:
    """The line hosts print for an expired pointer (core/remote/host.sh says the same)."""
    return f"pointer {name}: expired at {utc(expires)} (signed {utc(signed_at)}); publish it again"


def check_name(name: str) -> str:
    if not is_safe_name(name):
        raise PointerError(f"pointer name {name!r}: letters, digits, '.', '_' or '-' only (no '/', no '..')")
    return name


def text_name(name: str) -> str:
    return f"{DIRECTORY}/{check_name(name)}.txt"


def sidecar_name(name: str) -> str:
    return f"{DIRECTORY}/{check_name(name)}.json"


def fingerprint(pointer: Pointer) -> str:
    signed_fields = f"{pointer.name};{pointer.path};{pointer.serial};{pointer.time}"
    if pointer.expires is None:
        return f"{FINGERPRINT_V1};{signed_fields}"
    return f"{FINGERPRINT_V2};{signed_fields};{pointer.expires}"


def signed(pointer: Pointer, key: SecretKey) -> Pointer:
    text = fingerprint(pointer)
    pointer = dataclasses.replace(pointer, sig=sign(key, text), sshsig=ssh_signature(key, text, SSH_NAMESPACE))
    if pointer.delta is None:
        return pointer
    text = delta_fingerprint(pointer)
    return dataclasses.replace(pointer, delta_sig=sign(key, text),
                               delta_sshsig=ssh_signature(key, text, SSH_NAMESPACE))


def delta_fingerprint(pointer: Pointer) -> str:
    assert pointer.delta is not None
    return delta_module.fingerprint(pointer.name, pointer.path, pointer.serial, pointer.delta)


def verified_delta(pointer: Pointer, keys: Iterable[PublicKey]) -> Delta | None:
    """The pointer's delta when its signature verifies (else None: the hosts fetch path by path)."""
    if pointer.delta is None or not verify(keys, delta_fingerprint(pointer), pointer.delta_sig):
        return None
    return pointer.delta


def render_sidecar(pointer: Pointer) -> bytes:
    """One field a line, always in this order (host.sh reads it with its JSON reader, json_read)."""
    fields: dict[str, Any] = {"name": pointer.name, "path": str(pointer.path), "serial": pointer.serial,
                              "time": pointer.time}
    if pointer.expires is not None:
        fields["expires"] = pointer.expires
    fields.update(sig=pointer.sig, sshsig=pointer.sshsig)
    if pointer.delta is not None:
        fields.update(delta=pointer.delta.field, delta_sig=pointer.delta_sig, delta_sshsig=pointer.delta_sshsig)
    return (json.dumps(fields, indent=1) + "\n").encode()


def _bounded(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= strict.MAX_SERIAL:
        raise TypeError(f"{what} must be an integer from 0 to 2^53")
    return value


def parse_sidecar(data: bytes, source: str) -> Pointer:
    try:
        fields = strict.loads(data)
        if not isinstance(fields, dict):
            raise TypeError("not a JSON object")
        sig, sshsig = fields["sig"], fields.get("sshsig", "")
        if not (isinstance(sig, str) and isinstance(sshsig, str)):
            raise TypeError("sig and sshsig must be strings")
        expires = _bounded(fields["expires"], "expires") if "expires" in fields else None
        path = parse_store_path(fields["path"])
        delta, delta_sig, delta_sshsig = _sidecar_delta(fields, path)
        return Pointer(check_name(fields["name"]), path, _bounded(fields["serial"], "serial"),
                       _bounded(fields["time"], "time"), sig, sshsig, expires, delta, delta_sig, delta_sshsig)
    except (ValueError, KeyError, TypeError, StorePathError, PointerError, CacheError) as error:
        raise PointerError(f"{source}: not a valid pointer sidecar ({error})") from None


def _sidecar_delta(fields: Mapping[str, Any], path: StorePath) -> tuple[Delta | None, str, str]:
    if "delta" not in fields:
        return None, "", ""
    values = [fields["delta"], fields.get("delta_sig", ""), fields.get("delta_sshsig", "")]
    if not all(isinstance(value, str) for value in values):
        raise TypeError("delta, delta_sig and delta_sshsig must be strings")
    return delta_module.parse_field(values[0], path), values[1], values[2]


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


# --- file info: signed fields beside the .txt, verified before anything reads them ------------------------------


def info_of(pointer: Pointer) -> dict[str, str]:
    """The .txt's file info: the signed fields and the Nix-format signature (B2 allows 10 keys of small values;
    the longer SSH signature stays in the sidecar)."""
    info = {INFO_PATH: str(pointer.path), INFO_SERIAL: str(pointer.serial), INFO_TIME: str(pointer.time),
            INFO_EXPIRES: str(pointer.expires or 0), INFO_SIG: pointer.sig}
    if pointer.delta is not None:
        info.update({INFO_DELTA: pointer.delta.field, INFO_DELTA_SIG: pointer.delta_sig})
    return info


def _from_info(name: str, info: Mapping[str, str]) -> Pointer:
    if INFO_SIG not in info:
        raise PointerError(OLDER_TOPDECK)
    numbers = {}
    for key in (INFO_SERIAL, INFO_TIME) + ((INFO_EXPIRES,) if INFO_EXPIRES in info else ()):
        numbers[key] = strict.parse_uint(info.get(key, ""), strict.MAX_SERIAL)
        if numbers[key] is None:
            raise PointerError(f"unverified: its file info's {key} is not a number from 0 to 2^53")
    try:
        path = parse_store_path(info.get(INFO_PATH, ""))
    except StorePathError:
        raise PointerError("unverified: its file info's path is not a store path") from None
    delta = None
    if INFO_DELTA in info:
        try:
            delta = delta_module.parse_field(info[INFO_DELTA], path)
        except CacheError:
            delta = None  # an unreadable delta is no delta: the hosts fetch path by path
    return Pointer(name, path, numbers[INFO_SERIAL] or 0, numbers[INFO_TIME] or 0, info[INFO_SIG],
                   expires=numbers.get(INFO_EXPIRES), delta=delta, delta_sig=info.get(INFO_DELTA_SIG, ""))


def version_of(entry: Entry, name: str, keys: Iterable[PublicKey]) -> PointerVersion:
    """One version of pointer `name`: verified, or carried with its problem (never with an unverified path)."""
    keys = list(keys)
    info = {key.lower(): value for key, value in entry.info.items()}
    try:
        pointer = _from_info(name, info)
    except PointerError as error:
        return PointerVersion("", 0, entry.uploaded_ms, problem=str(error))
    if not verify(keys, fingerprint(pointer), pointer.sig):
        return PointerVersion("", 0, entry.uploaded_ms, problem=FORGED_INFO)
    return PointerVersion(str(pointer.path), pointer.serial, entry.uploaded_ms, pointer.time, pointer.expires or 0,
                          delta=verified_delta(pointer, keys))


def pointer_name(file_name: str) -> str | None:
    """`web` for `toplevels/web.txt`; None for any other file."""
    prefix = f"{DIRECTORY}/"
    if file_name.startswith(prefix) and file_name.endswith(".txt"):
        return file_name[len(prefix):-4]
    return None


def current(listing: Mapping[str, Entry], keys: Iterable[PublicKey]) -> dict[str, PointerVersion]:
    """Every pointer in a cache listing, from the .txt files' info, each verified with `keys` or carried with its
    problem."""
    keys = list(keys)
    pointers = {}
    for file_name, entry in listing.items():
        name = pointer_name(file_name)
        if name is not None:
            pointers[name] = version_of(entry, name, keys)
    return dict(sorted(pointers.items()))


def hinted_paths(listing: Mapping[str, Entry]) -> dict[str, str]:
    """What each .txt's file info names, unverified: only a hint of which manifests are worth reading (a push's
    presence check), never a target."""
    return {name: {key.lower(): value for key, value in entry.info.items()}.get(INFO_PATH, "")
            for file_name, entry in listing.items() if (name := pointer_name(file_name)) is not None}


def history(cache: Cache, name: str, keys: Iterable[PublicKey]) -> list[PointerVersion]:
    """Every published version of a pointer, newest first, each verified or carried with its problem."""
    keys = list(keys)
    return [version_of(entry, name, keys) for entry in cache.versions(text_name(name))]


def newest(versions: Iterable[PointerVersion]) -> PointerVersion | None:
    """The verified version with the highest serial: what the signer published last."""
    return max((v for v in versions if v.verified), key=lambda v: (v.serial, v.uploaded_ms), default=None)


def next_serial(versions: Iterable[PointerVersion]) -> int:
    """1 + the highest verified serial (unverified info cannot raise or lower it)."""
    last = newest(versions)
    serial = (last.serial if last else 0) + 1
    if serial > strict.MAX_SERIAL:
        raise PointerError(f"serial {serial} is above 2^53: hosts would refuse it")
    return serial


RACE_TRIES = 12  # publishes that meet another operator's at the same serial step back this often, then stop
RACE_PAUSE = 0.25  # seconds, times a random factor and the try's number, before the next serial is tried


def publish(cache: Cache, name: str, path: StorePath, key: SecretKey, *, clock: Callable[[], float] = time.time,
            valid_for: int = 0, pause: Callable[[float], None] = time.sleep, delta: Delta | None = None) -> Pointer:
    """Publish `path` under `name` as a new version, its serial one above the highest verified one in the pointer's
    history, valid for `valid_for` seconds (0: no end), naming `delta` (already stored) when given: the signed
    sidecar first, then the .txt.

    B2 has no conditional write, so the sidecar's versions are the claim of a serial: after uploading its sidecar a
    publish reads the sidecar's versions back, and writes the .txt (the history) only when no other system claimed
    this serial or a higher one meanwhile; else it steps back and claims the next free serial after a random pause.
    Two publishes that both wrote the .txt would each have listed before the other's claim was stored, which cannot
    happen in a consistent listing: so no serial in the history names two systems (docs/DEPLOY.md). A claim given up
    (its .txt never written) stays in the sidecar's versions, where the next publish that meets it steps above it.
    Two listings (class C): the history's, and the claims' after the upload."""
    keys = [key.public_key()]
    floor, rival = 0, None
    for attempt in range(1, RACE_TRIES + 1):
        serial = max(floor, next_serial(history(cache, check_name(name), keys)))
        now = int(clock())
        pointer = signed(Pointer(name, path, serial, now, expires=now + valid_for if valid_for else 0, delta=delta),
                         key)
        cache.put_bytes(sidecar_name(name), render_sidecar(pointer), content_type="application/json",
                        cache_control=NO_CACHING, info=info_of(pointer))
        rival = claimed_meanwhile(sidecar_history(cache, name, keys), pointer)
        if rival is None:
            cache.put_bytes(text_name(name), f"{path}\n".encode(), content_type="text/plain",
                            cache_control=NO_CACHING, info=info_of(pointer))
            return pointer
        floor = rival.serial + 1
        if attempt < RACE_TRIES:
            pause(RACE_PAUSE * attempt * random.random())
    taken = f"serial {rival.serial} for {rival.path}" if rival else "its serial"
    raise PointerRace(f"pointer {name}: another publish took {taken} while this one tried to publish {path} "
                      f"({RACE_TRIES} tries): nothing published; publish again")


def sidecar_history(cache: Cache, name: str, keys: Iterable[PublicKey]) -> list[PointerVersion]:
    """The sidecar's versions, verified as the .txt's are: each a claim of a serial, published or abandoned."""
    keys = list(keys)
    return [version_of(entry, name, keys) for entry in cache.versions(sidecar_name(name))]


def claimed_meanwhile(claims: Iterable[PointerVersion], mine: Pointer) -> PointerVersion | None:
    """A verified claim of `mine`'s serial or a higher one for another system (the highest), if any."""
    others = [claim for claim in claims if claim.verified and claim.serial >= mine.serial
              and claim.path != str(mine.path)]
    return max(others, key=lambda claim: claim.serial, default=None)


def rollback_target(versions: list[PointerVersion], to: str | None) -> StorePath:
    """The path to roll back to, among verified versions only: the newest earlier path than the newest verified
    one, or the version with serial `to`, or the path `to`."""
    trusted = [v for v in versions if v.verified]
    if not trusted:
        reason = versions[0].problem if versions else "it has no versions"
        raise PointerError(f"the pointer has no verified version to roll back to ({reason})")
    if to is None:
        now = newest(trusted)
        for version in trusted:
            if now is not None and version.path != now.path and version.serial < now.serial:
                return parse_store_path(version.path)
        raise PointerError("the pointer has no earlier, different verified target")
    for version in trusted:
        if to in (str(version.serial), version.path):
            return parse_store_path(version.path)
    raise PointerError(f"the pointer never had a verified version with serial or path {to!r}")


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
