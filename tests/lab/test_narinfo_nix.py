"""Narinfos and NarHash forms, checked against narinfos the real Nix wrote and against `nix path-info`."""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from nixtools import build_closure, nix, path_info_command, path_info_entries, path_info_json
from test_narinfo import REFUSED_BY_NIX, minimal_narinfo  # the unit tier's, checked here against Nix itself

from topdeck.core.nix.narinfo import (
    Narinfo,
    fingerprint,
    hash_to_nix32,
    hash_to_sri,
    parse_hash,
    parse_narinfo,
    render_narinfo,
    sri_to_nix32,
)
from topdeck.core.nix.store import parse_store_path
from topdeck.lab.nixenv import lab_env

# zlib has no references, openssl refers to zlib, app to both and to itself.
CLOSURE_BINDINGS = """  zlib = mk "zlib-1.3.1" "echo zlib > $out/data";
  openssl = mk "openssl-3.0.13-bin" "echo ${zlib} > $out/refs";"""
CLOSURE_RESULT = 'mk "app-1.0" "echo ${zlib} ${openssl} $out > $out/refs"'

HASH = "l8r1i0a3ak0fi2m5gb0shz8v88b85kyp"
DIGEST = hashlib.sha256(b"topdeck").digest()


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_closure(tmp_path_factory.mktemp("closure"), CLOSURE_BINDINGS, CLOSURE_RESULT)


@pytest.fixture(scope="module")
def path_infos(closure: str) -> dict[str, dict]:
    return {info["path"]: info for info in path_info_json("-r", closure)}


@pytest.fixture(scope="module", params=["none", "xz"])
def cache(request: pytest.FixtureRequest, closure: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"cache-{request.param}")
    nix("nix", "copy", "--to", f"file://{directory}?compression={request.param}", closure)
    return directory


def nix_narinfos(cache: Path) -> list[tuple[str, str]]:
    return [(path.name, path.read_text()) for path in sorted(cache.glob("*.narinfo"))]




def test_render_gives_back_what_nix_wrote(cache: Path) -> None:
    narinfos = nix_narinfos(cache)

    assert len(narinfos) == 3
    for name, text in narinfos:
        assert render_narinfo(parse_narinfo(text, name)) == text


def test_fields_agree_with_nix_path_info(cache: Path, path_infos: dict[str, dict]) -> None:
    for name, text in nix_narinfos(cache):
        info = parse_narinfo(text, name)
        expected = path_infos[str(info.store_path)]
        nar_file = cache / info.url

        assert hash_to_sri(info.nar_hash) == expected["narHash"]
        assert f"NarHash: {sri_to_nix32(expected['narHash'])}\n" in text
        assert info.nar_size == expected["narSize"]
        assert [reference.path for reference in info.references] == sorted(expected["references"])
        assert str(info.deriver) == expected["deriver"]
        assert info.file_size == nar_file.stat().st_size
        assert info.file_hash == hashlib.sha256(nar_file.read_bytes()).digest()


def test_narinfo_made_from_path_info_is_what_nix_writes(closure: str, tmp_path: Path) -> None:
    nix("nix", "copy", "--to", f"file://{tmp_path}?compression=none", closure)

    for info in path_info_json("-r", closure):
        # Without compression the file is the NAR itself.
        nar_hash = parse_hash(info["narHash"])
        made = Narinfo(
            store_path=parse_store_path(info["path"]),
            url=f"nar/{hash_to_nix32(nar_hash).removeprefix('sha256:')}.nar",
            compression="none",
            file_hash=nar_hash,
            file_size=info["narSize"],
            nar_hash=nar_hash,
            nar_size=info["narSize"],
            references=[parse_store_path(reference) for reference in info["references"]],
            deriver=parse_store_path(info["deriver"]),
        )
        written = tmp_path / f"{made.store_path.hash_part}.narinfo"

        assert render_narinfo(made) == written.read_text()


def test_fingerprint_is_nix_format(cache: Path, path_infos: dict[str, dict]) -> None:
    for name, text in nix_narinfos(cache):
        info = parse_narinfo(text, name)
        expected = path_infos[str(info.store_path)]
        references = ",".join(sorted(expected["references"]))

        assert fingerprint(info) == (
            f"1;{expected['path']};{sri_to_nix32(expected['narHash'])};{expected['narSize']};{references}"
        )


def test_hash_forms_match_nix_hash() -> None:
    digests = [os.urandom(32) for _ in range(8)]
    hexes = [digest.hex() for digest in digests]

    assert nix("nix", "hash", "to-sri", "--type", "sha256", *hexes).split() == list(map(hash_to_sri, digests))
    assert nix("nix", "hash", "to-base32", *map(hash_to_sri, digests)).split() == [
        hash_to_nix32(digest).removeprefix("sha256:") for digest in digests
    ]


def nix_path_info(closure: str, text: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """What `nix path-info` says of `closure` in a cache holding `text` as its narinfo."""
    (cache / "nix-cache-info").write_text("StoreDir: /nix/store\n")
    (cache / f"{parse_store_path(closure).hash_part}.narinfo").write_text(text)
    return subprocess.run(
        path_info_command("--store", f"file://{cache}", closure),
        env=lab_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


ACCEPTED = {
    "minimal": minimal_narinfo(),
    "SRI NarHash": minimal_narinfo(NarHash=hash_to_sri(DIGEST)),
    "unknown key": minimal_narinfo(Foo="bar"),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_nix_reads_what_topdeck_accepts(case: str, closure: str, tmp_path: Path) -> None:
    text = ACCEPTED[case].replace(f"/nix/store/{HASH}-hello-2.12", closure)

    result = nix_path_info(closure, text, tmp_path)

    assert result.returncode == 0, result.stderr
    [info] = path_info_entries(result.stdout)
    assert parse_hash(info["narHash"]) == parse_narinfo(text).nar_hash


@pytest.mark.parametrize("case", REFUSED_BY_NIX)
def test_nix_refuses_them_too(case: str, closure: str, tmp_path: Path) -> None:
    text = REFUSED_BY_NIX[case].replace(f"/nix/store/{HASH}-hello-2.12", closure)

    result = nix_path_info(closure, text, tmp_path)

    assert result.returncode != 0
    assert "is corrupt" in result.stderr
