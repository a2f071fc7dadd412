"""The B2 emulator over real HTTP: the unmodified b2sdk and plain urllib (as Nix fetches) against it."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from b2sdk.v2 import B2Api, Bucket, InMemoryAccountInfo
from b2sdk.v2.exception import (
    B2Error,
    BadRequest,
    FileAlreadyHidden,
    FileNotPresent,
    TransactionCapExceeded,
    Unauthorized,
)

from topdeck.lab.b2emu import B2Emulator
from topdeck.lab.b2emu_meter import FaultKind, FaultPicker, FaultPlan

KEY_ID = "lab-key-id"
KEY = "lab-secret"
PART_SIZE = 1_000_000
BUCKET = "lab-cache"


@pytest.fixture
def emulator() -> Iterator[B2Emulator]:
    with B2Emulator(
        KEY_ID, KEY, recommended_part_size=PART_SIZE, absolute_minimum_part_size=PART_SIZE
    ).start() as running:
        yield running


def authorized_api(url: str) -> B2Api:
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(url, KEY_ID, KEY)
    return api


@pytest.fixture
def api(emulator: B2Emulator) -> B2Api:
    return authorized_api(emulator.url)


@pytest.fixture
def bucket(api: B2Api) -> Bucket:
    return api.create_bucket(BUCKET, "allPublic")


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, Message, bytes]:
    """Status, headers and body of a plain HTTP request, error answers included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def download(bucket: Bucket, name: str) -> bytes:
    out = io.BytesIO()
    bucket.download_file_by_name(name).save(out)
    return out.getvalue()


def download_by_id(bucket: Bucket, file_id: str) -> bytes:
    out = io.BytesIO()
    bucket.download_file_by_id(file_id).save(out)
    return out.getvalue()


def classes(emulator: B2Emulator) -> tuple[int, int, int]:
    counters = emulator.counters()
    return counters["A"], counters["B"], counters["C"]


# Accounts and buckets


def test_authorize_advertises_the_emulator_and_its_part_sizes(emulator: B2Emulator, api: B2Api) -> None:
    info = api.account_info
    assert info.get_api_url() == emulator.url
    assert info.get_download_url() == emulator.url
    assert info.get_recommended_part_size() == PART_SIZE
    assert info.get_absolute_minimum_part_size() == PART_SIZE


def test_authorize_with_a_wrong_key_is_refused(emulator: B2Emulator) -> None:
    with pytest.raises(Unauthorized):
        B2Api(InMemoryAccountInfo()).authorize_account(emulator.url, KEY_ID, "wrong")
    with pytest.raises(Unauthorized):
        B2Api(InMemoryAccountInfo()).authorize_account(emulator.url, "other-id", KEY)


def test_a_wrong_token_gets_b2s_401_answer(emulator: B2Emulator) -> None:
    status, _, body = fetch(
        f"{emulator.url}/b2api/v4/b2_list_buckets",
        "POST",
        {"Authorization": "forged", "Content-Type": "application/json"},
        json.dumps({"accountId": "lab-account"}).encode(),
    )
    assert status == 401
    assert json.loads(body) == {"status": 401, "code": "bad_auth_token", "message": "Invalid authorization token"}


def test_create_and_list_buckets(emulator: B2Emulator, api: B2Api) -> None:
    api.create_bucket(BUCKET, "allPublic")
    api.create_bucket("lab-private", "allPrivate")
    emulator.create_bucket("lab-direct")
    buckets = {bucket.name: bucket.type_ for bucket in api.list_buckets()}
    assert buckets == {BUCKET: "allPublic", "lab-private": "allPrivate", "lab-direct": "allPublic"}
    assert api.get_bucket_by_name("lab-private").type_ == "allPrivate"


# Uploads and downloads


def test_small_upload_downloads_equal_through_b2sdk_and_plain_http(emulator: B2Emulator, bucket: Bucket) -> None:
    data = b"StorePath: /nix/store/abc-hello\n"
    bucket.upload_bytes(data, "abc.narinfo", content_type="text/x-nix-narinfo", cache_control="max-age=300")

    assert download(bucket, "abc.narinfo") == data
    status, headers, body = fetch(f"{emulator.url}/file/{BUCKET}/abc.narinfo")
    assert (status, body) == (200, data)
    assert headers["Content-Type"] == "text/x-nix-narinfo"
    assert headers["Content-Length"] == str(len(data))
    assert headers["Cache-Control"] == "max-age=300"
    assert "Content-Encoding" not in headers


