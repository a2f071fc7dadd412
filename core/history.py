"""The fleet's shared history: one signed record in the bucket (`runs/<run id>.json`) for every deploy, rollback,
reboot, pointer publish and pointer rollback, by whichever operator ran it.

A record says who (`TOPDECK_OPERATOR`, else user@machine), when, what (pointer, serial, store path, mode) and which
hosts, each with its outcome and time. It is signed with the cache's key (the key that signs the pointers), over the
record's canonical JSON; anyone who can write the bucket can upload a record, so one whose signature does not
verify with the trusted key is carried with its problem and never shown as history.

Reading costs one listing of `runs/` (class C, per 1,000 records) and one download (class B) of each record this
machine has not read before: records are kept in the inventory's state folder, keyed by name and upload time, so a
record replaced in the bucket is read again.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from topdeck.core import strict
from topdeck.core.cache.interface import NO_CACHING, Cache, Entry
from topdeck.core.errors import CacheMissing, TopdeckError
from topdeck.core.events import DeployResult
from topdeck.core.inventory import is_safe_name
from topdeck.core.nix.signing import PublicKey, SecretKey, sign, verify

FOLDER = "runs/"
FINGERPRINT = "topdeck-run-1"
KINDS = ("deploy", "rollback", "reboot", "publish", "pointer-rollback")
MAX_RECORD = 1 << 20  # bytes: a record is a few hundred bytes a host
UNVERIFIED = ("unverified: its signature does not verify with the trusted key (written by someone without the "
              "signing key, or changed since)")


@dataclass(frozen=True)
class HostRun:
    """One host in a run: how it ended, on what, and when."""

    host: str
    outcome: str
    target: str = ""
    finished: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RunRecord:
    """One run by one operator, as the bucket keeps it."""

    run_id: str
    kind: str
    who: str
    started: float
    finished: float = 0.0
    mode: str = ""
    pointer: str = ""
    serial: int = 0
    path: str = ""
    hosts: tuple[HostRun, ...] = ()

    @property
    def ok(self) -> bool:
        return all(host.outcome == "done" for host in self.hosts)


@dataclass(frozen=True)
class HistoryEntry:
    """A record read from the bucket: verified, or only its file name and why it cannot be trusted."""

    name: str
    uploaded_ms: int
    record: RunRecord | None = None
    problem: str = ""

    @property
    def verified(self) -> bool:
        return self.record is not None and not self.problem


def operator_name(environ: Mapping[str, str] = os.environ) -> str:
    """Who runs topdeck here: `TOPDECK_OPERATOR`, else user@machine."""
    configured = environ.get("TOPDECK_OPERATOR", "").strip()
    if configured:
        return configured
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def from_result(result: DeployResult, kind: str, who: str, pointers: Mapping[str, str] | None = None) -> RunRecord:
    """The record of a deploy, rollback or reboot; `pointers` (host to pointer) names the pointer it went through
    when all its hosts share one."""
    hosts = tuple(HostRun(o.host, str(o.outcome), o.target, o.finished, o.reason) for o in result.outcomes)
    targets = {o.target for o in result.outcomes if o.target}
    through = set((pointers or {}).values()) - {""}
    return RunRecord(result.run_id, kind, who, result.started, result.finished, str(result.mode),
                     through.pop() if len(through) == 1 else "", 0, targets.pop() if len(targets) == 1 else "",
                     hosts)


def record_name(record: RunRecord) -> str:
    if not is_safe_name(record.run_id):
        raise TopdeckError(f"run id {record.run_id!r} cannot name a history record")
    return f"{FOLDER}{record.run_id}.json"


def _fields(record: RunRecord) -> dict[str, Any]:
    return {"run_id": record.run_id, "kind": record.kind, "who": record.who, "started": record.started,
            "finished": record.finished, "mode": record.mode, "pointer": record.pointer, "serial": record.serial,
            "path": record.path, "hosts": [vars(host) for host in record.hosts]}


def fingerprint(fields: Mapping[str, Any]) -> str:
    return f"{FINGERPRINT};" + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def render(record: RunRecord, key: SecretKey) -> bytes:
    fields = _fields(record)
    return (json.dumps({"record": fields, "sig": sign(key, fingerprint(fields))}, indent=1) + "\n").encode()


def write(cache: Cache, record: RunRecord, key: SecretKey) -> str:
    """Upload the record signed (one upload, class A); its name in the bucket."""
    name = record_name(record)
    cache.put_bytes(name, render(record, key), content_type="application/json", cache_control=NO_CACHING)
    return name


def parse(data: bytes, name: str, uploaded_ms: int, keys: Iterable[PublicKey]) -> HistoryEntry:
    """A record as read from the bucket: verified with `keys`, or carried with its problem."""
    try:
        document = strict.loads(data)
        if not isinstance(document, dict) or not isinstance(document.get("record"), dict):
            raise TypeError("not a run record")
        fields, sig = document["record"], document.get("sig")
        if not isinstance(sig, str) or not verify(keys, fingerprint(fields), sig):
            return HistoryEntry(name, uploaded_ms, problem=UNVERIFIED)
        return HistoryEntry(name, uploaded_ms, _record(fields))
    except (ValueError, KeyError, TypeError) as error:
        return HistoryEntry(name, uploaded_ms, problem=f"unverified: not a readable run record ({error})")


def _record(fields: dict[str, Any]) -> RunRecord:
    hosts = tuple(HostRun(str(h["host"]), str(h["outcome"]), str(h.get("target", "")),
                          float(h.get("finished", 0.0)), str(h.get("reason", ""))) for h in fields["hosts"])
    serial = fields.get("serial", 0)
    if not isinstance(serial, int) or isinstance(serial, bool):
        raise TypeError("serial is not a number")
    return RunRecord(str(fields["run_id"]), str(fields["kind"]), str(fields["who"]), float(fields["started"]),
                     float(fields.get("finished", 0.0)), str(fields.get("mode", "")), str(fields.get("pointer", "")),
                     serial, str(fields.get("path", "")), hosts)


@dataclass
class LocalCopies:
    """Records already read, in a folder of the inventory's state: `<name>@<upload ms>`."""

    folder: Path
    read: list[str] = field(default_factory=list)  # names downloaded by this reading

    def _file(self, entry: Entry) -> Path:
        return self.folder / f"{entry.name.removeprefix(FOLDER)}@{entry.uploaded_ms}"

    def get(self, entry: Entry) -> bytes | None:
        try:
            return self._file(entry).read_bytes()
        except OSError:
            return None

    def put(self, entry: Entry, data: bytes) -> None:
        """Keep a copy; one that cannot be written is read from the bucket again next time."""
        target = self._file(entry)
        temporary = target.with_name(f".{target.name}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary.write_bytes(data)
            os.replace(temporary, target)
        except OSError:
            pass


def read(cache: Cache, keys: Iterable[PublicKey], listing_of: Callable[[str], Mapping[str, Entry]],
         copies: LocalCopies) -> list[HistoryEntry]:
    """Every record in the bucket, newest first: one listing, and a download of each one not read before."""
    keys = list(keys)
    entries = []
    for name, entry in listing_of(FOLDER).items():
        if not name.endswith(".json") or "/" in name.removeprefix(FOLDER):
            continue
        data = copies.get(entry)
        if data is None:
            if entry.size > MAX_RECORD:
                entries.append(HistoryEntry(name, entry.uploaded_ms, problem="unverified: larger than a record"))
                continue
            try:
                data = cache.get_bytes(name)
            except CacheMissing:
                continue  # deleted since the listing
            copies.put(entry, data)
            copies.read.append(name)
        entries.append(parse(data, name, entry.uploaded_ms, keys))
    return sorted(entries, key=_newest_first)


def _newest_first(entry: HistoryEntry) -> tuple[float, str]:
    when = entry.record.started if entry.record else entry.uploaded_ms / 1000
    return (-when, entry.name)


def touching(entries: Sequence[HistoryEntry], hosts: Iterable[str], pointers: Iterable[str]) -> list[HistoryEntry]:
    """The verified records of runs on any of `hosts` or publishes of any of `pointers`, and every unverified one
    (what it claims cannot be read, so no filter hides it)."""
    wanted_hosts, wanted_pointers = set(hosts), set(pointers)
    return [entry for entry in entries if entry.record is None
            or {h.host for h in entry.record.hosts} & wanted_hosts
            or (not entry.record.hosts and entry.record.pointer in wanted_pointers)]


def last_deploys(entries: Sequence[HistoryEntry]) -> dict[str, tuple[RunRecord, HostRun]]:
    """Each host's newest verified run (deploy, rollback or reboot), by any operator."""
    found: dict[str, tuple[RunRecord, HostRun]] = {}
    for entry in entries:  # newest first
        if entry.verified and entry.record is not None:
            for host in entry.record.hosts:
                found.setdefault(host.host, (entry.record, host))
    return found


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def publish_record(run_id: str, kind: str, who: str, when: float, pointer: str, serial: int, path: str) -> RunRecord:
    return RunRecord(run_id, kind, who, when, when, pointer=pointer, serial=serial, path=path)
