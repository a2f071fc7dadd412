"""The binary cache behind one interface: what every backend (B2 in b2.py, a local folder in folder.py) offers.

Names are relative to the cache's root (the bucket prefix, or the directory): `<hash>.narinfo`, `nar/...`,
`nix-cache-info`, `manifests/...`, `toplevels/...`. Hosts fetch from `substituter_url`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

from topdeck.core.events import Transactions

NARINFO_TYPE = "text/x-nix-narinfo"
NAR_TYPE = "application/x-nix-nar"
NO_CACHING = "no-cache, no-store, max-age=0"


@dataclass(frozen=True)
class Entry:
    """One stored file (or one version of it): size, custom info, upload time in ms since the epoch."""

    name: str
    size: int
    info: Mapping[str, str] = field(default_factory=dict)
    uploaded_ms: int = 0
    file_id: str = ""  # the version's id where the backend has one (B2), for deleting exactly it


class Cache(Protocol):
    substituter_url: str

    def listing(self) -> dict[str, Entry]:
        """Every file under the cache's root, newest versions only, in as few listing calls as possible."""

    def put_bytes(self, name: str, data: bytes, *, content_type: str, cache_control: str | None = None,
                  info: Mapping[str, str] | None = None) -> None: ...

    def put_stream(self, name: str, stream: BinaryIO, *, content_type: str) -> None:
        """Store what `stream` yields until EOF, without holding it all in memory."""

    def get_bytes(self, name: str) -> bytes: ...

    def versions(self, name: str) -> list[Entry]:
        """Every stored version of one name, newest first."""

    def transactions(self) -> Transactions: ...


@runtime_checkable
class NameLookup(Protocol):
    """A cache that answers for given names without listing everything (B2Cache, DirCache)."""

    def lookup(self, names: Collection[str]) -> dict[str, Entry]:
        """Those of `names` that are stored (newest versions), at a cost that grows with len(names)."""
        ...

    def listing_of(self, folder: str) -> dict[str, Entry]:
        """The files under `folder` (a name ending in "/"), named from the cache's root as in `listing`."""
        ...

    def get_bytes(self, name: str) -> bytes: ...


class DeletingCache(Cache, Protocol):
    """A cache opened with a key that may delete: only `topdeck gc` has one."""

    def all_versions(self) -> list[Entry]:
        """Every stored version of every file (one listing pass), newest first within a name."""
        ...

    def delete_version(self, entry: Entry) -> None:
        """Delete one version (an entry of `all_versions`); a version already gone is not an error."""
        ...

    def listing_of(self, folder: str) -> dict[str, Entry]:
        """The files under `folder` (a name ending in "/"), named from the cache's root as in `listing`."""
        ...
