"""The Backblaze B2 binary cache, through the unmodified b2sdk, counting B2 transactions by class."""

from __future__ import annotations

import bisect
import io
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import requests
from b2sdk.v2 import AbstractAccountInfo, AuthInfoCache, B2Api, Bucket, InMemoryAccountInfo, SqliteAccountInfo
from b2sdk.v2.exception import (
    B2ConnectionError,
    B2Error,
    B2RequestTimeout,
    BrokenPipe,
    ConnectionReset,
    CorruptAccountInfo,
    FileNotPresent,
    InvalidAuthToken,
    MaxRetriesExceeded,
    MissingAccountData,
    NonExistentBucket,
    RequestTimeout,
    ServiceError,
    TooManyRequests,
    TransactionCapExceeded,
    TruncatedOutput,
    Unauthorized,
)

from topdeck.core.cache.interface import Entry
from topdeck.core.errors import CacheError, CacheMissing, TransientCacheError
from topdeck.core.events import Transactions

# B2's classes (https://www.backblaze.com/cloud-storage/transaction-pricing); anything else is class A.
CLASS_B = {"b2_download_file_by_id", "b2_download_file_by_name", "b2_get_file_info", "b2_get_file_info_by_name"}
CLASS_C = {"b2_authorize_account", "b2_list_buckets", "b2_list_file_names", "b2_list_file_versions",
           "b2_list_parts", "b2_list_unfinished_large_files", "b2_list_keys", "b2_get_download_authorization"}
BILLED_PER_THOUSAND = {"b2_list_file_names", "b2_list_file_versions"}
STREAM_PART_SIZE = 32 * 1024 * 1024
# `lookup`: up to HEAD_LIMIT names are checked one by one (class B each); more are read from listing pages of
# PAGE names that start at the next name not yet known (class C each, ten times the price of a B), as long as a
# page answers for at least PAGE_WORTH names.
HEAD_LIMIT = 100
PAGE = 1000
PAGE_WORTH = 10
LOOKUP_JOBS = 8
_CALL = re.compile(r"/b2api/v\d+/(b2_\w+)")
# b2sdk tries each request up to 5 times; when B2 is having a bad moment that is not always enough, so each
# repeatable operation (everything but a streamed upload, which push retries from the start) gets a few more.
ATTEMPTS = 4
BACKOFF = 0.5  # seconds before the second attempt, doubled for each next one
TRANSIENT = (B2ConnectionError, B2RequestTimeout, RequestTimeout, ServiceError, TooManyRequests, TruncatedOutput,
             ConnectionReset, BrokenPipe, MaxRetriesExceeded, requests.RequestException, OSError)
T = TypeVar("T")


