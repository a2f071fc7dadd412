"""Keys and narinfo signatures, checked against keys and signatures the real Nix made and verifies."""

import dataclasses
import subprocess
from pathlib import Path

import pytest
from nixtools import build_closure, nix, run_nix

from topdeck.core.nix.narinfo import Narinfo, fingerprint, parse_narinfo, render_narinfo
from topdeck.core.nix.signing import (
    PublicKey,
    generate_keypair,
    load_public_key,
    load_secret_key,
    parse_public_key,
    parse_secret_key,
    sign,
    sign_narinfo,
    verify,
    verify_narinfo,
    write_secret_key,
)
from topdeck.core.nix.store import parse_store_path

# Two paths, the second referring to the first and to itself.
CLOSURE_BINDINGS = """  lib = mk "signing-lib-1.0" "echo lib > $out/data";"""
CLOSURE_RESULT = 'mk "signing-app-2.0" "echo ${lib} $out > $out/refs"'
EXTRA = parse_store_path("/nix/store/" + "0" * 32 + "-extra")


def copy_to_cache(closure: str, cache: Path, secret_key_file: Path | None = None) -> list[Narinfo]:
    """`nix copy` the closure to a file:// cache, signing with `secret_key_file` if given."""
    url = f"file://{cache}?compression=none"
    if secret_key_file is not None:
        url += f"&secret-key={secret_key_file}"
    nix("nix", "copy", "--to", url, closure)
    return [parse_narinfo(path.read_text(), path.name) for path in sorted(cache.glob("*.narinfo"))]


def nix_store_verify(cache: Path, closure: str, public_key: PublicKey) -> subprocess.CompletedProcess[str]:
    return run_nix(
        "nix", "store", "verify", "--store", f"file://{cache}",
        "--trusted-public-keys", public_key.to_text(), "-r", closure,
    )  # fmt: skip


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_closure(tmp_path_factory.mktemp("closure"), CLOSURE_BINDINGS, CLOSURE_RESULT)


@pytest.fixture(scope="module")
def nix_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A key pair made by `nix-store --generate-binary-cache-key`: (secret file, public file)."""
    directory = tmp_path_factory.mktemp("nix-key")
    secret, public = directory / "secret", directory / "public"
    nix("nix-store", "--generate-binary-cache-key", "nix-test-1", str(secret), str(public))
    return secret, public


@pytest.fixture(scope="module")
def nix_signed(
    closure: str, nix_key: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[Narinfo]:
    """The closure's narinfos as Nix wrote and signed them with the Nix-made key."""
    return copy_to_cache(closure, tmp_path_factory.mktemp("signed-cache"), nix_key[0])


def test_loads_a_key_pair_nix_made(nix_key: tuple[Path, Path]) -> None:
    secret_file, public_file = nix_key

    secret, public = load_secret_key(secret_file), load_public_key(public_file)

    assert secret.name == public.name == "nix-test-1"
    assert secret.public_key() == public
    assert secret.to_text() == secret_file.read_text()
    assert public.to_text() == public_file.read_text()
    assert secret_file.read_text().partition(":")[2] not in repr(secret)


def test_tolerates_a_trailing_newline(nix_key: tuple[Path, Path]) -> None:
    secret_file, public_file = nix_key

    assert parse_secret_key(secret_file.read_text() + "\n") == load_secret_key(secret_file)
    assert parse_public_key(public_file.read_text() + "\n") == load_public_key(public_file)


def test_signs_exactly_as_nix_signs(nix_signed: list[Narinfo], nix_key: tuple[Path, Path]) -> None:
    secret = load_secret_key(nix_key[0])

    assert len(nix_signed) == 2
    for info in nix_signed:
        [nix_sig] = info.sigs
        assert sign(secret, fingerprint(info)) == nix_sig
        assert sign_narinfo(dataclasses.replace(info, sigs=()), secret) == info


def test_verifies_nix_signatures_and_rejects_tampering(
    nix_signed: list[Narinfo], nix_key: tuple[Path, Path]
) -> None:
    public = load_public_key(nix_key[1])
    same_name_other_key = generate_keypair("nix-test-1")[1]
    other_name = generate_keypair("other-1")[1]

    for info in nix_signed:
        [sig] = info.sigs
        assert verify([public], fingerprint(info), sig)
        assert verify([other_name, public], fingerprint(info), sig)
        assert verify_narinfo(info, [public])
        assert not verify([same_name_other_key], fingerprint(info), sig)
        assert not verify([other_name], fingerprint(info), sig)
        assert not verify_narinfo(dataclasses.replace(info, nar_size=info.nar_size + 1), [public])
        assert not verify_narinfo(dataclasses.replace(info, references=(*info.references, EXTRA)), [public])
        assert not verify_narinfo(dataclasses.replace(info, nar_hash=bytes(32)), [public])


def test_nix_signs_with_a_key_topdeck_made(closure: str, tmp_path: Path) -> None:
    secret, public = generate_keypair("topdeck-test-1")
    secret_file = tmp_path / "secret"
    write_secret_key(secret_file, secret)

    narinfos = copy_to_cache(closure, tmp_path / "cache", secret_file)

    for info in narinfos:
        assert info.sigs == (sign(secret, fingerprint(info)),)
        assert verify_narinfo(info, [public])
    assert nix_store_verify(tmp_path / "cache", closure, public).returncode == 0


def test_nix_trusts_narinfos_topdeck_signed(closure: str, tmp_path: Path) -> None:
    secret, public = generate_keypair("topdeck-test-1")
    cache = tmp_path / "cache"
    narinfos = copy_to_cache(closure, cache)
    assert nix_store_verify(cache, closure, public).returncode != 0

    for info in narinfos:
        signed = render_narinfo(sign_narinfo(info, secret))
        (cache / f"{info.store_path.hash_part}.narinfo").write_text(signed)

    assert nix_store_verify(cache, closure, public).returncode == 0
    assert nix_store_verify(cache, closure, generate_keypair("topdeck-test-1")[1]).returncode != 0


