"""The closure manifest: every path of a toplevel's closure with its sizes and references, in one file.

A plan reads it with one download instead of one narinfo per path. Written by push after every narinfo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from topdeck.core import strict
from topdeck.core.errors import CacheError, NarinfoError, StorePathError
from topdeck.core.nix.narinfo import hash_to_nix32, parse_hash
from topdeck.core.nix.store import StorePath, parse_store_path

FORMAT = 1


@dataclass(frozen=True)
class ManifestPath:
    path: StorePath
    nar_size: int
    file_size: int
    references: tuple[StorePath, ...]
    nar_hash: bytes | None = None  # raw sha256 of the NAR; manifests written before it existed lack it


@dataclass(frozen=True)
class Manifest:
    toplevel: StorePath
    paths: tuple[ManifestPath, ...]


def manifest_name(toplevel: StorePath) -> str:
    return f"manifests/{toplevel.hash_part}.json"


def render_manifest(manifest: Manifest) -> bytes:
    document = {
        "format": FORMAT,
        "toplevel": str(manifest.toplevel),
        "paths": [
            {"path": str(p.path), "narSize": p.nar_size, "fileSize": p.file_size,
             "references": [r.basename for r in p.references],
             **({"narHash": hash_to_nix32(p.nar_hash)} if p.nar_hash is not None else {})}
            for p in manifest.paths
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def parse_manifest(data: bytes, source: str) -> Manifest:
    try:
        document = strict.loads(data)
        if document.get("format") != FORMAT:
            raise CacheError(f"{source}: unknown manifest format {document.get('format')!r}")
        return Manifest(
            toplevel=parse_store_path(document["toplevel"]),
            paths=tuple(_manifest_path(entry) for entry in document["paths"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, StorePathError, NarinfoError) as error:
        raise CacheError(f"{source}: not a valid manifest ({error})") from None


def _manifest_path(entry: dict) -> ManifestPath:  # type: ignore[type-arg]
    nar_size, file_size = entry["narSize"], entry["fileSize"]
    if not (strict.is_uint(nar_size) and strict.is_uint(file_size)) or nar_size == 0:
        raise ValueError(f"bad sizes for {entry['path']!r}")
    return ManifestPath(
        path=parse_store_path(entry["path"]),
        nar_size=nar_size,
        file_size=file_size,
        references=tuple(parse_store_path(f"/nix/store/{ref}") for ref in entry["references"]),
        nar_hash=parse_hash(entry["narHash"]) if "narHash" in entry else None,
    )
