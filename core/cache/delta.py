"""The delta object: when a pointer moves from one system to another, what the new closure adds to the previous
one's (each added path's signed narinfo and its NAR) in one file, so that a host on the previous system fetches a
small change with one request (core/remote/host.sh `delta_fetch`).

The container is a plain (ustar) tar, which every host can unpack with `tar`: `<hash>.narinfo` and `nar/<name>`
members only, regular files, in the layout of a binary cache folder. The file itself is trusted for nothing: the
pointer's signed sidecar names it (its source system, sha256 and size under a signature of their own, bound to the
pointer's name, path and serial), the host checks its sha256 before unpacking, and Nix then substitutes from the
folder with signatures required and only the cache's key trusted, checking every NAR's hash. Whatever fails, the
host fetches path by path instead.

Who takes it: a host whose /run/current-system is the delta's source. That is what the plan's probe reads and
diffs against, and it is a GC root on NixOS, so its whole closure is surely in the host's store; the system profile
can differ from it (after a `boot` or a `test`), and such a host fetches path by path, which is never wrong.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from topdeck.core.errors import CacheError, StorePathError
from topdeck.core.nix.store import StorePath, parse_store_path

FOLDER = "deltas/"
FINGERPRINT = "topdeck-delta-1"
DEFAULT_MAX_MIB = 64
MAX_MIB = 4096  # the largest limit a setting may give (B2 takes up to 5 GB in one upload)
_NARINFO_MEMBER = re.compile(r"[0-9a-df-np-sv-z]{32}\.narinfo", re.ASCII)
_NAR_MEMBER = re.compile(r"nar/[0-9a-z:]+\.nar(\.[a-z0-9]+)?", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class Delta:
    """A delta object as the pointer names it: from `source` to `target`, its sha256 (hex) and size."""

    source: StorePath
    target: StorePath
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return object_name(self.source, self.target)

    @property
    def field(self) -> str:
        """How the sidecar and the file info carry it (the host reads it with sed): source, sha256, size."""
        return f"{self.source} {self.sha256} {self.size}"


def object_name(source: StorePath, target: StorePath) -> str:
    return f"{FOLDER}{source.hash_part}-{target.hash_part}.tar"


def parse_field(text: str, target: StorePath) -> Delta:
    """The delta a pointer to `target` names; CacheError for anything else."""
    parts = text.split(" ")
    try:
        if len(parts) != 3 or not _SHA256.fullmatch(parts[1]) or not parts[2].isdigit() or len(parts[2]) > 15:
            raise ValueError("not 'SOURCE SHA256 SIZE'")
        return Delta(parse_store_path(parts[0]), target, parts[1], int(parts[2]))
    except (ValueError, StorePathError) as error:
        raise CacheError(f"the pointer's delta {text[:120]!r}: {error}") from None


def fingerprint(name: str, path: StorePath, serial: int, delta: Delta) -> str:
    """What the delta's signature covers: the pointer version it belongs to (so it cannot be moved to another) and
    the delta's own fields."""
    return f"{FINGERPRINT};{name};{path};{serial};{delta.source};{delta.sha256};{delta.size}"


def takes_delta(current: StorePath | None, target: StorePath, delta: Delta | None) -> bool:
    """Whether a host running `current` fetches the delta for `target` (core/remote/host.sh `delta_fetch` asks the
    same)."""
    return delta is not None and current is not None and delta.target == target and delta.source == current \
        and current != target


def max_bytes(mib: int) -> int:
    return mib * 1024 * 1024


# --- the container --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One path of the delta: its signed narinfo (text) and its compressed NAR, named as the narinfo's URL."""

    narinfo_name: str
    narinfo: bytes
    nar_name: str
    nar: bytes


def pack(members: Iterable[Member]) -> bytes:
    """The tar (deterministic: no times, owners or modes but 0644), narinfos first, ending with its two zero
    blocks."""
    members = list(members)
    files = [(m.narinfo_name, m.narinfo) for m in members] + [(m.nar_name, m.nar) for m in members]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            check_member_name(name)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
        end = tar.offset + 2 * tarfile.BLOCKSIZE
    return out.getvalue()[:end]  # without the padding to a 10 KiB record, which tar does not need


def unpack(data: bytes, source: str = "the delta") -> dict[str, bytes]:
    """The files of a delta by name; CacheError (one line) for anything that is not a delta."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    raise CacheError(f"{source}: {info.name!r} is not a regular file")
                check_member_name(info.name, source)
                if info.name in files:
                    raise CacheError(f"{source}: {info.name!r} is in it twice")
                extracted = tar.extractfile(info)
                files[info.name] = extracted.read() if extracted else b""
    except tarfile.TarError as error:
        raise CacheError(f"{source}: not a tar file ({error})") from None
    return files


def check_member_name(name: str, source: str = "the delta") -> str:
    if not (_NARINFO_MEMBER.fullmatch(name) or _NAR_MEMBER.fullmatch(name)):
        raise CacheError(f"{source}: {name[:120]!r} is neither a narinfo nor a NAR of a binary cache folder")
    return name


def describe(source: StorePath, target: StorePath, data: bytes) -> Delta:
    return Delta(source, target, hashlib.sha256(data).hexdigest(), len(data))


def build(source: StorePath, target: StorePath, members: Iterable[Callable[[], Member]], limit: int) -> bytes | None:
    """The delta of the members (each made when asked, in order), or None as soon as it would pass `limit`
    bytes (a tar's headers counted)."""
    made: list[Member] = []
    total = 0
    for make in members:
        member = make()
        total += len(member.narinfo) + len(member.nar) + 2 * 1024  # two headers, padding at most
        if total > limit:
            return None
        made.append(member)
    data = pack(made)
    return data if len(data) <= limit else None
