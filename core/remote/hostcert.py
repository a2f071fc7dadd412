"""Host certificates as OpenSSH checks them (sshconnect.c check_host_cert, sshkey_cert_check_authority).

A server may present its host key inside a certificate signed by a CA. known_hosts trusts the CA with a
`@cert-authority PATTERNS KEY` line; the certificate is then accepted for a name when: a CA line's patterns match
the name (wildcards, `!` negation, hashed names), the certificate is a host certificate, the CA's signature is
valid, the name is one of its principals (a certificate without principals is valid for any name), the time is
inside its validity window, it has no critical option, and neither its key, nor the CA, is on a `@revoked` line.
The parsing and the signature check are the `cryptography` library's.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paramiko
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

CERT_SUFFIX = "-cert-v01@openssh.com"


@dataclass(frozen=True)
class Authority:
    """One `@cert-authority` line: its host patterns, the CA's key, and where it was read."""

    patterns: tuple[str, ...]
    key: paramiko.PKey = field(compare=False)
    where: str = ""

    def matches(self, name: str) -> bool:
        """OpenSSH's match_hostname over the line's comma-separated patterns: a negated match excludes."""
        found = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _matches(pattern[1:] if negated else pattern, name):
                if negated:
                    return False
                found = True
        return found


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            salt = base64.b64decode(pattern.split("|")[2])
            digest = base64.b64decode(pattern.split("|")[3])
        except (IndexError, ValueError):
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
    # OpenSSH patterns know only * and ?; fnmatch's [..] classes would be wrong, so they are escaped
    escaped = pattern.lower().replace("[", "[[]")
    return fnmatch.fnmatchcase(name.lower(), escaped)


def principal(name: str) -> str:
    """The name a certificate's principals are checked against: the host, without a known_hosts `[ ]:port`."""
    if name.startswith("[") and "]:" in name:
        return name[1:name.index("]:")]
    return name


def parse(key_type: str, blob: bytes) -> SSHCertificate | None:
    """The certificate in a host key blob, or None when it is not one `cryptography` can read."""
    try:
        found = load_ssh_public_identity(key_type.encode() + b" " + base64.b64encode(blob))
    except (ValueError, TypeError):
        return None
    return found if isinstance(found, SSHCertificate) else None


def check(blob: bytes, key_type: str, authorities: Sequence[Authority], revoked: Callable[[bytes], bool],
          name: str, now: float | None = None) -> tuple[Authority | None, str]:
    """The CA that makes this certificate valid for `name`, or None and why not (empty: no CA line applies)."""
    if not authorities:
        return None, ""
    certificate = parse(key_type, blob)
    if certificate is None:
        return None, "it cannot be read as an OpenSSH certificate"
    ca_blob = _ssh_blob(certificate.signature_key())
    authority = next((ca for ca in authorities if ca.key.asbytes() == ca_blob), None)
    if authority is None:
        return None, "it is signed by a CA that no @cert-authority line trusts for this host"
    if revoked(ca_blob):
        return None, f"its CA ({authority.where}) is marked @revoked"
    problem = _problem(certificate, revoked, principal(name), time.time() if now is None else now)
    return (None, problem) if problem else (authority, "")


def _problem(certificate: SSHCertificate, revoked: Callable[[bytes], bool], name: str, now: float) -> str:
    if certificate.type != SSHCertificateType.HOST:
        return "it is a user certificate, not a host certificate"
    try:
        certificate.verify_cert_signature()
    except (InvalidSignature, ValueError):
        return "the CA's signature on it is not valid"
    if revoked(_ssh_blob(certificate.public_key())):
        return "its key is marked @revoked"
    principals = [item.decode(errors="replace") for item in certificate.valid_principals]
    if principals and name not in principals:
        return f"{name} is not one of its principals ({', '.join(principals)[:200]})"
    if now < certificate.valid_after:
        return f"it is not valid yet (from {_when(certificate.valid_after)})"
    if now >= certificate.valid_before:
        return f"it expired at {_when(certificate.valid_before)}"
    if certificate.critical_options:
        return "it has critical options, which host certificates may not have"
    return ""


def _ssh_blob(key: object) -> bytes:
    """The SSH wire form of a `cryptography` public key (as paramiko's PKey.asbytes gives)."""
    text = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)  # type: ignore[attr-defined]
    return base64.b64decode(text.split()[1])


def _when(stamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(min(stamp, 253402300799)))
