"""Numbers and JSON from outside (a host, the bucket, Nix, an ssh_config), read strictly.

`str.isdigit()` accepts '²' and `int()` accepts '٣' and ' 7 '; `json.loads` keeps the last of two equal keys where
the host script's sed keeps the first. Every number or JSON object that crosses into topdeck goes through here.
"""

from __future__ import annotations

import json
import re
from typing import Any

_DECIMAL = re.compile(r"[0-9]+", re.ASCII)

MAX_SERIAL = 2**53  # a pointer serial: exact in a double, far inside the host shell's 64-bit arithmetic


class DuplicateKey(ValueError):
    """A JSON object names the same key twice."""


def is_decimal(text: str) -> bool:
    """True for ASCII digits only (no sign, no space, no '²', no '٣')."""
    return bool(_DECIMAL.fullmatch(text))


def parse_uint(text: str, limit: int = 2**64 - 1) -> int | None:
    """An ASCII decimal 0 ≤ n ≤ limit, else None."""
    if not _DECIMAL.fullmatch(text) or len(text) > len(str(limit)):
        return None
    value = int(text)
    return value if value <= limit else None


def is_uint(value: object, limit: int = 2**64 - 1) -> bool:
    """A JSON number that is an integer 0 ≤ n ≤ limit (not true or false, not 1.0)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"key {key!r} appears twice")
        found[key] = value
    return found


def loads(data: bytes | str) -> Any:
    """JSON that refuses a repeated key in any object (ValueError, as json.loads raises for bad JSON; nesting
    too deep for the parser is a ValueError too)."""
    try:
        return json.loads(data, object_pairs_hook=_refuse_duplicates)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