def test_head_and_range_requests_on_the_public_path(emulator: B2Emulator, bucket: Bucket) -> None:
    bucket.upload_bytes(b"0123456789", "nar/digits.nar")
    url = f"{emulator.url}/file/{BUCKET}/nar/digits.nar"

    status, headers, body = fetch(url, "HEAD")
    assert (status, headers["Content-Length"], body) == (200, "10", b"")
    status, headers, body = fetch(url, headers={"Range": "bytes=2-5"})
    assert (status, body, headers["Content-Range"]) == (206, b"2345", "bytes 2-5/10")
    status, _, body = fetch(url, headers={"Range": "bytes=7-"})
    assert (status, body) == (206, b"789")
    status, _, body = fetch(url, headers={"Range": "bytes=20-30"})
    assert status == 416
    assert json.loads(body)["code"] == "range_not_satisfiable"


def test_absent_keys_and_buckets_are_404(emulator: B2Emulator, bucket: Bucket) -> None:
    status, headers, body = fetch(f"{emulator.url}/file/{BUCKET}/missing.narinfo")
    assert status == 404
    assert json.loads(body)["code"] == "not_found"
    assert fetch(f"{emulator.url}/file/no-such-bucket/x")[0] == 404
    with pytest.raises(FileNotPresent):
        download(bucket, "missing.narinfo")


def test_private_buckets_need_authorization(emulator: B2Emulator, api: B2Api) -> None:
    private = api.create_bucket("lab-private", "allPrivate")
    private.upload_bytes(b"secret", "key")
    assert fetch(f"{emulator.url}/file/lab-private/key")[0] == 401
    assert download(private, "key") == b"secret"


def test_large_upload_goes_in_parts(emulator: B2Emulator, bucket: Bucket) -> None:
    data = os.urandom(int(2.5 * PART_SIZE))
    emulator.reset_counters()
    version = bucket.upload_bytes(data, "nar/big.nar.zst")

    calls = emulator.counters()["calls"]
    assert calls["b2_start_large_file"] == 1
    assert calls["b2_upload_part"] == 2
    assert calls["b2_finish_large_file"] == 1
    assert "b2_upload_file" not in calls
    assert version.size == len(data)
    assert fetch(f"{emulator.url}/file/{BUCKET}/nar/big.nar.zst")[2] == data
    assert download(bucket, "nar/big.nar.zst") == data


def test_unfinished_large_files_list_parts_and_cancel(api: B2Api, bucket: Bucket) -> None:
    started = api.session.start_large_file(bucket.id_, "nar/partial.nar", "application/octet-stream", {})
    file_id = started["fileId"]
    part = b"p" * 10
    part_sha1 = hashlib.sha1(part).hexdigest()
    for part_number in (1, 2):
        api.session.upload_part(file_id, part_number, len(part), part_sha1, io.BytesIO(part))

    assert [large.file_id for large in bucket.list_unfinished_large_files()] == [file_id]
    assert [part.part_number for part in bucket.list_parts(file_id)] == [1, 2]
    with pytest.raises(BadRequest, match="smaller than the minimum part size"):
        api.session.finish_large_file(file_id, [part_sha1] * 2)
    api.cancel_large_file(file_id)
    assert list(bucket.list_unfinished_large_files()) == []


# Listing, versions, hiding


def test_two_uploads_to_one_name_are_two_versions_newest_first(bucket: Bucket) -> None:
    bucket.upload_bytes(b"/nix/store/aaa-system\n", "toplevels/web.txt")
    bucket.upload_bytes(b"/nix/store/bbb-system\n", "toplevels/web.txt")

    versions = list(bucket.list_file_versions("toplevels/web.txt"))
    assert [download_by_id(bucket, version.id_) for version in versions] == [
        b"/nix/store/bbb-system\n",
        b"/nix/store/aaa-system\n",
    ]
    assert versions[0].upload_timestamp >= versions[1].upload_timestamp
    assert [version.file_name for version, _ in bucket.ls("toplevels")] == ["toplevels/web.txt"]
    assert download(bucket, "toplevels/web.txt") == b"/nix/store/bbb-system\n"


