"""The B2 emulator's account: b2sdk's RawSimulator adapted to live for hours behind a threaded HTTP
server (unbounded ids and counters, no copies of uploaded bodies, one lab key), lookups the HTTP
layer needs, and the translation of the simulator's exceptions into B2's JSON error answers."""

from __future__ import annotations

import itertools
import time
from typing import Any, BinaryIO

from b2sdk._internal.encryption.setting import SSE_NONE
from b2sdk._internal.exception import (
    AccessDenied,
    B2Error,
    BadJson,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    DuplicateBucketName,
    FileNotPresent,
    FileSha1Mismatch,
    MissingPart,
    NonExistentBucket,
    PartSha1Mismatch,
    Unauthorized,
    UnsatisfiableRange,
)
from b2sdk._internal.raw_api import ALL_CAPABILITIES
from b2sdk._internal.raw_simulator import (
    BucketSimulator,
    FileSimulator,
    KeySimulator,
    RawSimulator,
)

ACCOUNT_ID = "lab-account"
# Fifteen-digit ids counting down: newest first, and RawSimulator compares some ids as strings.
_FIRST_FILE_NUMBER = 10**15 - 1
_UPLOAD_TOKEN_PREFIX = "https://upload.example.com/"


class B2ApiError(Exception):
    """An error answer in B2's format: HTTP status, B2 error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message}


def bad_request(message: str) -> B2ApiError:
    return B2ApiError(400, "bad_request", message)


def not_found(message: str) -> B2ApiError:
    return B2ApiError(404, "not_found", message)


# Checked in order; the codes are the ones b2sdk's interpret_b2_error maps back to these exceptions.
_SIMULATOR_ERRORS: list[tuple[type[Exception], int, str]] = [
    (NonExistentBucket, 400, "bad_bucket_id"),
    (FileNotPresent, 404, "not_found"),
    (DuplicateBucketName, 400, "duplicate_bucket_name"),
    (BadJson, 400, "bad_json"),
    (MissingPart, 400, "missing_part"),
    (FileSha1Mismatch, 400, "bad_request"),
    (PartSha1Mismatch, 400, "bad_request"),
    (ChecksumMismatch, 400, "bad_request"),
    (Conflict, 409, "conflict"),
    (UnsatisfiableRange, 416, "range_not_satisfiable"),
    (AccessDenied, 403, "access_denied"),
    (KeyError, 400, "bad_request"),
    (ValueError, 400, "bad_request"),
    (B2Error, 400, "bad_request"),
]


def error_answer(error: Exception) -> B2ApiError | None:
    """The B2 error answer for an exception of the simulator, or None for an unexpected one."""
    if isinstance(error, B2ApiError):
        return error
    if isinstance(error, Unauthorized):
        return B2ApiError(401, error.code, error.message)
    if isinstance(error, BadRequest):
        return B2ApiError(400, error.code, error.message)
    for error_type, status, code in _SIMULATOR_ERRORS:
        if isinstance(error, error_type):
            message = f"no such id: {error.args[0]}" if isinstance(error, KeyError) else str(error)
            return B2ApiError(status, code, message)
    return None


def _milliseconds_now() -> int:
    return int(time.time() * 1000)


class _LabFile(FileSimulator):
    def finish(self, part_sha1_array: list[str]) -> None:
        super().finish(part_sha1_array)
        # The joined data replaces the parts; keeping both would hold a large file twice.
        self.parts.clear()


class _LabBucket(BucketSimulator):
    FILE_SIMULATOR_CLASS = _LabFile
    FIRST_FILE_NUMBER = _FIRST_FILE_NUMBER
    FIRST_FILE_ID = str(_FIRST_FILE_NUMBER)

    def __init__(
        self, api: LabSimulator, *args: Any, default_server_side_encryption: Any = None, **kwargs: Any
    ) -> None:
        # Real buckets are created unencrypted unless asked; RawSimulator defaults to SSE-B2.
        super().__init__(
            api, *args, default_server_side_encryption=default_server_side_encryption or SSE_NONE, **kwargs
        )
        # RawSimulator's counters stop after 200 upload URLs and 4999 uploads per bucket, and
        # its file ids restart in every bucket although they must be unique in the account.
        self.upload_url_counter = itertools.count()
        self.upload_timestamp_counter = iter(_milliseconds_now, None)
        self.file_id_counter = api.file_id_counter

    def _simulate_chunked_post(self, stream: BinaryIO, content_length: int, *args: Any, **kwargs: Any) -> bytes:
        # The stream is a BytesIO over the request body: reading it whole returns that very bytes
        # object, where RawSimulator would read it twice in 8 KiB chunks and join them.
        stream.seek(0)
        return stream.read()


class LabSimulator(RawSimulator):
    """RawSimulator with one account whose only key is the lab's key id and key.

    Not thread-safe: callers hold one lock around every use."""

    BUCKET_SIMULATOR_CLASS = _LabBucket

    def __init__(self, key_id: str, key: str) -> None:
        super().__init__()
        self.bucket_id_counter = itertools.count()
        self.file_id_counter = iter(range(_FIRST_FILE_NUMBER, 0, -1))
        self.key_id_to_key[key_id] = KeySimulator(
            account_id=ACCOUNT_ID,
            name="lab",
            application_key_id=key_id,
            key=key,
            capabilities=ALL_CAPABILITIES,
            expiration_timestamp_or_none=None,
            buckets_or_none=None,
            name_prefix_or_none=None,
        )
        self.admin_token: str = self.authorize_account("", key_id, key)["authorizationToken"]

    def _assert_account_auth(self, api_url, account_auth_token, account_id, capability, bucket_id=None,  # type: ignore[no-untyped-def]
                             file_name=None):
        """RawSimulator passes no bucket id on most calls, which would fail every bucket-restricted key.

        Capabilities are always checked. Where RawSimulator gives no bucket id, the key's own bucket is
        assumed, so the bucket restriction is enforced only on the calls that name a bucket."""
        key = self.auth_token_to_key.get(account_auth_token)
        if bucket_id is None and key is not None and key.buckets_or_none:
            bucket_id = key.buckets_or_none[0]["id"]
        super()._assert_account_auth(api_url, account_auth_token, account_id, capability, bucket_id, file_name)

    def is_account_token(self, token: str) -> bool:
        return token in self.auth_token_to_key

    def is_upload_token(self, token: str) -> bool:
        """Upload tokens are RawSimulator's upload URLs, which end with the account token."""
        return token.startswith(_UPLOAD_TOKEN_PREFIX) and self.is_account_token(token.rsplit("/", 1)[-1])

    def bucket_by_id(self, bucket_id: str) -> BucketSimulator:
        bucket = self.bucket_id_to_bucket.get(bucket_id)
        if bucket is None:
            raise NonExistentBucket(bucket_id)
        return bucket

    def bucket_by_name(self, bucket_name: str) -> BucketSimulator | None:
        return self.bucket_name_to_bucket.get(bucket_name)

    def file_by_id(self, file_id: str) -> FileSimulator | None:
        bucket_id = self.file_id_to_bucket_id.get(file_id)
        if bucket_id not in self.bucket_id_to_bucket:
            return None
        return self.bucket_id_to_bucket[bucket_id].file_id_to_file.get(file_id)

    @staticmethod
    def newest_version(bucket: BucketSimulator, file_name: str) -> FileSimulator | None:
        """The newest upload or hide marker of a name (unfinished large files do not count)."""
        versions = [
            file
            for (name, _), file in bucket.file_name_and_id_to_file.items()
            if name == file_name and file.action in ("upload", "hide")
        ]
        return min(versions, key=lambda file: int(file.file_id), default=None)
