"""core.strict: numbers and JSON from outside read strictly (what int() and json.loads let through, refused)."""

from __future__ import annotations

import pytest

from topdeck.core import strict


@pytest.mark.parametrize("text", ["0", "7", "0042", "18446744073709551615"])
def test_ascii_digits_are_decimal(text: str) -> None:
    assert strict.is_decimal(text)


@pytest.mark.parametrize("text", ["", " 7", "7 ", "+7", "-7", "²", "٣", "7.0", "1e3", "0x10"])
def test_what_int_accepts_but_is_not_plain_ascii_digits_is_refused(text: str) -> None:
    assert not strict.is_decimal(text)
    assert strict.parse_uint(text) is None


def test_parse_uint_keeps_to_its_limit() -> None:
    assert strict.parse_uint("18446744073709551615") == 2**64 - 1
    assert strict.parse_uint("18446744073709551616") is None
    assert strict.parse_uint("100", limit=99) is None
    assert strict.parse_uint("99", limit=99) == 99
    assert strict.parse_uint("0" * 30 + "1") is None  # longer than the limit's digits, whatever its value


@pytest.mark.parametrize(("value", "expected"), [
    (0, True), (2**64 - 1, True), (2**64, False), (-1, False), (True, False), (False, False), (1.0, False),
    ("1", False), (None, False),
])
def test_is_uint_takes_json_integers_only(value: object, expected: bool) -> None:
    assert strict.is_uint(value) is expected


def test_loads_refuses_a_repeated_key_at_any_depth() -> None:
    assert strict.loads('{"a": {"b": 1}, "c": [1]}') == {"a": {"b": 1}, "c": [1]}
    with pytest.raises(strict.DuplicateKey, match="key 'a' appears twice"):
        strict.loads('{"a": 1, "a": 2}')
    with pytest.raises(ValueError, match="key 'b' appears twice"):
        strict.loads(b'[{"x": {"b": 1, "b": 1}}]')


def test_loads_turns_too_deep_nesting_into_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        strict.loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError):
        strict.loads("{not json")