def test_hide_takes_a_name_out_of_listing_and_downloads(emulator: B2Emulator, bucket: Bucket) -> None:
    bucket.upload_bytes(b"old", "toplevels/db.txt")
    bucket.hide_file("toplevels/db.txt")

    assert list(bucket.ls("toplevels")) == []
    assert fetch(f"{emulator.url}/file/{BUCKET}/toplevels/db.txt")[0] == 404
    assert [version.action for version in bucket.list_file_versions("toplevels/db.txt")] == ["hide", "upload"]
    with pytest.raises(FileAlreadyHidden):
        bucket.hide_file("toplevels/db.txt")
    with pytest.raises(FileNotPresent):
        bucket.hide_file("toplevels/never.txt")


def test_get_file_info_by_id_and_name(bucket: Bucket) -> None:
    uploaded = bucket.upload_bytes(b"data", "info.bin", content_type="application/x-nix-nar", cache_control="no-cache")

    by_id = bucket.get_file_info_by_id(uploaded.id_)
    by_name = bucket.get_file_info_by_name("info.bin")
    for info in (by_id, by_name):
        assert (info.id_, info.size, info.content_type) == (uploaded.id_, 4, "application/x-nix-nar")
        assert info.cache_control == "no-cache"


def test_delete_file_version(bucket: Bucket) -> None:
    first = bucket.upload_bytes(b"1", "pointer")
    bucket.upload_bytes(b"2", "pointer")
    bucket.delete_file_version(first.id_, "pointer")
    assert [download_by_id(bucket, version.id_) for version in bucket.list_file_versions("pointer")] == [b"2"]


# Counters


def test_each_operation_counts_in_its_class(emulator: B2Emulator, api: B2Api, bucket: Bucket) -> None:
    def counted(action: Any) -> tuple[tuple[int, int, int], dict[str, int]]:
        emulator.reset_counters()
        action()
        return classes(emulator), emulator.counters()["calls"]

    first = bucket.upload_bytes(b"first", "a")
    public_url = f"{emulator.url}/file/{BUCKET}/a"
    assert counted(lambda: api.authorize_account(emulator.url, KEY_ID, KEY)) == (
        (0, 0, 1),
        {"b2_authorize_account": 1},
    )
    assert counted(api.list_buckets) == ((0, 0, 1), {"b2_list_buckets": 1})
    # The upload URL from the first upload is pooled and reused.
    assert counted(lambda: bucket.upload_bytes(b"second", "b")) == ((1, 0, 0), {"b2_upload_file": 1})
    assert counted(lambda: download(bucket, "a")) == ((0, 1, 0), {"b2_download_file_by_name": 1})
    assert counted(lambda: download_by_id(bucket, first.id_)) == ((0, 1, 0), {"b2_download_file_by_id": 1})
    assert counted(lambda: fetch(public_url)) == ((0, 1, 0), {"b2_download_file_by_name": 1})
    assert counted(lambda: fetch(public_url, "HEAD")) == ((0, 1, 0), {"b2_get_file_info_by_name": 1})
    assert counted(lambda: fetch(f"{emulator.url}/file/{BUCKET}/absent")) == (
        (0, 1, 0),
        {"b2_download_file_by_name": 1},
    )
    assert counted(lambda: bucket.get_file_info_by_id(first.id_)) == ((0, 1, 0), {"b2_get_file_info": 1})
    assert counted(lambda: list(bucket.ls())) == ((0, 0, 1), {"b2_list_file_names": 1})
    assert counted(lambda: list(bucket.list_file_versions("a"))) == ((0, 0, 1), {"b2_list_file_versions": 1})
    assert counted(lambda: bucket.hide_file("a")) == ((1, 0, 0), {"b2_hide_file": 1})
    assert counted(lambda: bucket.delete_file_version(first.id_, "a")) == ((1, 0, 0), {"b2_delete_file_version": 1})
    assert counted(lambda: fetch(f"{emulator.url}/_emulator/counters")) == ((0, 0, 0), {})