class CallCounter:
    """Counts b2sdk's HTTP calls by B2 call name (a b2sdk HttpCallback); listings are billed by the lister."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def pre_request(self, method, url, headers) -> None:  # type: ignore[no-untyped-def]
        pass

    def post_request(self, method, url, headers, response) -> None:  # type: ignore[no-untyped-def]
        name = call_name(method, url)
        if name not in BILLED_PER_THOUSAND:
            self.add(name)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.calls[name] += count

    def transactions(self) -> Transactions:
        with self._lock:
            calls = dict(self.calls)
        by_class = Counter(transaction_class(name) for name, n in calls.items() for _ in range(n))
        return Transactions(a=by_class["A"], b=by_class["B"], c=by_class["C"], calls=calls)


def call_name(method: str, url: str) -> str:
    match = _CALL.search(url)
    if match:
        return match.group(1)
    if "/file/" in url:
        return "b2_get_file_info_by_name" if method == "HEAD" else "b2_download_file_by_name"
    return "other"


def transaction_class(name: str) -> str:
    return "B" if name in CLASS_B else "C" if name in CLASS_C else "A"


class B2Cache:
    """The bucket through b2sdk. Hosts fetch from `substituter_url`: `download_url` when given (the cache's root
    behind a CDN or an own domain), else the bucket's own `<downloadUrl>/file/<bucket>/<prefix>`; topdeck's own
    reads always go through B2's API."""

    def __init__(self, bucket: str, prefix: str, realm: str, key_id: str, key: str, download_url: str = "",
                 account_info: Path | None = None):
        """`account_info`: b2sdk's account-info database (it holds the key and the authorization token), reused
        between runs so that a run needs no `authorize_account` (class C) while the token is valid; b2sdk
        authorizes again with the stored key when B2 says the token expired. One file per realm and key."""
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.counter = CallCounter()
        info = _account_info(account_info)
        # the bucket's id is kept with the authorization, so a key that may see every bucket needs no list_buckets
        self.api = B2Api(info, cache=AuthInfoCache(info) if account_info is not None else None)
        self.api.session.raw_api.b2_http.add_callback(self.counter)

        def authorize() -> None:
            try:
                self.api.authorize_account(realm, key_id, key)
            except (Unauthorized, InvalidAuthToken):
                raise CacheError(f"B2 refused the application key (realm {realm})") from None

        # once: b2sdk already tries 5 times, and an authorization that fails that often is a wrong realm or no network
        if not _authorized(self.api.account_info, realm, key_id):
            retrying("authorizing with B2", authorize, attempts=1)
        self.bucket = retrying(f"finding bucket {bucket!r}", lambda: self._bucket(bucket))
        self.bucket_url = f"{self.api.account_info.get_download_url()}/file/{bucket}/{self.prefix}".rstrip("/")
        self.substituter_url = download_url.rstrip("/") or self.bucket_url

    def _bucket(self, name: str) -> Bucket:
        """The bucket, without a class C list_buckets call when the key is restricted to it."""
        allowed = self.api.account_info.get_allowed() or {}
        if allowed.get("bucketName") == name and allowed.get("bucketId"):
            return self.api.BUCKET_CLASS(self.api, allowed["bucketId"], name=name)
        if allowed.get("bucketName"):
            raise CacheError(f"the B2 key is restricted to bucket {allowed['bucketName']!r}, not {name!r}")
        try:
            return self.api.get_bucket_by_name(name)
        except NonExistentBucket:
            raise CacheError(f"B2 bucket {name!r} not found (or not visible to this key)") from None

    def listing(self) -> dict[str, Entry]:
        def list_all() -> dict[str, Entry]:
            entries = {}
            for version, _ in self.bucket.ls(self.prefix.rstrip("/"), recursive=True, fetch_count=10_000):
                name = version.file_name[len(self.prefix):]
                entries[name] = Entry(name, version.size, dict(version.file_info), version.upload_timestamp)
            return entries

        entries = retrying("listing the cache", list_all)
        self.counter.add("b2_list_file_names", max(1, math.ceil(len(entries) / 1000)))
        return entries

    def listing_around(self, folder: str) -> tuple[dict[str, Entry], bool]:
        """Like `listing`, but the files under `folder` (a name ending in "/", e.g. "nar/") are skipped when that
        saves listing transactions; the flag says whether they are all in. B2 bills a listing per 1000 names it
        returns: names are read 1000 at a time until a page runs into the folder, then from just after it."""
        if not folder.endswith("/"):
            raise ValueError(f"folder {folder!r} must end with '/'")
        skipped = self.prefix + folder
        after = skipped[:-1] + chr(ord("/") + 1)
        entries: dict[str, Entry] = {}
        start: str | None = self.prefix
        complete, page = True, 1000
        while start is not None:
            start = self._list_page(entries, start, self.prefix, page)
            if start is not None and complete and skipped <= start < after:
                entries = {name: entry for name, entry in entries.items() if not name.startswith(folder)}
                complete, page, start = False, 10_000, after
        return entries, complete

    def listing_of(self, folder: str) -> dict[str, Entry]:
        """The files under `folder` (a name ending in "/"), named from the cache's root as in `listing`."""
        if not folder.endswith("/"):
            raise ValueError(f"folder {folder!r} must end with '/'")
        return self._list(self.prefix + folder, self.prefix + folder, 10_000)

    def _list(self, start: str, prefix: str, page: int) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        next_name: str | None = start
        while next_name is not None:
            next_name = self._list_page(entries, next_name, prefix, page)
        return entries

    def _list_page(self, entries: dict[str, Entry], start: str, prefix: str, page: int) -> str | None:
        """Add one page of names under `prefix` from `start` on to `entries` (one listing call, billed as B2
        bills it); the name the next page starts at, None at the end."""
        response = retrying("listing the cache", lambda: self.api.session.list_file_names(
            self.bucket.id_, start_file_name=start, max_file_count=page, prefix=prefix or None))
        files = response["files"]
        self.counter.add("b2_list_file_names", max(1, math.ceil(len(files) / 1000)))
        for file in files:
            if file.get("action", "upload") == "upload":
                name = file["fileName"][len(self.prefix):]
                entries[name] = Entry(name, file.get("contentLength", 0), dict(file.get("fileInfo") or {}),
                                      file.get("uploadTimestamp", 0))
        return response.get("nextFileName")

    def lookup(self, names: Collection[str]) -> dict[str, Entry]:
        """Those of `names` that are stored (their newest versions), at a cost that grows with len(names), not
        with the cache: each name checked by name (class B), or listing pages from the names on (class C) when
        there are many and a page answers for enough of them."""
        pending = sorted(set(names))
        found: dict[str, Entry] = {}
        while len(pending) > HEAD_LIMIT:
            answered = self._lookup_page(pending, found)
            pending = pending[answered:]
            if answered < PAGE_WORTH:
                break
        with ThreadPoolExecutor(max_workers=LOOKUP_JOBS, thread_name_prefix="topdeck-lookup") as pool:
            for name, entry in zip(pending, pool.map(self._head, pending), strict=True):
                if entry is not None:
                    found[name] = entry
        return found

    def _lookup_page(self, pending: list[str], found: dict[str, Entry]) -> int:
        """One listing page from pending[0] on; adds the pending names it holds to `found` and returns how many
        pending names (from the first) it answered for, present or not (at least one)."""
        entries: dict[str, Entry] = {}
        next_name = self._list_page(entries, self.prefix + pending[0], self.prefix, PAGE)
        answered = len(pending) if next_name is None else bisect.bisect_left(pending, next_name[len(self.prefix):])
        for name in pending[:answered]:
            if name in entries:
                found[name] = entries[name]
        return max(answered, 1)

    def _head(self, name: str) -> Entry | None:
        def head() -> Entry | None:
            try:
                version = self.bucket.get_file_info_by_name(self.prefix + name)
            except FileNotPresent:
                return None
            except B2Error as error:
                if "403" in str(error):  # a HEAD's answer has no body to say why
                    raise CacheError(f"checking {name}: B2 refused it (403): the B2 daily download cap is exceeded, "
                                     "or the key may not read files") from None
                raise
            return Entry(name, version.size, dict(version.file_info), version.upload_timestamp)

        return retrying(f"checking {name}", head)

    def put_bytes(self, name: str, data: bytes, *, content_type: str, cache_control: str | None = None,
                  info: Mapping[str, str] | None = None) -> None:
        retrying(f"uploading {name}", lambda: self.bucket.upload_bytes(
            data, self.prefix + name, content_type=content_type, file_info=dict(info or {}),
            cache_control=cache_control))

    def put_stream(self, name: str, stream: BinaryIO, *, content_type: str) -> None:
        part = max(STREAM_PART_SIZE, self.api.account_info.get_absolute_minimum_part_size())
        with b2_errors(f"uploading {name}"):
            self.bucket.upload_unbound_stream(stream, self.prefix + name, content_type=content_type,
                                              recommended_upload_part_size=part, min_part_size=part,
                                              buffer_size=part, buffers_count=2)

    def get_bytes(self, name: str) -> bytes:
        def download() -> bytes:
            buffer = io.BytesIO()
            try:
                self.bucket.download_file_by_name(self.prefix + name).save(buffer)
            except FileNotPresent:
                raise CacheMissing(f"{name} is not in the cache") from None
            return buffer.getvalue()

        return retrying(f"downloading {name}", download)

    def versions(self, name: str) -> list[Entry]:
        found = retrying(f"listing the versions of {name}", lambda: [
            v for v in self.bucket.list_file_versions(self.prefix + name) if v.action == "upload"])
        self.counter.add("b2_list_file_versions", max(1, math.ceil(len(found) / 1000)))
        return [Entry(name, v.size, dict(v.file_info), v.upload_timestamp) for v in found]

    def transactions(self) -> Transactions:
        return self.counter.transactions()

    def capabilities(self) -> list[str]:
        return list((self.api.account_info.get_allowed() or {}).get("capabilities") or [])

    def all_versions(self) -> list[Entry]:
        def list_all() -> list[Entry]:
            return [Entry(v.file_name[len(self.prefix):], v.size, dict(v.file_info), v.upload_timestamp, v.id_)
                    for v, _ in self.bucket.ls(self.prefix.rstrip("/"), recursive=True, latest_only=False,
                                               fetch_count=10_000)
                    if v.action == "upload"]

        found = retrying("listing every version in the cache", list_all)
        self.counter.add("b2_list_file_versions", max(1, math.ceil(len(found) / 1000)))
        return found

    def delete_version(self, entry: Entry) -> None:
        def delete() -> None:
            try:
                self.api.delete_file_version(entry.file_id, self.prefix + entry.name)
            except FileNotPresent:
                pass

        retrying(f"deleting {entry.name}", delete)


