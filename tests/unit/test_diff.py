"""core.nix.diff without Nix: compareVersions against Nix's own test table, the kinds of change, rendering as
`nix store diff-closures` prints, grouping by signature. tests/lab/test_diff_nix.py checks the same tables and
renderings against Nix 2.8 itself (`builtins.compareVersions`, `nix store diff-closures` on factory-built systems)."""

import dataclasses
import random

import pytest

from topdeck.core.nix.diff import (
    ADDED,
    CHANGED,
    DOWNGRADED,
    REMOVED,
    UPGRADED,
    ClosureDiff,
    PackageChange,
    compare_versions,
    diff_closures,
    render_diff_closures,
    render_size_delta,
    show_versions,
    signature,
    version_components,
)
from topdeck.core.nix.store import StorePath

MiB = 1024 * 1024

# --- compareVersions --------------------------------------------------------------------------------

# Nix's tests/lang/eval-okay-versions.nix (v1, v2, expected), then cases from tvix's port of it, then the
# corners of Nix's componentsLT and string2Int<int> (checked against Nix 2.8 below).
NIX_VERSION_TABLE = [
    ("1.0", "2.3", -1),
    ("2.1", "2.3", -1),
    ("2.3", "2.3", 0),
    ("2.5", "2.3", 1),
    ("3.1", "2.3", 1),
    ("2.3.1", "2.3", 1),
    ("2.3.1", "2.3a", 1),
    ("2.3pre1", "2.3", -1),
    ("2.3pre3", "2.3pre12", -1),
    ("2.3a", "2.3c", -1),
    ("2.3pre1", "2.3c", -1),
    ("2.3pre1", "2.3q", -1),
]
MORE_VERSION_CASES = [
    ("1.2.3", "1.2.3", 0),
    ("1.2.2", "1.2.3", -1),
    ("1.2.3", "1.2.40", -1),
    ("1.2.3", ".1.2.3", 0),
    ("1.2.3", "1..2.3", 0),
    ("1.2.3", "1.2.3.", 0),
    ("1.2.3", "1.2", 1),
    ("1.2.3", "1.2.a", 1),
    ("1a.b", "1a.2", -1),
    ("1", "", 1),
    ("1.0", "1.0.0", -1),
    ("2.3", "2.3pre", 1),
    ("2.3", "2.3.0pre", -1),
    ("2.3pre", "2.3.0pre", -1),
    ("2.3pre", "2.3prepre", -1),  # "pre" is below any other word, "prepre" too
    ("2.3prepre", "2.3prepre", 0),
    ("foo", "bar", 1),
    ("FoO", "fOo", -1),
    ("1.0", "1.00", 0),
    ("1.0", "1-0", 0),
    ("1.02", "1.2", 0),
    ("", "pre", 1),
    ("a", "", 1),
    ("8.2p11", "8.2p10", 1),
    ("5.2pre1", "5.2p26", -1),
    ("1.0", "1.0p1", -1),
    ("1.0p1", "1.0.1", -1),
    ("2024a", "2023c", 1),
    ("unstable-2024-05-01", "unstable-2024-04-30", 1),
    # A run of digits beyond int's range is no number to Nix: it compares as a word.
    ("1.99999999999", "1.2", -1),
    ("1.2147483647", "1.2147483648", 1),
    ("1.2147483648", "1.a", -1),
]
VERSION_CASES = NIX_VERSION_TABLE + MORE_VERSION_CASES



@pytest.mark.parametrize(("v1", "v2", "expected"), VERSION_CASES)
def test_compare_versions(v1: str, v2: str, expected: int) -> None:
    assert compare_versions(v1, v2) == expected
    assert compare_versions(v2, v1) == -expected


def test_version_components_as_nix_next_component() -> None:
    assert version_components("1.2.3") == ["1", "2", "3"]
    assert version_components("2.3pre12") == ["2", "3", "pre", "12"]
    assert version_components("-1..a-b2c.") == ["1", "a", "b", "2", "c"]
    assert version_components("") == []



# --- rendering and kinds without Nix ----------------------------------------------------------------


def fake_path(name: str, seed: str = "") -> StorePath:
    digest = random.Random(name + seed).choices("0123456789abcdfghijklmnpqrsvwxyz", k=32)
    return StorePath("".join(digest), name)


def test_show_versions() -> None:
    assert show_versions(()) == "∅"
    assert show_versions(("",)) == "ε"
    assert show_versions(("2.0", "1.10", "")) == "1.10, 2.0, ε"