def test_a_fresh_api_counts_its_upload_url_and_listing_is_billed_per_thousand(
    emulator: B2Emulator, api: B2Api, bucket: Bucket
) -> None:
    emulator.reset_counters()
    for number in range(1001):
        bucket.upload_bytes(b"", f"n{number:04}")
    assert classes(emulator) == (1002, 0, 0)
    assert emulator.counters()["calls"] == {"b2_get_upload_url": 1, "b2_upload_file": 1001}

    emulator.reset_counters()
    assert len(list(bucket.ls())) == 1001
    assert classes(emulator) == (0, 0, 2)
    assert emulator.counters()["calls"] == {"b2_list_file_names": 1}


# Faults


def test_503s_at_30_percent_are_retried_by_b2sdk(emulator: B2Emulator) -> None:
    # One upload thread keeps the order of requests, and so the seeded faults, the same every run.
    api = B2Api(InMemoryAccountInfo(), max_upload_workers=1)
    api.authorize_account(emulator.url, KEY_ID, KEY)
    bucket = api.create_bucket(BUCKET, "allPublic")
    data = os.urandom(int(2.5 * PART_SIZE))
    emulator.set_faults(service_unavailable=0.3, seed=1)

    for number in range(10):
        bucket.upload_bytes(b"small %d" % number, f"small/{number}")
    bucket.upload_bytes(data, "big")
    assert download(bucket, "big") == data
    assert len(list(bucket.ls("small"))) == 10

    counters = emulator.counters()
    assert counters["faults"] > 0
    assert counters["faults_by_kind"] == {"service_unavailable": counters["faults"]}


def test_a_503_answer_is_b2s_json_with_retry_after(emulator: B2Emulator, bucket: Bucket) -> None:
    emulator.set_faults(service_unavailable=1.0, public_only=True)
    status, headers, body = fetch(f"{emulator.url}/file/{BUCKET}/anything")
    assert (status, headers["Retry-After"]) == (503, "0")
    assert json.loads(body)["code"] == "service_unavailable"


def test_download_cap_fails_class_b_only(emulator: B2Emulator, bucket: Bucket) -> None:
    bucket.upload_bytes(b"nar", "x.nar")
    emulator.set_faults(download_cap=True)

    with pytest.raises(B2Error, match="download_cap_exceeded"):
        download(bucket, "x.nar")
    status, _, body = fetch(f"{emulator.url}/file/{BUCKET}/x.nar")
    assert (status, json.loads(body)["code"]) == (403, "download_cap_exceeded")
    assert [version.file_name for version, _ in bucket.ls()] == ["x.nar"]
    assert emulator.counters()["faults_by_kind"] == {"download_cap_exceeded": 2}


def test_transaction_cap_fails_class_c_only(emulator: B2Emulator, bucket: Bucket) -> None:
    emulator.set_faults(transaction_cap=True)
    with pytest.raises(TransactionCapExceeded):
        list(bucket.ls())
    bucket.upload_bytes(b"still fine", "a")
    assert download(bucket, "a") == b"still fine"


def test_dropped_connections_are_retried_by_b2sdk(emulator: B2Emulator, bucket: Bucket) -> None:
    emulator.set_faults(drop=1.0, calls=["b2_list_file_names"], max_faults=1)
    assert list(bucket.ls()) == []
    emulator.set_faults(drop=1.0, calls=["b2_upload_file"], max_faults=2)
    bucket.upload_bytes(b"made it", "after-drops")
    assert download(bucket, "after-drops") == b"made it"

    counters = emulator.counters()
    assert counters["faults_by_kind"] == {"drop": 3}
    assert counters["calls"]["b2_upload_file"] == 1


