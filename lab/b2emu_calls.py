"""The B2 emulator's calls: one handler per B2 native API call and for downloads by name and id,
translating an HTTP request into LabSimulator calls and the result into an answer, and the route
table that gives every call its transaction class."""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import mimetypes
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from b2sdk._internal.raw_api import API_VERSION
from b2sdk._internal.raw_simulator import FileSimulator, KeySimulator
from b2sdk._internal.utils import b2_url_decode

from .b2emu_account import (
    ACCOUNT_ID,
    B2ApiError,
    LabSimulator,
    bad_request,
    error_answer,
    not_found,
)

logger = logging.getLogger(__name__)

FILE_PATH_PREFIX = "/file/"
_API_PATH = re.compile(r"/b2api/(v\d+)/(b2_\w+)(?:/.*)?")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_FILE_INFO_PREFIX = "x-bz-info-"
_AUTO_CONTENT_TYPE = "b2/x-auto"
_MAX_LISTED_FILES = 10_000
_FILES_PER_LISTING_TRANSACTION = 1_000


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes

    @property
    def token(self) -> str:
        return self.headers.get("Authorization", "")

    @property
    def api_version(self) -> str:
        """The B2 API version in the path: b2sdk.v2 speaks v3, b2sdk's newest interface v4."""
        match = _API_PATH.fullmatch(self.path)
        return match.group(1) if match else API_VERSION

    @property
    def on_file_path(self) -> bool:
        return self.path.startswith(FILE_PATH_PREFIX)

    def params(self) -> dict[str, Any]:
        """The JSON body of an API call (the query string for a GET)."""
        if not self.body:
            return dict(self.query)
        try:
            params = json.loads(self.body)
        except ValueError as error:
            raise B2ApiError(400, "bad_json", f"request body is not JSON: {error}") from error
        if not isinstance(params, dict):
            raise B2ApiError(400, "bad_json", "request body must be a JSON object")
        return params


@dataclass
class Answer:
    status: int
    body: bytes | memoryview = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Answer:
        return cls(
            status,
            json.dumps(value, default=_sorted_list).encode(),
            {"Content-Type": "application/json;charset=utf-8", **(headers or {})},
        )

    @classmethod
    def error(cls, error: B2ApiError, headers: Mapping[str, str] | None = None) -> Answer:
        return cls.json(error.as_json(), error.status, headers)


def _sorted_list(value: Any) -> list[Any]:
    """RawSimulator keeps some JSON arrays (a bucket's options) as sets."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def call_name(method: str, path: str) -> str | None:
    """The B2 call a request makes, or None if it is none of B2's."""
    if path.startswith(FILE_PATH_PREFIX):
        return "b2_get_file_info_by_name" if method == "HEAD" else "b2_download_file_by_name"
    match = _API_PATH.fullmatch(path)
    return match.group(2) if match else None


