"""core.cache.b2 without B2: which call a URL is and what class B2 bills it in, retries of what may pass, and
b2sdk's errors turned into one line (the bucket itself is tested against the emulator in tests/lab/)."""

from __future__ import annotations

import pytest
import requests
from b2sdk.v2.exception import B2ConnectionError, BadRequest, ServiceError, TransactionCapExceeded, Unauthorized

from topdeck.core.cache import b2
from topdeck.core.cache.b2 import CallCounter, b2_errors, call_name, retrying, transaction_class
from topdeck.core.errors import CacheError, TransientCacheError


@pytest.mark.parametrize(("method", "url", "name"), [
    ("POST", "https://api.example/b2api/v3/b2_upload_file", "b2_upload_file"),
    ("POST", "https://api.example/b2api/v2/b2_list_file_names?x=1", "b2_list_file_names"),
    ("GET", "https://f003.example/file/bucket/prefix/abc.narinfo", "b2_download_file_by_name"),
    ("HEAD", "https://f003.example/file/bucket/prefix/abc.narinfo", "b2_get_file_info_by_name"),
    ("GET", "https://elsewhere.example/", "other"),
])
def test_call_name(method: str, url: str, name: str) -> None:
    assert call_name(method, url) == name


@pytest.mark.parametrize(("name", "billed"), [
    ("b2_upload_file", "A"), ("b2_hide_file", "A"), ("other", "A"),
    ("b2_download_file_by_name", "B"), ("b2_get_file_info", "B"),
    ("b2_authorize_account", "C"), ("b2_list_file_versions", "C"), ("b2_list_buckets", "C"),
])
def test_transaction_class(name: str, billed: str) -> None:
    assert transaction_class(name) == billed


def test_the_counter_leaves_listings_to_the_lister_and_sums_by_class() -> None:
    counter = CallCounter()
    for method, url in [("POST", "https://a/b2api/v3/b2_upload_file"), ("POST", "https://a/b2api/v3/b2_upload_file"),
                        ("HEAD", "https://f/file/b/x"), ("POST", "https://a/b2api/v3/b2_list_file_names")]:
        counter.post_request(method, url, {}, None)
    counter.add("b2_list_file_names", 3)  # the lister bills a page per thousand names
    transactions = counter.transactions()
    assert (transactions.a, transactions.b, transactions.c) == (2, 1, 3)
    assert transactions.calls == {"b2_upload_file": 2, "b2_get_file_info_by_name": 1, "b2_list_file_names": 3}


def test_retrying_tries_again_with_a_doubling_pause_while_the_failure_may_pass() -> None:
    pauses: list[float] = []
    answers = iter([ServiceError("service_unavailable"), B2ConnectionError("Connection refused"), "ok"])

    def operation() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retrying("listing", operation, sleep=pauses.append) == "ok"
    assert pauses == [b2.BACKOFF, b2.BACKOFF * 2]


def test_retrying_gives_up_after_its_attempts_with_the_last_reason() -> None:
    pauses: list[float] = []

    def down() -> None:
        raise requests.ConnectionError("Max retries exceeded (Caused by NewConnectionError: Connection refused)")

    with pytest.raises(TransientCacheError) as caught:
        retrying("uploading x", down, attempts=3, sleep=pauses.append)
    assert str(caught.value) == "uploading x: B2 did not answer (connection refused)"
    assert len(pauses) == 2


def test_a_failure_that_will_not_pass_is_not_retried() -> None:
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise BadRequest("bad file name\nsecond line", "bad_request")

    with pytest.raises(CacheError) as caught:
        retrying("uploading x", refused, sleep=lambda _: pytest.fail("slept"))
    assert not isinstance(caught.value, TransientCacheError) and calls == [1]
    assert str(caught.value).startswith("uploading x: B2 error: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize(("error", "message"), [
    (TransactionCapExceeded(), "listing: the B2 daily transaction cap is exceeded (raise it in the B2 account)"),
    (Unauthorized("key secret-id is not valid", "unauthorized"), "listing: B2 refused the application key ("),
    (OSError("Network is unreachable"), "listing: B2 did not answer (network unreachable)"),
])
def test_b2_errors_become_one_line(error: Exception, message: str) -> None:
    with pytest.raises(CacheError) as caught:
        with b2_errors("listing"):
            raise error
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_cache_error_passes_through_unchanged() -> None:
    original = CacheError("already one line")
    with pytest.raises(CacheError) as caught:
        with b2_errors("listing"):
            raise original
    assert caught.value is original
