"""core/remote/hostcert.py: host certificates checked as OpenSSH does, with certificates made by `cryptography`."""

from __future__ import annotations

import base64
import time

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificateBuilder,
    SSHCertificateType,
)

from topdeck.core.remote import hostcert
from topdeck.core.remote.hostcert import Authority

NOW = int(time.time())


def pkey(public: ed25519.Ed25519PublicKey) -> paramiko.PKey:
    kind, data = public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[:2]
    return paramiko.PKey.from_type_string(kind.decode(), base64.b64decode(data))


CA = ed25519.Ed25519PrivateKey.generate()
OTHER_CA = ed25519.Ed25519PrivateKey.generate()
HOST = ed25519.Ed25519PrivateKey.generate()


def certificate(*, kind: SSHCertificateType = SSHCertificateType.HOST, principals: tuple[str, ...] = ("web1.fleet",),
                after: int = NOW - 60, before: int = NOW + 86_400, ca: ed25519.Ed25519PrivateKey = CA,
                critical: bool = False) -> bytes:
    builder = (SSHCertificateBuilder().public_key(HOST.public_key()).serial(1).type(kind).key_id(b"web1")
               .valid_after(after).valid_before(before))
    builder = builder.valid_principals([p.encode() for p in principals]) if principals else \
        builder.valid_for_all_principals()
    if critical:
        builder = builder.add_critical_option(b"force-command", b"true")
    return base64.b64decode(builder.sign(ca).public_bytes().split()[1])


def check(blob: bytes, name: str = "web1.fleet", patterns: tuple[str, ...] = ("*.fleet",),
          revoked: tuple[bytes, ...] = ()) -> tuple[Authority | None, str]:
    authorities = [ca for ca in [Authority(patterns, pkey(CA.public_key()), "kh:1")] if ca.matches(name)]
    return hostcert.check(blob, "ssh-ed25519-cert-v01@openssh.com", authorities, lambda b: b in revoked, name)


def test_a_valid_host_certificate_is_accepted() -> None:
    authority, why = check(certificate())
    assert authority is not None and why == ""
    # off port 22 the CA line names [host]:port, as OpenSSH looks it up; the principal is the host alone
    assert check(certificate(), "[web1.fleet]:2222", patterns=("[*.fleet]:2222",))[0] is not None


def test_no_principals_means_any_name() -> None:
    assert check(certificate(principals=()), "db.fleet")[0] is not None


@pytest.mark.parametrize("blob,why", [
    (certificate(kind=SSHCertificateType.USER), "a user certificate, not a host certificate"),
    (certificate(principals=("web2.fleet",)), "web1.fleet is not one of its principals (web2.fleet)"),
    (certificate(before=NOW - 10, after=NOW - 100), "it expired at"),
    (certificate(after=NOW + 43_200), "it is not valid yet"),  # the rows are made at import, run later
    (certificate(ca=OTHER_CA), "signed by a CA that no @cert-authority line trusts"),
    (certificate(critical=True), "critical options"),
], ids=["user", "principal", "expired", "not-yet", "other-ca", "critical"])  # the blobs differ in each process
def test_invalid_certificates_say_why(blob: bytes, why: str) -> None:
    authority, reason = check(blob)
    assert authority is None and why in reason


def test_a_forged_signature_is_refused() -> None:
    blob = bytearray(certificate())
    blob[-5] ^= 1
    authority, reason = check(bytes(blob))
    assert authority is None and reason


def test_a_revoked_host_key_is_refused() -> None:
    revoked = pkey(HOST.public_key()).asbytes()
    assert check(certificate(), revoked=(revoked,)) == (None, "its key is marked @revoked")


@pytest.mark.parametrize("patterns,name,matches", [
    (("*.fleet",), "web1.fleet", True),
    (("*.fleet", "!db*.fleet"), "db1.fleet", False),
    (("*.fleet", "!db*.fleet"), "web1.fleet", True),
    (("web?.fleet",), "web12.fleet", False),
    (("[a]*",), "[a]x", True),  # brackets are literal in OpenSSH patterns
    (("*.FLEET",), "web1.fleet", True),
])
def test_cert_authority_patterns(patterns: tuple[str, ...], name: str, matches: bool) -> None:
    assert Authority(patterns, pkey(CA.public_key())).matches(name) is matches


def test_hashed_patterns_match() -> None:
    hashed = paramiko.HostKeys.hash_host("web1.fleet")
    assert Authority((hashed,), pkey(CA.public_key())).matches("web1.fleet")
    assert not Authority((hashed,), pkey(CA.public_key())).matches("web2.fleet")


def test_no_authority_for_the_name_means_no_certificate_check() -> None:
    assert check(certificate(), patterns=("*.example",)) == (None, "")