def test_downloads_are_dropped_mid_body(emulator: B2Emulator, bucket: Bucket) -> None:
    data = os.urandom(100_000)
    bucket.upload_bytes(data, "nar/cut.nar")
    emulator.set_faults(drop=1.0, public_only=True, max_faults=1)
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(f"{emulator.url}/file/{BUCKET}/nar/cut.nar")
    assert cut.value.partial == data[: len(data) // 2]

    emulator.set_faults(drop=1.0, calls=["b2_download_file_by_name"], max_faults=1)
    assert download(bucket, "nar/cut.nar") == data
    assert emulator.counters()["faults_by_kind"] == {"drop": 2}


def test_a_held_request_times_out_and_is_retried(emulator: B2Emulator, api: B2Api) -> None:
    emulator.set_faults(timeout=1.0, timeout_seconds=0.3, calls=["b2_list_buckets"], max_faults=1)
    started = time.monotonic()
    assert api.list_buckets() == []
    assert time.monotonic() - started >= 0.3
    assert emulator.counters()["faults_by_kind"] == {"timeout": 1}


def test_fault_picks_are_reproducible_and_scoped() -> None:
    def picks(plan: FaultPlan, public: bool = False) -> list[FaultKind | None]:
        picker = FaultPicker()
        picker.set_plan(plan)
        return [picker.pick("b2_download_file_by_name", "B", public) for _ in range(50)]

    plan = FaultPlan(service_unavailable=0.3, drop=0.2, seed=42)
    assert picks(plan) == picks(plan)
    assert set(picks(plan)) == {FaultKind.SERVICE_UNAVAILABLE, FaultKind.DROP, None}
    assert set(picks(FaultPlan(drop=1.0, public_only=True))) == {None}
    assert set(picks(FaultPlan(drop=1.0, public_only=True), public=True)) == {FaultKind.DROP}
    assert set(picks(FaultPlan(drop=1.0, classes=("A", "C")))) == {None}
    assert picks(FaultPlan(drop=1.0, max_faults=2)).count(FaultKind.DROP) == 2
    with pytest.raises(ValueError):
        FaultPlan(service_unavailable=0.7, drop=0.5)
    with pytest.raises(ValueError):
        FaultPlan.from_json({"no_such_setting": 1})


def test_control_endpoints_over_http(emulator: B2Emulator, bucket: Bucket) -> None:
    control = f"{emulator.url}/_emulator"
    bucket.upload_bytes(b"x", "x")

    counters = json.loads(fetch(f"{control}/counters")[2])
    assert counters["A"] == 2
    plan = {"drop": 0.5, "classes": ["B"], "seed": 9}
    status, _, body = fetch(
        f"{control}/faults", "POST", {"Content-Type": "application/json"}, json.dumps(plan).encode()
    )
    assert status == 200
    assert emulator.fault_plan == FaultPlan(drop=0.5, classes=("B",), seed=9)
    assert json.loads(fetch(f"{control}/faults")[2])["drop"] == 0.5
    assert fetch(f"{control}/faults", "POST", body=b'{"drop": 2}')[0] == 400
    assert fetch(f"{control}/faults", "DELETE")[0] == 200
    assert emulator.fault_plan == FaultPlan()
    assert json.loads(fetch(f"{control}/counters/reset", "POST", body=b"")[2])["A"] == 0
    assert emulator.counters()["calls"] == {}


# The command


def test_the_command_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "topdeck.lab.b2emu",
            "--port",
            "0",
            "--key-id",
            KEY_ID,
            "--key-env",
            "TEST_B2EMU_KEY",
            "--bucket",
            BUCKET,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TEST_B2EMU_KEY": KEY},
    )
    killer = threading.Timer(20, process.kill)
    killer.start()
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        api = authorized_api(url)
        assert [bucket.name for bucket in api.list_buckets()] == [BUCKET]
        assert json.loads(fetch(f"{url}/_emulator/counters")[2])["C"] == 2

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        killer.cancel()
        process.kill()
        process.wait()


# Keys restricted to a bucket


def test_bucket_key_finds_its_bucket_without_listing_and_cannot_delete(emulator: B2Emulator, bucket: Bucket) -> None:
    emulator.add_bucket_key("cachekey", "cache-secret", BUCKET)
    api = B2Api(InMemoryAccountInfo())
    emulator.reset_counters()
    api.authorize_account(emulator.url, "cachekey", "cache-secret")
    allowed = api.account_info.get_allowed()
    assert (allowed["bucketId"], allowed["bucketName"]) == (bucket.id_, BUCKET)
    restricted = api.BUCKET_CLASS(api, allowed["bucketId"], name=BUCKET)
    assert emulator.counters()["calls"] == {"b2_authorize_account": 1}
    version = restricted.upload_bytes(b"narinfo", "cache/x.narinfo")
    assert download(restricted, "cache/x.narinfo") == b"narinfo"
    assert [v.file_name for v, _ in restricted.ls("cache/", recursive=True)] == ["cache/x.narinfo"]
    with pytest.raises(Exception, match="unauthorized"):
        api.delete_file_version(version.id_, version.file_name)
