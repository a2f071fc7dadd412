"""core.cache.manifest: the closure manifest rendered and read back, strictly (a bad one is a CacheError naming it)."""

from __future__ import annotations

import hashlib
import json

import pytest

from topdeck.core.cache.manifest import Manifest, ManifestPath, manifest_name, parse_manifest, render_manifest
from topdeck.core.errors import CacheError
from topdeck.core.nix.store import parse_store_path

TOP = parse_store_path("/nix/store/" + "1" * 32 + "-nixos-system-web-1")
LIB = parse_store_path("/nix/store/" + "2" * 32 + "-glibc-2.40")
MANIFEST = Manifest(TOP, (
    ManifestPath(LIB, nar_size=30_000, file_size=9_000, references=(LIB,), nar_hash=hashlib.sha256(b"lib").digest()),
    ManifestPath(TOP, nar_size=2_000, file_size=700, references=(LIB, TOP)),  # written before narHash existed
))


def test_the_name_is_the_toplevels_hash_part() -> None:
    assert manifest_name(TOP) == f"manifests/{'1' * 32}.json"


def test_a_manifest_reads_back_as_written() -> None:
    data = render_manifest(MANIFEST)
    document = json.loads(data)
    assert document["format"] == 1 and document["toplevel"] == str(TOP)
    assert document["paths"][0]["references"] == [LIB.basename]
    assert document["paths"][0]["narHash"].startswith("sha256:")
    assert "narHash" not in document["paths"][1]
    assert parse_manifest(data, "manifests/x.json") == MANIFEST


def _document(**changes: object) -> bytes:
    document = json.loads(render_manifest(MANIFEST))
    path = document["paths"][0]
    for key, value in changes.items():
        if key in ("format", "toplevel"):
            document[key] = value
        else:
            path[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(("data", "reason"), [
    (_document(format=2), "unknown manifest format 2"),
    (b"[]", "not a valid manifest"),
    (b'{"format": 1, "format": 1}', "not a valid manifest (key 'format' appears twice)"),
    (_document(toplevel="/etc/passwd"), "not a valid manifest"),
    (_document(narSize=0), "not a valid manifest (bad sizes for"),
    (_document(fileSize=-1), "not a valid manifest (bad sizes for"),
    (_document(narSize=True), "not a valid manifest (bad sizes for"),
    (_document(references=["../../etc"]), "not a valid manifest"),
    (_document(narHash="sha256:short"), "not a valid manifest"),
    (b"\xff", "not a valid manifest"),
])
def test_a_bad_manifest_is_one_cache_error_naming_its_source(data: bytes, reason: str) -> None:
    with pytest.raises(CacheError) as caught:
        parse_manifest(data, "manifests/x.json")
    assert str(caught.value).startswith(f"manifests/x.json: {reason}") and "\n" not in str(caught.value)
