"""Keys and narinfo signatures, in process (against keys and signatures the real Nix made and verifies:
tests/lab/test_signing_nix.py)."""

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from topdeck.core.errors import SignatureError, SigningKeyError
from topdeck.core.nix.narinfo import fingerprint, parse_narinfo
from topdeck.core.nix.signing import (
    generate_keypair,
    load_public_key,
    load_secret_key,
    require_signature,
    sign,
    sign_narinfo,
    verify,
    write_secret_key,
)


@pytest.mark.parametrize(
    "sig", ["", "nix-test-1", "nix-test-1:", ":AAAA", "nix-test-1:!!!", "nix-test-1:AAAA"]
)
def test_a_malformed_signature_does_not_verify(sig: str) -> None:
    secret, public = generate_keypair("nix-test-1")

    assert not verify([public], "1;x", sig)
    assert verify([public], "1;x", sign(secret, "1;x"))


def test_written_secret_key_is_private_and_loads_back(tmp_path: Path) -> None:
    secret, public = generate_keypair("topdeck-test-1")
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)

    write_secret_key(path, secret)

    assert path.stat().st_mode & 0o777 == 0o600
    assert load_secret_key(path) == secret
    assert load_secret_key(path).public_key() == public


def test_sign_narinfo_replaces_only_its_own_signature() -> None:
    secret, public = generate_keypair("topdeck-test-1")
    info = parse_narinfo(
        "StorePath: /nix/store/l8r1i0a3ak0fi2m5gb0shz8v88b85kyp-hello-2.12\nURL: nar/x.nar\n"
        f"NarHash: sha256:{'0' * 52}\nNarSize: 120\nSig: topdeck-test-1:old\nSig: cache.nixos.org-1:x\n"
    )

    signed = sign_narinfo(info, secret)

    assert signed.sigs == ("cache.nixos.org-1:x", sign(secret, fingerprint(info)))
    require_signature(signed, [public])
    with pytest.raises(SignatureError, match="no valid signature by topdeck-test-1") as caught:
        require_signature(info, [public])
    assert "\n" not in str(caught.value)


SECRET = generate_keypair("k")[0]
SECRET_MATERIAL = SECRET.to_text().partition(":")[2]
PUBLIC_MATERIAL = SECRET.public_key().to_text().partition(":")[2]
# The seed of one key followed by the public half of another.
MISMATCHED = "k:" + base64.b64encode(SECRET.seed + generate_keypair("k")[1].raw).decode()


@pytest.mark.parametrize(
    ("content", "load"),
    [
        (b"", load_secret_key),
        (b"no colon", load_secret_key),
        (b"k:", load_secret_key),
        (f":{SECRET_MATERIAL}".encode(), load_secret_key),
        (b"k:!!!!", load_secret_key),
        (f"k:{PUBLIC_MATERIAL}".encode(), load_secret_key),
        (MISMATCHED.encode(), load_secret_key),
        (f"k:{SECRET_MATERIAL}\n\n".encode(), load_secret_key),
        (b"\xff\xfe" + SECRET_MATERIAL.encode(), load_secret_key),
        (f"k:{SECRET_MATERIAL}".encode(), load_public_key),
        (f"k:{PUBLIC_MATERIAL[:-4]}".encode(), load_public_key),
    ],
    # named, not shown: the keys are made anew in each process, and pytest-xdist's workers must collect the same ids
    ids=["empty", "no colon", "no material", "no name", "bad base64", "public as secret", "mismatched halves",
         "blank lines after", "not utf-8", "secret as public", "short public"],
)
def test_rejects_malformed_key_files_without_showing_them(
    content: bytes, load: Callable[[Path], object], tmp_path: Path
) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)

    with pytest.raises(SigningKeyError) as caught:
        load(path)

    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert SECRET_MATERIAL[:12] not in message and PUBLIC_MATERIAL[:12] not in message


def test_rejects_unreadable_key_files(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read secret key file"):
        load_secret_key(tmp_path / "missing")
    with pytest.raises(SigningKeyError, match="cannot read public key file"):
        load_public_key(tmp_path)


@pytest.mark.parametrize("name", ["", "a:b", "a b", "a\n"])
def test_generate_keypair_rejects_names_nix_cannot_use(name: str) -> None:
    with pytest.raises(SigningKeyError):
        generate_keypair(name)
