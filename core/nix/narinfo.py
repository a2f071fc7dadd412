"""Narinfo files and the hashes in them, as Nix 2.8 reads and writes them (src/libstore/nar-info.cc,
src/libstore/path-info.cc `fingerprint`, src/libutil/hash.cc)."""

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from topdeck.core import strict
from topdeck.core.errors import NarinfoError, StorePathError
from topdeck.core.nix import nixbase32
from topdeck.core.nix.store import STORE_DIR, StorePath, parse_store_path

SHA256_SIZE = 32

_FIELDS = frozenset(
    "StorePath URL Compression FileHash FileSize NarHash NarSize References Deriver System CA".split()
)
_NIX32_LENGTH = nixbase32.encoded_length(SHA256_SIZE)
_BASE64_LENGTH = 44
_BASE16 = re.compile(r"[0-9a-fA-F]{64}")
_UNKNOWN_DERIVER = "unknown-deriver"

_Value = TypeVar("_Value")


@dataclass(frozen=True, kw_only=True)
class Narinfo:
    """One narinfo. Hashes are raw sha256 digests. References and signatures are sets in Nix: they
    are kept sorted and without duplicates, so equal narinfos compare equal."""

    store_path: StorePath
    url: str
    nar_hash: bytes
    nar_size: int
    compression: str = "bzip2"
    file_hash: bytes | None = None
    file_size: int = 0
    references: tuple[StorePath, ...] = ()
    deriver: StorePath | None = None
    system: str | None = None
    sigs: tuple[str, ...] = ()
    ca: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(sorted(set(self.references))))
        object.__setattr__(self, "sigs", tuple(sorted(set(self.sigs))))


def parse_hash(text: str) -> bytes:
    """A sha256 digest from any form Nix accepts (Hash::parseAnyPrefixed): `sha256:` followed by
    nix-base32, base16 or base64, or SRI `sha256-<base64>`."""
    prefix, body = text[:7], text[7:]
    if prefix != "sha256:" and (prefix != "sha256-" or len(body) != _BASE64_LENGTH):
        raise NarinfoError(f"{text[:80]!r} is not a sha256 hash ('sha256:...' or 'sha256-<base64>')")
    try:
        return _decode_sha256(body)
    except ValueError as error:
        raise NarinfoError(f"{text[:80]!r} is not a sha256 hash: {error}") from None


def hash_to_nix32(digest: bytes) -> str:
    """`sha256:<nix-base32>`, the form in narinfos and fingerprints."""
    return "sha256:" + nixbase32.encode(_checked(digest))


def hash_to_sri(digest: bytes) -> str:
    """`sha256-<base64>`, the form `nix path-info --json` prints."""
    return "sha256-" + base64.b64encode(_checked(digest)).decode()


def sri_to_nix32(text: str) -> str:
    return hash_to_nix32(parse_hash(text))


def parse_narinfo(text: str, source: str = "narinfo") -> Narinfo:
    """Read a narinfo as strictly as Nix does, and stricter on form: every line is `Key: value` and
    ends with a newline, known keys appear once (Sig may repeat), unknown keys are ignored as Nix
    ignores them. `source` names the narinfo in errors."""
    fields, sigs = _fields(text, source)
    info = _read_fields(fields, sigs, source)
    if not info.url:
        raise NarinfoError(f"{source}: URL is empty")
    if info.nar_size == 0:
        raise NarinfoError(f"{source}: NarSize missing or zero")
    return info


def render_narinfo(info: Narinfo) -> str:
    """The text Nix writes (NarInfo::to_string), line for line. Nix requires a FileHash; without
    one the line is left out."""
    lines = [f"StorePath: {info.store_path}", f"URL: {info.url}", f"Compression: {info.compression}"]
    if info.file_hash is not None:
        lines.append(f"FileHash: {hash_to_nix32(info.file_hash)}")
    lines += [
        f"FileSize: {info.file_size}",
        f"NarHash: {hash_to_nix32(info.nar_hash)}",
        f"NarSize: {info.nar_size}",
        "References: " + " ".join(reference.basename for reference in info.references),
    ]
    if info.deriver is not None:
        lines.append(f"Deriver: {info.deriver.basename}")
    if info.system:
        lines.append(f"System: {info.system}")
    lines += [f"Sig: {sig}" for sig in info.sigs]
    if info.ca:
        lines.append(f"CA: {info.ca}")
    return "\n".join(lines) + "\n"


