"""Ed25519 keys and narinfo signatures in Nix's formats (Nix 2.8 src/libutil/crypto.cc).

A secret key file holds `name:base64(seed + public key)`, a public key `name:base64(public key)`,
a signature `name:base64(signature)`; the name is everything before the first `:`. Errors never
show key material.
"""

import base64
import dataclasses
import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from topdeck.core.errors import SignatureError, SigningKeyError
from topdeck.core.nix import narinfo

_SEED_SIZE = 32
_PUBLIC_SIZE = 32
_SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class PublicKey:
    name: str
    raw: bytes

    def to_text(self) -> str:
        return f"{self.name}:{_b64(self.raw)}"


@dataclass(frozen=True)
class SecretKey:
    name: str
    seed: bytes = dataclasses.field(repr=False)

    def public_key(self) -> PublicKey:
        return PublicKey(self.name, _public_bytes(self.seed))

    def to_text(self) -> str:
        """The secret key file's content: the seed then the public key, as Nix writes it."""
        return f"{self.name}:{_b64(self.seed + _public_bytes(self.seed))}"


def generate_keypair(name: str) -> tuple[SecretKey, PublicKey]:
    """A new key pair. The name may not contain `:` or whitespace (nix.conf lists keys
    whitespace-separated)."""
    if not name or ":" in name or any(char.isspace() for char in name):
        raise SigningKeyError(f"invalid key name {name[:80]!r}: it must be non-empty, without ':' or spaces")
    secret = SecretKey(name, Ed25519PrivateKey.generate().private_bytes_raw())
    return secret, secret.public_key()


def parse_secret_key(text: str, source: str = "secret key") -> SecretKey:
    name, raw = _split_key(text, _SEED_SIZE + _PUBLIC_SIZE, source)
    seed, public = raw[:_SEED_SIZE], raw[_SEED_SIZE:]
    if _public_bytes(seed) != public:
        raise SigningKeyError(f"{source} is corrupt: its public half does not belong to its secret half")
    return SecretKey(name, seed)


def parse_public_key(text: str, source: str = "public key") -> PublicKey:
    return PublicKey(*_split_key(text, _PUBLIC_SIZE, source))


def load_secret_key(path: Path) -> SecretKey:
    return parse_secret_key(_read_key_file(path, "secret"), f"secret key file '{path}'")


def load_public_key(path: Path) -> PublicKey:
    return parse_public_key(_read_key_file(path, "public"), f"public key file '{path}'")


def write_secret_key(path: Path, key: SecretKey) -> None:
    """Write a secret key file readable by its owner only."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="ascii") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(key.to_text())
    except OSError as error:
        raise SigningKeyError(f"cannot write secret key file '{path}': {error.strerror}") from None


def sign(secret_key: SecretKey, fingerprint: str) -> str:
    """`name:base64(signature)`. Ed25519 is deterministic: the same key and text give Nix's result."""
    signature = Ed25519PrivateKey.from_private_bytes(secret_key.seed).sign(fingerprint.encode())
    return f"{secret_key.name}:{_b64(signature)}"


def verify(public_keys: Iterable[PublicKey], fingerprint: str, sig: str) -> bool:
    """Whether `sig` is a valid signature of `fingerprint` by a key of the signature's name.
    A malformed signature or one by an unknown name is not valid."""
    name, _, encoded = sig.partition(":")
    signature = _b64decode(encoded)
    if not name or signature is None or len(signature) != _SIGNATURE_SIZE:
        return False
    return any(_verifies(key, signature, fingerprint) for key in public_keys if key.name == name)


def sign_narinfo(info: narinfo.Narinfo, secret_key: SecretKey) -> narinfo.Narinfo:
    """`info` signed by `secret_key`, replacing any older signature of the same key name."""
    others = [sig for sig in info.sigs if sig.partition(":")[0] != secret_key.name]
    return dataclasses.replace(info, sigs=(*others, sign(secret_key, narinfo.fingerprint(info))))


def verify_narinfo(info: narinfo.Narinfo, public_keys: Iterable[PublicKey]) -> bool:
    """Whether at least one signature is valid, which is what Nix requires to substitute a path."""
    keys = list(public_keys)
    text = narinfo.fingerprint(info)
    return any(verify(keys, text, sig) for sig in info.sigs)


def require_signature(info: narinfo.Narinfo, public_keys: Iterable[PublicKey]) -> None:
    """Raise SignatureError unless `info` carries a valid signature by one of `public_keys`."""
    keys = list(public_keys)
    if not verify_narinfo(info, keys):
        trusted = ", ".join(sorted({key.name for key in keys})) or "no trusted key"
        signers = ", ".join(sorted({sig.partition(":")[0] for sig in info.sigs})) or "none"
        raise SignatureError(
            f"{info.store_path} has no valid signature by {trusted} (signatures by: {signers})"
        )


def _split_key(text: str, size: int, source: str) -> tuple[str, bytes]:
    name, _, encoded = text.removesuffix("\n").partition(":")
    raw = _b64decode(encoded)
    if not name or raw is None or len(raw) != size:
        raise SigningKeyError(f"{source} is not in Nix's format 'name:base64 of {size} bytes'")
    return name, raw


def _read_key_file(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except OSError as error:
        raise SigningKeyError(f"cannot read {kind} key file '{path}': {error.strerror}") from None
    except UnicodeDecodeError:
        raise SigningKeyError(f"{kind} key file '{path}' is not text in Nix's key format") from None


def _verifies(key: PublicKey, signature: bytes, fingerprint: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key.raw).verify(signature, fingerprint.encode())
    except InvalidSignature:
        return False
    return True


def _public_bytes(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


# --- SSH signatures (OpenSSH PROTOCOL.sshsig): what a host checks with `ssh-keygen -Y verify` ------------

_SSHSIG_MAGIC = b"SSHSIG"
_SSH_ED25519 = b"ssh-ed25519"


def ssh_public_key(key: PublicKey) -> str:
    """The key as an OpenSSH public key line: `ssh-ed25519 AAAA...`."""
    return f"ssh-ed25519 {_b64(_ssh_string(_SSH_ED25519) + _ssh_string(key.raw))}"


def ssh_signature(secret_key: SecretKey, message: str, namespace: str) -> str:
    """An SSHSIG signature of `message`, as the base64 blob between the armour lines `ssh-keygen -Y sign`
    writes (sha512 of the message, signed with Ed25519)."""
    signed = (_SSHSIG_MAGIC + _ssh_string(namespace.encode()) + _ssh_string(b"") + _ssh_string(b"sha512")
              + _ssh_string(hashlib.sha512(message.encode()).digest()))
    signature = Ed25519PrivateKey.from_private_bytes(secret_key.seed).sign(signed)
    public = _ssh_string(_SSH_ED25519) + _ssh_string(_public_bytes(secret_key.seed))
    blob = (_SSHSIG_MAGIC + struct.pack(">I", 1) + _ssh_string(public) + _ssh_string(namespace.encode())
            + _ssh_string(b"") + _ssh_string(b"sha512")
            + _ssh_string(_ssh_string(_SSH_ED25519) + _ssh_string(signature)))
    return _b64(blob)


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data
