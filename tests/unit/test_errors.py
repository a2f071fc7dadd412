"""core.errors: one family of user-facing errors, each one line; a bug on one host becomes one line too."""

from __future__ import annotations

import inspect

import pytest

from topdeck.core import errors
from topdeck.core.errors import CacheError, CacheMissing, InternalError, TopdeckError, TransientCacheError


def test_every_error_topdeck_reports_is_a_topdeck_error() -> None:
    classes = [value for value in vars(errors).values()
               if inspect.isclass(value) and value.__module__ == errors.__name__]
    assert len(classes) >= 19
    assert all(issubclass(cls, TopdeckError) for cls in classes)
    # a missing file and a passing failure are both cache errors: a caller that handles CacheError handles them
    assert issubclass(CacheMissing, CacheError) and issubclass(TransientCacheError, CacheError)


def test_the_setting_at_fault_travels_with_the_error() -> None:
    assert TopdeckError("wave '0': ...", setting="wave").setting == "wave"
    assert errors.InventoryError("hosts/x: bad").setting == ""


def _raise_here() -> None:
    raise KeyError("a\nmultiline   key")


def test_an_unexpected_exception_becomes_one_line_with_its_type_file_and_line() -> None:
    with pytest.raises(KeyError) as caught:
        _raise_here()
    line = inspect.getsourcelines(_raise_here)[1] + 1
    error = errors.internal_error("web-1", caught.value)
    assert isinstance(error, InternalError)
    assert str(error) == (f"web-1: internal error in topdeck (KeyError at test_errors.py:{line}: 'a\\nmultiline key'); "
                          "please report it")


def test_an_exception_never_raised_has_no_place_and_a_long_message_is_cut() -> None:
    error = errors.internal_error("push", ValueError("x" * 500))
    assert str(error) == f"push: internal error in topdeck (ValueError: {'x' * 200}); please report it"