def fingerprint(info: Narinfo) -> str:
    """What a narinfo signature signs: `1;<path>;<sha256:nix32 NarHash>;<NarSize>;<references>`."""
    references = ",".join(reference.path for reference in info.references)
    return f"1;{info.store_path};{hash_to_nix32(info.nar_hash)};{info.nar_size};{references}"


def _fields(text: str, source: str) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Known fields as key -> (line number, value), and the Sig values."""
    lines = text.split("\n")
    if lines.pop() != "":
        raise NarinfoError(f"{source}: line {len(lines) + 1}: no newline at the end")
    fields: dict[str, tuple[int, str]] = {}
    sigs: list[str] = []
    for number, line in enumerate(lines, 1):
        key, colon, rest = line.partition(":")
        if not colon or not rest.startswith(" "):
            raise NarinfoError(f"{source}: line {number}: expected 'Key: value', got {line[:80]!r}")
        if key == "Sig":
            sigs.append(rest[1:])
        elif key in _FIELDS:
            if key in fields:
                raise NarinfoError(f"{source}: line {number}: {key} repeated")
            fields[key] = (number, rest[1:])
    return fields, sigs


def _read_fields(fields: dict[str, tuple[int, str]], sigs: list[str], source: str) -> Narinfo:
    def read(key: str, convert: Callable[[str], _Value]) -> _Value | None:
        if key not in fields:
            return None
        number, value = fields[key]
        try:
            return convert(value)
        except (NarinfoError, StorePathError) as error:
            raise NarinfoError(f"{source}: line {number}: {key}: {error}") from None

    def need(key: str, convert: Callable[[str], _Value]) -> _Value:
        value = read(key, convert)
        if value is None:
            raise NarinfoError(f"{source}: {key} missing")
        return value

    return Narinfo(
        store_path=need("StorePath", parse_store_path),
        nar_hash=need("NarHash", parse_hash),
        url=need("URL", str),
        nar_size=read("NarSize", _size) or 0,
        compression=read("Compression", str) or "bzip2",
        file_hash=read("FileHash", parse_hash),
        file_size=read("FileSize", _size) or 0,
        references=read("References", _references) or (),
        deriver=read("Deriver", _deriver),
        system=read("System", str) or None,
        sigs=tuple(sigs),
        ca=read("CA", str) or None,
    )


def _decode_sha256(body: str) -> bytes:
    if len(body) == _NIX32_LENGTH:
        return nixbase32.decode(body)
    if _BASE16.fullmatch(body):
        return bytes.fromhex(body)
    try:
        digest = base64.b64decode(body, validate=True)
    except ValueError:
        raise ValueError("not nix-base32, base16 or base64") from None
    if len(digest) != SHA256_SIZE:
        raise ValueError(f"{len(digest)} bytes, expected {SHA256_SIZE}")
    return digest


def _checked(digest: bytes) -> bytes:
    if len(digest) != SHA256_SIZE:
        raise NarinfoError(f"a sha256 digest has {SHA256_SIZE} bytes, not {len(digest)}")
    return digest


def _size(value: str) -> int:
    size = strict.parse_uint(value)
    if size is None:
        raise NarinfoError(f"{value[:40]!r} is not a size in bytes")
    return size


def _references(value: str) -> tuple[StorePath, ...]:
    return tuple(_basename(basename) for basename in value.split(" ") if basename)


def _deriver(value: str) -> StorePath | None:
    return None if value == _UNKNOWN_DERIVER else _basename(value)


def _basename(value: str) -> StorePath:
    return parse_store_path(f"{STORE_DIR}/{value}")