def _account_info(path: Path | None) -> AbstractAccountInfo:
    """b2sdk's account info: in memory, or its SQLite database at `path` (created 0600 by b2sdk; made 0600 here
    if it was not), started afresh when the file is not a database b2sdk can read."""
    if path is None:
        return InMemoryAccountInfo()
    # it logs a traceback at ERROR for each value a database without an account yet lacks (a first run)
    logging.getLogger("b2sdk._internal.account_info.sqlite_account_info").setLevel(logging.CRITICAL)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if path.exists():
        os.chmod(path, 0o600)
    try:
        return SqliteAccountInfo(file_name=str(path))
    except (CorruptAccountInfo, sqlite3.Error):
        path.unlink(missing_ok=True)
        return SqliteAccountInfo(file_name=str(path))


def _authorized(info: AbstractAccountInfo, realm: str, key_id: str) -> bool:
    """Whether `info` already holds an authorization of `key_id` in `realm` (a stored one, from an earlier run)."""
    try:
        return bool(info.get_account_auth_token()) and info.get_realm() == realm \
            and info.get_application_key_id() == key_id
    except MissingAccountData:
        return False


def retrying(doing: str, operation: Callable[[], T], attempts: int = ATTEMPTS,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """`operation()`, tried again (with a growing pause) while it fails with a TransientCacheError."""
    for attempt in range(attempts):
        try:
            with b2_errors(doing):
                return operation()
        except TransientCacheError:
            if attempt == attempts - 1:
                raise
            sleep(BACKOFF * 2**attempt)
    raise AssertionError("unreachable")


@contextmanager
def b2_errors(doing: str) -> Iterator[None]:
    """Turn b2sdk's exceptions into one-line CacheErrors (credentials never appear in them); the ones worth
    another try (503, timeouts, dropped connections) into TransientCacheErrors."""
    try:
        yield
    except CacheError:
        raise
    except TransactionCapExceeded:
        raise CacheError(f"{doing}: the B2 daily transaction cap is exceeded (raise it in the B2 account)") from None
    except B2Error as error:
        text = str(error)
        if "download_cap_exceeded" in text:
            raise CacheError(f"{doing}: the B2 daily download cap is exceeded (raise it in the B2 account)") from None
        if isinstance(error, Unauthorized):  # with an expired token b2sdk tried the stored key, and B2 refused it too
            raise CacheError(f"{doing}: B2 refused the application key ({_first_line(text)})") from None
        if isinstance(error, TRANSIENT):
            raise TransientCacheError(f"{doing}: B2 did not answer ({_network_reason(text)})") from None
        raise CacheError(f"{doing}: B2 error: {_first_line(text)}") from None
    except (requests.RequestException, OSError) as error:
        raise TransientCacheError(f"{doing}: B2 did not answer ({_network_reason(str(error))})") from None


_NETWORK_REASONS = (
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("Timeout", "timed out"),
    ("Name or service not known", "cannot resolve the host name"),
    ("NameResolutionError", "cannot resolve the host name"),
    ("Temporary failure in name resolution", "cannot resolve the host name"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
    ("RemoteDisconnected", "the connection was dropped"),
    ("Connection aborted", "the connection was dropped"),
    ("Connection reset", "the connection was reset"),
    ("service_unavailable", "503 service unavailable"),
    ("too_many_requests", "429 too many requests"),
    ("FAILED to upload after", "the upload failed 5 times"),
)


def _network_reason(text: str) -> str:
    """A short reason from urllib3's or b2sdk's long, nested error text."""
    for needle, reason in _NETWORK_REASONS:
        if needle in text:
            return reason
    return _first_line(text)


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0][:200]