class B2Calls:
    """The handlers of B2's calls over one LabSimulator, serialised by one lock."""

    def __init__(self, sim: LabSimulator, recommended_part_size: int, absolute_minimum_part_size: int) -> None:
        self.sim = sim
        self.url = ""
        self.recommended_part_size = recommended_part_size
        self.absolute_minimum_part_size = absolute_minimum_part_size
        self.lock = threading.Lock()

    def answer(self, route: Route, request: Request) -> tuple[Answer, int]:
        """The answer to a request and how many transactions B2 would bill for it."""
        try:
            with self.lock:
                result = route.handler(self, request)
        except Exception as error:
            b2_error = error_answer(error)
            if b2_error is None:
                logger.exception("unexpected error in %s", request.path)
                b2_error = B2ApiError(500, "internal_error", repr(error))
            return Answer.error(b2_error), 1
        if isinstance(result, Answer):
            return result, 1
        return Answer.json(result), route.billed(result)

    def create_bucket_directly(self, name: str, public: bool) -> str:
        with self.lock:
            bucket_type = "allPublic" if public else "allPrivate"
            bucket = self.sim.create_bucket(self.sim.API_URL, self.sim.admin_token, ACCOUNT_ID, name, bucket_type)
        return bucket["bucketId"]

    def add_bucket_key(self, key_id: str, key: str, bucket_name: str, capabilities: list[str]) -> None:
        """An application key restricted to one bucket, as topdeck's minimal key is."""
        with self.lock:
            bucket = self.sim.bucket_by_name(bucket_name)
            if bucket is None:
                raise ValueError(f"no bucket {bucket_name!r} to restrict a key to")
            self.sim.key_id_to_key[key_id] = KeySimulator(
                account_id=ACCOUNT_ID,
                name=f"{bucket_name}-only",
                application_key_id=key_id,
                key=key,
                capabilities=capabilities,
                expiration_timestamp_or_none=None,
                buckets_or_none=[{"id": bucket.bucket_id, "name": bucket_name}],
                name_prefix_or_none=None,
            )

    def _account_token(self, request: Request) -> str:
        if not self.sim.is_account_token(request.token):
            raise B2ApiError(401, "bad_auth_token", "Invalid authorization token")
        return request.token

    def _upload_token(self, request: Request) -> str:
        if not self.sim.is_upload_token(request.token):
            raise B2ApiError(401, "bad_auth_token", "Invalid upload authorization token")
        return request.token

    def _upload_url(self, request: Request, call: str, owner_id: str) -> str:
        return f"{self.url}/b2api/{request.api_version}/{call}/{owner_id}"

    # Accounts and buckets

    def authorize_account(self, request: Request) -> dict[str, Any]:
        key_id, key = _basic_credentials(request.token)
        answer = self.sim.authorize_account("", key_id, key)
        # v4 answers hold the key's restrictions in "allowed" (as RawSimulator has them); v3
        # answers, which b2sdk.v2 reads, hold them flat, so the answer carries both.
        buckets = answer["apiInfo"]["storageApi"]["allowed"].get("buckets") or [{"id": None, "name": None}]
        answer["apiInfo"]["storageApi"].update(
            bucketId=buckets[0]["id"],
            bucketName=buckets[0]["name"],
            apiUrl=self.url,
            downloadUrl=self.url,
            s3ApiUrl=self.url,
            recommendedPartSize=self.recommended_part_size,
            absoluteMinimumPartSize=self.absolute_minimum_part_size,
        )
        return answer

    def list_buckets(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        _check_account_id(params)
        return self.sim.list_buckets(
            self.sim.API_URL,
            token,
            ACCOUNT_ID,
            bucket_id=params.get("bucketId"),
            bucket_name=params.get("bucketName"),
        )

    def create_bucket(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        _check_account_id(params)
        _reject_encryption(params.get("defaultServerSideEncryption"))
        bucket_type = _required(params, "bucketType")
        if bucket_type not in ("allPublic", "allPrivate"):
            raise bad_request(f"bucketType must be allPublic or allPrivate, not {bucket_type}")
        return self.sim.create_bucket(
            self.sim.API_URL,
            token,
            ACCOUNT_ID,
            _required(params, "bucketName"),
            bucket_type,
            bucket_info=params.get("bucketInfo"),
            cors_rules=params.get("corsRules"),
            lifecycle_rules=params.get("lifecycleRules"),
        )

    # Simple uploads

    def get_upload_url(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        bucket_id = _required(request.params(), "bucketId")
        answer = self.sim.get_upload_url(self.sim.API_URL, token, bucket_id)
        answer["uploadUrl"] = self._upload_url(request, "b2_upload_file", bucket_id)
        return answer

    def upload_file(self, request: Request) -> dict[str, Any]:
        token = self._upload_token(request)
        _reject_encryption_headers(request.headers)
        file_name = b2_url_decode(_required_header(request.headers, "X-Bz-File-Name"))
        return self.sim.upload_file(
            token,
            token,
            file_name,
            len(request.body),
            _content_type(request.headers.get("Content-Type"), file_name),
            _required_header(request.headers, "X-Bz-Content-Sha1"),
            _file_info(request.headers),
            io.BytesIO(request.body),
        )

    # Large files

    def start_large_file(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        _reject_encryption(params.get("serverSideEncryption"))
        file_name = _required(params, "fileName")
        return self.sim.start_large_file(
            self.sim.API_URL,
            token,
            _required(params, "bucketId"),
            file_name,
            _content_type(params.get("contentType"), file_name),
            params.get("fileInfo") or {},
        )

    def get_upload_part_url(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        file_id = _required(request.params(), "fileId")
        self._unfinished_large_file(file_id)
        answer = self.sim.get_upload_part_url(self.sim.API_URL, token, file_id)
        answer["uploadUrl"] = self._upload_url(request, "b2_upload_part", file_id)
        return answer

    def upload_part(self, request: Request) -> dict[str, Any]:
        token = self._upload_token(request)
        _reject_encryption_headers(request.headers)
        part_number = _required_header(request.headers, "X-Bz-Part-Number")
        if not part_number.isdigit():
            raise bad_request(f"X-Bz-Part-Number must be a number, not {part_number}")
        return self.sim.upload_part(
            token,
            token,
            int(part_number),
            len(request.body),
            _required_header(request.headers, "X-Bz-Content-Sha1"),
            io.BytesIO(request.body),
        )

    def finish_large_file(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        file_id = _required(params, "fileId")
        self._check_part_sizes(self._unfinished_large_file(file_id))
        return self.sim.finish_large_file(self.sim.API_URL, token, file_id, _required(params, "partSha1Array"))

    def cancel_large_file(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        file_id = _required(request.params(), "fileId")
        self._unfinished_large_file(file_id)
        return self.sim.cancel_large_file(self.sim.API_URL, token, file_id)

    def list_parts(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        file_id = _required(params, "fileId")
        self._unfinished_large_file(file_id)
        return self.sim.list_parts(
            self.sim.API_URL, token, file_id, params.get("startPartNumber"), params.get("maxPartCount")
        )

    def list_unfinished_large_files(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        return self.sim.list_unfinished_large_files(
            self.sim.API_URL,
            token,
            _required(params, "bucketId"),
            start_file_id=params.get("startFileId"),
            max_file_count=params.get("maxFileCount"),
            prefix=params.get("namePrefix"),
        )

    def _unfinished_large_file(self, file_id: str) -> FileSimulator:
        file = self.sim.file_by_id(file_id)
        if file is None or file.action != "start":
            raise bad_request(f"no unfinished large file with id {file_id}")
        return file

    def _check_part_sizes(self, file: FileSimulator) -> None:
        parts = [part for part in file.parts if part is not None]
        for part in parts[:-1]:
            if part.content_length < self.absolute_minimum_part_size:
                raise bad_request(
                    f"Part number {part.part_number} is smaller than the minimum part size "
                    f"({part.content_length} < {self.absolute_minimum_part_size})"
                )

    # Listing, hiding, deleting

    def list_file_names(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        return self.sim.list_file_names(
            self.sim.API_URL,
            token,
            _required(params, "bucketId"),
            start_file_name=params.get("startFileName"),
            max_file_count=_max_file_count(params),
            prefix=params.get("prefix"),
        )

    def list_file_versions(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        return self.sim.list_file_versions(
            self.sim.API_URL,
            token,
            _required(params, "bucketId"),
            start_file_name=params.get("startFileName"),
            start_file_id=params.get("startFileId"),
            max_file_count=_max_file_count(params),
            prefix=params.get("prefix"),
        )

    def hide_file(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        bucket_id = _required(params, "bucketId")
        file_name = _required(params, "fileName")
        newest = self.sim.newest_version(self.sim.bucket_by_id(bucket_id), file_name)
        if newest is None:
            raise B2ApiError(400, "no_such_file", f"File not present: {file_name}")
        if newest.action == "hide":
            raise B2ApiError(400, "already_hidden", f"File already hidden: {file_name}")
        return self.sim.hide_file(self.sim.API_URL, token, bucket_id, file_name)

    def delete_file_version(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        params = request.params()
        return self.sim.delete_file_version(
            self.sim.API_URL, token, _required(params, "fileId"), _required(params, "fileName")
        )

    def get_file_info(self, request: Request) -> dict[str, Any]:
        token = self._account_token(request)
        file_id = _required(request.params(), "fileId")
        if self.sim.file_by_id(file_id) is None:
            raise not_found(f"File not present: {file_id}")
        return self.sim.get_file_info_by_id(self.sim.API_URL, token, file_id)

    # Downloads

    def download_file_by_name(self, request: Request) -> Answer:
        bucket_name, _, file_name = request.path.removeprefix(FILE_PATH_PREFIX).partition("/")
        bucket = self.sim.bucket_by_name(bucket_name)
        if bucket is None:
            raise not_found(f"Bucket name is not valid: {bucket_name}")
        self._check_download_auth(request, bucket.bucket_type)
        file = self.sim.newest_version(bucket, file_name)
        if file is None or file.action != "upload":
            raise not_found(f"File with such name does not exist: {file_name}")
        return _file_answer(file, request.headers.get("Range"))

    def download_file_by_id(self, request: Request) -> Answer:
        file_id = _required(request.query, "fileId")
        file = self.sim.file_by_id(file_id)
        if file is None or file.action != "upload":
            raise not_found(f"File with such id does not exist: {file_id}")
        self._check_download_auth(request, file.bucket.bucket_type)
        return _file_answer(file, request.headers.get("Range"))

    def _check_download_auth(self, request: Request, bucket_type: str) -> None:
        if request.token:
            self._account_token(request)
        elif bucket_type != "allPublic":
            raise B2ApiError(401, "unauthorized", "The bucket is private: an authorization token is needed")


@dataclass(frozen=True)
class Route:
    transaction_class: str
    handler: Callable[[B2Calls, Request], dict[str, Any] | Answer]
    billed: Callable[[dict[str, Any]], int] = lambda answer: 1
    downloads: bool = False


def _per_thousand_files(answer: dict[str, Any]) -> int:
    """B2 bills a listing as one class C transaction per started thousand files returned."""
    return max(1, math.ceil(len(answer["files"]) / _FILES_PER_LISTING_TRANSACTION))


ROUTES: dict[str, Route] = {
    "b2_authorize_account": Route("C", B2Calls.authorize_account),
    "b2_list_buckets": Route("C", B2Calls.list_buckets),
    "b2_create_bucket": Route("C", B2Calls.create_bucket),
    "b2_get_upload_url": Route("A", B2Calls.get_upload_url),
    "b2_upload_file": Route("A", B2Calls.upload_file),
    "b2_start_large_file": Route("A", B2Calls.start_large_file),
    "b2_get_upload_part_url": Route("A", B2Calls.get_upload_part_url),
    "b2_upload_part": Route("A", B2Calls.upload_part),
    "b2_finish_large_file": Route("A", B2Calls.finish_large_file),
    "b2_cancel_large_file": Route("A", B2Calls.cancel_large_file),
    "b2_list_parts": Route("C", B2Calls.list_parts),
    "b2_list_unfinished_large_files": Route("C", B2Calls.list_unfinished_large_files),
    "b2_list_file_names": Route("C", B2Calls.list_file_names, _per_thousand_files),
    "b2_list_file_versions": Route("C", B2Calls.list_file_versions, _per_thousand_files),
    "b2_hide_file": Route("A", B2Calls.hide_file),
    "b2_delete_file_version": Route("A", B2Calls.delete_file_version),
    "b2_get_file_info": Route("B", B2Calls.get_file_info),
    "b2_download_file_by_name": Route("B", B2Calls.download_file_by_name, downloads=True),
    "b2_get_file_info_by_name": Route("B", B2Calls.download_file_by_name),
    "b2_download_file_by_id": Route("B", B2Calls.download_file_by_id, downloads=True),
}


def _file_answer(file: FileSimulator, range_header: str | None) -> Answer:
    data = memoryview(file.data_bytes)
    headers = file.as_download_headers()
    del headers["content-length"]
    headers["Accept-Ranges"] = "bytes"
    span = _requested_span(range_header, len(data))
    if span is None:
        return Answer(200, data, headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return Answer(206, data[start : end + 1], headers)


def _requested_span(range_header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a Range header asks for; None for the whole file (also for the
    forms B2 does not serve, such as several ranges)."""
    match = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start > end:
        raise B2ApiError(416, "range_not_satisfiable", f"The range {range_header} is outside the file")
    return start, end


def _basic_credentials(authorization: str) -> tuple[str, str]:
    scheme, _, encoded = authorization.partition(" ")
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    key_id, colon, key = decoded.partition(":")
    if scheme != "Basic" or not colon:
        raise B2ApiError(401, "unauthorized", "Basic authorization with key id and key is needed")
    return key_id, key


def _check_account_id(params: dict[str, Any]) -> None:
    if _required(params, "accountId") != ACCOUNT_ID:
        raise B2ApiError(401, "unauthorized", "The account id does not match the authorization token")


def _required(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None:
        raise bad_request(f"required field {name} is missing")
    return value


def _required_header(headers: Message, name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise bad_request(f"required header {name} is missing")
    return value


def _max_file_count(params: dict[str, Any]) -> int:
    return min(params.get("maxFileCount") or 100, _MAX_LISTED_FILES)


def _content_type(requested: str | None, file_name: str) -> str:
    """B2 guesses the type from the name when asked to (b2/x-auto, or no type at all)."""
    if requested and requested != _AUTO_CONTENT_TYPE:
        return requested
    return mimetypes.guess_type(file_name)[0] or "application/octet-stream"


def _file_info(headers: Message) -> dict[str, str]:
    return {
        name[len(_FILE_INFO_PREFIX) :]: b2_url_decode(value)
        for name, value in headers.items()
        if name.lower().startswith(_FILE_INFO_PREFIX)
    }


def _reject_encryption(setting: dict[str, Any] | None) -> None:
    if setting and setting.get("mode") not in (None, "none"):
        raise bad_request("server-side encryption is not emulated")


def _reject_encryption_headers(headers: Message) -> None:
    if any(name.lower().startswith("x-bz-server-side-encryption") for name in headers.keys()):
        raise bad_request("server-side encryption is not emulated")
