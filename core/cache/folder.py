"""A binary cache in a local folder: what the lab, `file://` caches and the tests use beside B2."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import BinaryIO

from topdeck.core import strict
from topdeck.core.cache.interface import Entry
from topdeck.core.errors import CacheError, CacheMissing
from topdeck.core.events import Transactions


class DirCache:
    """A binary cache in a local directory (served to hosts by any web server, or as file://).

    Files are written atomically; versions and custom info of a name live in `.topdeck/versions/`.
    """

    def __init__(self, root: Path, substituter_url: str):
        self.root = root
        self.substituter_url = substituter_url
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.root / name

    def _history(self, name: str) -> Path:
        return self.root / ".topdeck" / "versions" / f"{name}.jsonl"

    def listing(self) -> dict[str, Entry]:
        entries = {}
        for path in self.root.rglob("*"):
            name = path.relative_to(self.root).as_posix()
            if path.is_file() and not name.startswith(".topdeck/") and ".tmp." not in path.name:
                versions = self.versions(name)
                entries[name] = versions[0] if versions else Entry(name, path.stat().st_size)
        return entries

    def lookup(self, names: Collection[str]) -> dict[str, Entry]:
        found = {}
        for name in names:
            path = self._path(name)
            if path.is_file():
                versions = self.versions(name)
                found[name] = versions[0] if versions else Entry(name, path.stat().st_size)
        return found

    def put_bytes(self, name: str, data: bytes, *, content_type: str, cache_control: str | None = None,
                  info: Mapping[str, str] | None = None) -> None:
        self._write(name, [data])
        self._record(name, len(data), info or {})

    def put_stream(self, name: str, stream: BinaryIO, *, content_type: str) -> None:
        size = self._write(name, iter(lambda: stream.read(1 << 20), b""))
        self._record(name, size, {})

    def get_bytes(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise CacheMissing(f"{self.root}: {name} not found") from None

    def versions(self, name: str) -> list[Entry]:
        try:
            lines = self._history(name).read_text().splitlines()
        except FileNotFoundError:
            return []
        try:
            return [Entry(name=name, **strict.loads(line)) for line in reversed(lines)]
        except (ValueError, TypeError) as error:
            raise CacheError(f"{self._history(name)}: not a readable version history ({error})") from None

    def transactions(self) -> Transactions:
        return Transactions()

    def all_versions(self) -> list[Entry]:
        """Every recorded version of every file (a directory keeps only the newest content); ids are names."""
        return [dataclasses.replace(version, file_id=name) for name, entry in self.listing().items()
                for version in (self.versions(name) or [entry])]

    def listing_of(self, folder: str) -> dict[str, Entry]:
        return {name: entry for name, entry in self.listing().items() if name.startswith(folder)}

    def delete_version(self, entry: Entry) -> None:
        self._path(entry.name).unlink(missing_ok=True)
        self._history(entry.name).unlink(missing_ok=True)

    def _write(self, name: str, chunks) -> int:  # type: ignore[no-untyped-def]
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # One temporary name per writer: two paths with the same NAR write one file name from two threads at once.
        temporary = target.with_name(f"{target.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:12]}")
        size = 0
        with temporary.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                size += len(chunk)
        temporary.replace(target)
        return size

    def _record(self, name: str, size: int, info: Mapping[str, str]) -> None:
        history = self._history(name)
        history.parent.mkdir(parents=True, exist_ok=True)
        record = {"size": size, "info": dict(info), "uploaded_ms": int(time.time() * 1000)}
        with history.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