def test_size_is_printf_plus_one_decimal_kib() -> None:
    assert render_size_delta(8192) == "+8.0 KiB"
    assert render_size_delta(-8192) == "-8.0 KiB"
    assert render_size_delta(8448) == "+8.2 KiB"  # 8.25 exactly: half to even, as glibc's printf
    assert render_size_delta(8550) == "+8.3 KiB"
    assert render_size_delta(3 * MiB) == "+3072.0 KiB"


def test_kinds_and_hidden_changes() -> None:
    before = {
        fake_path("a-1.0"): 100,
        fake_path("b-2.0"): 100,
        fake_path("c-1.0"): 100,
        fake_path("d-1.0"): 100,
        fake_path("e-1.0"): 100,
        fake_path("f-1.0"): 100,
        fake_path("g-unstable"): 100,
        fake_path("same-1.0"): 100,
    }
    after = {
        fake_path("b-2.0"): 100,  # the same path: no change
        fake_path("c-1.1"): 100,
        fake_path("d-0.9"): 20000,
        fake_path("e-1.0", "rebuilt"): 100,
        fake_path("f-1.0"): 100,
        fake_path("f-2.0"): 100,
        fake_path("g-1.0"): 100,
        fake_path("h-1.0-bin"): 9000,
        fake_path("h-1.0"): 100,
        fake_path("same-1.0"): 100,
    }
    diff = diff_closures(before, after)

    kinds = {change.name: change.kind for change in diff.changes}
    assert kinds == {
        "a": REMOVED,
        "c": UPGRADED,
        "d": DOWNGRADED,
        "e": CHANGED,
        "f": UPGRADED,
        "g": UPGRADED,
        "h": ADDED,
    }
    assert render_diff_closures(diff) == [
        "a: 1.0 → ∅",
        "c: 1.0 → 1.1",
        "d: 1.0 → 0.9, +19.4 KiB",
        "f: ∅ → 2.0",
        "g: ε → 1.0",
        "h: ∅ → 1.0, +8.9 KiB",
    ]
    e = next(change for change in diff.changes if change.name == "e")
    assert not e.shown and e.old_versions == e.new_versions == ("1.0",)
    assert diff.size_before == 800 and diff.size_after == sum(after.values())
    assert diff.paths_added == tuple(sorted(after.keys() - before.keys()))
    assert diff.paths_removed == tuple(sorted(before.keys() - after.keys()))


def test_no_change() -> None:
    closure_ = {fake_path("a-1.0"): 100, fake_path("b-1.0-lib"): 100}
    diff = diff_closures(closure_, dict(closure_))
    assert diff == ClosureDiff((), 200, 200, (), ())
    assert diff.empty and render_diff_closures(diff) == []


def test_signature_groups_equal_changes_whatever_the_paths() -> None:
    host_a = {fake_path("a-1.0", "host a"): 100, fake_path("b-1.0"): 100}
    host_b = {fake_path("a-1.0", "host b"): 100, fake_path("b-1.0"): 100}
    host_c = {fake_path("a-0.9"): 100, fake_path("b-1.0"): 100}
    target = {fake_path("a-2.0"): 100, fake_path("b-1.0"): 100}
    a, b, c = (diff_closures(host, target) for host in (host_a, host_b, host_c))

    assert signature(a) == signature(b) != signature(c)
    assert len({signature(a), signature(b), signature(c)}) == 2


def test_a_thousand_paths_with_300_replaced() -> None:
    """Its speed is bench/diff.py's (against `nix store diff-closures`); here, what it finds at that size."""
    rng = random.Random(1)
    before: dict[StorePath, int] = {}
    for index in range(1000):
        name = f"package{index}-{rng.randint(0, 9)}.{rng.randint(0, 30)}" + rng.choice(["", "-lib", "-bin", "-man"])
        before[fake_path(name)] = rng.randint(1000, 10**7)
    after = dict(before)
    for path in rng.sample(sorted(before), 300):
        del after[path]
        after[fake_path(path.name, "new")] = rng.randint(1000, 10**7)

    diff = diff_closures(before, after)

    assert len(diff.paths_added) == len(diff.paths_removed) == 300
    assert set(diff.paths_added) == set(after) - set(before)
    assert render_diff_closures(diff)


def test_change_is_hashable_and_frozen() -> None:
    change = PackageChange("a", ("1.0",), ("2.0",), 10, UPGRADED)
    assert hash(change) == hash(PackageChange("a", ("1.0",), ("2.0",), 10, UPGRADED))
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.kind = DOWNGRADED  # type: ignore[misc]

