"""Closure diffs, checked line for line against the real `nix store diff-closures` (Nix 2.8) on toplevels
built by the lab's factory, and compareVersions against Nix's own test table and `builtins.compareVersions`."""

import dataclasses
import json
import random
import re
import shutil
import subprocess
import time

import pytest

from topdeck.core.diff import (
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
from topdeck.core.localnix import closure
from topdeck.core.store import StorePath, parse_store_path
from topdeck.lab.factory import (
    KiB,
    MiB,
    Package,
    SystemSpec,
    add_package,
    build,
    downgrade,
    initial_system,
    remove_package,
    upgrade,
)
from topdeck.lab.nixenv import lab_env

requires_nix = pytest.mark.skipif(shutil.which("nix-build") is None, reason="needs Nix")

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRvcGRlY2sgZGlmZiB0ZXN0IGtleSAxMjM0NTY3ODkw lab@topdeck"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


@requires_nix
def test_compare_versions_agrees_with_nix() -> None:
    pairs = [(v1, v2) for v1, v2, _ in VERSION_CASES]
    pairs += [(v2, v1) for v1, v2 in pairs]
    rng = random.Random(7)
    pieces = ["0", "1", "2", "10", "pre", "p", "a", "rc", ".", "-", ".", "beta"]
    made = ["".join(rng.choices(pieces, k=rng.randint(0, 5))) for _ in range(60)]
    pairs += [(rng.choice(made), rng.choice(made)) for _ in range(300)]
    compare = "p: builtins.compareVersions (builtins.elemAt p 0) (builtins.elemAt p 1)"
    expression = f"map ({compare}) (builtins.fromJSON ''%s'')"
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expression % json.dumps(pairs)],
        env=lab_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert [compare_versions(v1, v2) for v1, v2 in pairs] == json.loads(result.stdout)


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


def test_a_thousand_paths_take_milliseconds() -> None:
    rng = random.Random(1)
    before: dict[StorePath, int] = {}
    for index in range(1000):
        name = f"package{index}-{rng.randint(0, 9)}.{rng.randint(0, 30)}" + rng.choice(["", "-lib", "-bin", "-man"])
        before[fake_path(name)] = rng.randint(1000, 10**7)
    after = dict(before)
    for path in rng.sample(sorted(before), 300):
        del after[path]
        after[fake_path(path.name, "new")] = rng.randint(1000, 10**7)

    start = time.perf_counter()
    for _ in range(10):
        diff = diff_closures(before, after)
        render_diff_closures(diff)
    elapsed = (time.perf_counter() - start) / 10

    assert len(diff.paths_added) == len(diff.paths_removed) == 300
    assert elapsed < 0.05


# --- against nix store diff-closures ----------------------------------------------------------------

BASE = initial_system([KEY], host="diff", count=30, total_size=4 * MiB)
HELLO = Package("hello", "2.12.1", 60 * KiB, outputs=("out", "lib"))


def resize(spec: SystemSpec, pname: str, delta: int) -> SystemSpec:
    """The spec with `pname` `delta` bytes bigger, same version (sizes here keep NAR padding aligned)."""
    old = spec.package(pname)
    new = dataclasses.replace(old, size=old.size + delta)
    return dataclasses.replace(spec, packages=tuple(new if p is old else p for p in spec.packages))


def size_only(spec: SystemSpec) -> SystemSpec:
    # coreutils, gnused, diffutils: one output each, so the NAR grows exactly by these (multiples of 8).
    spec = resize(spec, "coreutils", 8448)  # +8.25 KiB: printf rounds it to +8.2
    spec = resize(spec, "gnused", 8184)  # under 8 KiB: not shown
    return resize(spec, "diffutils", -8192)  # exactly 8 KiB less: shown


def combination(spec: SystemSpec) -> SystemSpec:
    spec = upgrade(spec, "zstd", "1.5.7")
    spec = downgrade(spec, "gawk", "5.2.1", size=spec.package("gawk").size - 20 * KiB)
    spec = upgrade(spec, "readline", "8.2p11")
    spec = downgrade(spec, "bash", "5.2pre1")
    spec = upgrade(spec, "openssl", "3.1.0", size=spec.package("openssl").size + 100 * KiB)
    spec = remove_package(spec, "gzip")
    spec = add_package(spec, HELLO)
    spec = add_package(spec, Package("foo", "unstable", 20 * KiB))  # `foo`, version "" (ε)
    spec = add_package(spec, Package("libfoo", "1.0", 30 * KiB))
    spec = add_package(spec, Package("libfoo-2", "0.1", 40 * KiB))  # also `libfoo`, version "2-0.1"
    return size_only(spec)


VARIANTS = {
    "upgraded": upgrade(BASE, "zstd", "1.5.7"),
    "downgraded": downgrade(BASE, "gawk", "5.2.1", size=BASE.package("gawk").size - 20 * KiB),
    "added": add_package(BASE, HELLO),
    "removed": remove_package(BASE, "gzip"),
    "multi-output": upgrade(BASE, "openssl", "3.1.0", size=BASE.package("openssl").size + 100 * KiB),
    "size-only": size_only(BASE),
    "combination": combination(BASE),
}

# The kind of each change Nix prints, per variant (diffed from BASE); every other change is a rebuild.
SHOWN_KINDS = {
    "upgraded": {"zstd": UPGRADED},
    "downgraded": {"gawk": DOWNGRADED},
    "added": {"hello": ADDED},
    "removed": {"gzip": REMOVED},
    "multi-output": {"openssl": UPGRADED},
    "size-only": {"coreutils": CHANGED, "diffutils": CHANGED},
    "combination": {
        "bash": DOWNGRADED,
        "coreutils": CHANGED,
        "diffutils": CHANGED,
        "foo": ADDED,
        "gawk": DOWNGRADED,
        "gzip": REMOVED,
        "hello": ADDED,
        "libfoo": ADDED,
        "openssl": UPGRADED,
        "readline": UPGRADED,
        "zstd": UPGRADED,
    },
}
REVERSED = {ADDED: REMOVED, REMOVED: ADDED, UPGRADED: DOWNGRADED, DOWNGRADED: UPGRADED, CHANGED: CHANGED}


@pytest.fixture(scope="module")
def toplevels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    workdir = tmp_path_factory.mktemp("diff")
    return {name: build(spec, workdir) for name, spec in {"base": BASE, **VARIANTS}.items()}


@pytest.fixture(scope="module")
def sizes(toplevels: dict[str, str]) -> dict[str, dict[StorePath, int]]:
    return {name: {info.path: info.nar_size for info in closure([path])} for name, path in toplevels.items()}


def nix_diff_closures(before: str, after: str) -> list[str]:
    result = subprocess.run(
        ["nix", "store", "diff-closures", before, after], env=lab_env(), capture_output=True, text=True, check=True
    )
    return ANSI.sub("", result.stdout).splitlines()


def check_against_nix(toplevels: dict[str, str], sizes: dict[str, dict[StorePath, int]], before: str, after: str):
    diff = diff_closures(sizes[before], sizes[after])
    assert render_diff_closures(diff) == nix_diff_closures(toplevels[before], toplevels[after])
    return diff


def nix_closure(path: str) -> set[StorePath]:
    result = subprocess.run(["nix-store", "-qR", path], env=lab_env(), capture_output=True, text=True, check=True)
    return {parse_store_path(line) for line in result.stdout.split()}


@requires_nix
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lines_and_kinds_match_nix(toplevels, sizes, variant: str) -> None:
    diff = check_against_nix(toplevels, sizes, "base", variant)

    assert {change.name: change.kind for change in diff.shown_changes} == SHOWN_KINDS[variant]
    for change in diff.changes:
        if not change.shown:  # a rebuild: same versions, other paths (here a dependency changed)
            assert change.kind == CHANGED and change.old_versions == change.new_versions
    before, after = nix_closure(toplevels["base"]), nix_closure(toplevels[variant])
    assert set(diff.paths_added) == after - before and set(diff.paths_removed) == before - after
    assert diff.size_before == sum(sizes["base"].values()) and diff.size_after == sum(sizes[variant].values())


@requires_nix
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reversed_matches_nix(toplevels, sizes, variant: str) -> None:
    diff = check_against_nix(toplevels, sizes, variant, "base")

    expected = {name: REVERSED[kind] for name, kind in SHOWN_KINDS[variant].items()}
    assert {change.name: change.kind for change in diff.shown_changes} == expected


@requires_nix
def test_between_variants_and_to_itself(toplevels, sizes) -> None:
    check_against_nix(toplevels, sizes, "upgraded", "combination")
    check_against_nix(toplevels, sizes, "multi-output", "size-only")
    assert check_against_nix(toplevels, sizes, "base", "base").empty


@requires_nix
def test_what_nix_prints_for_the_combination(toplevels, sizes) -> None:
    """The format, spelled out: versions gone → versions new, then the size moved, when ≥ 8 KiB."""
    lines = render_diff_closures(diff_closures(sizes["base"], sizes["combination"]))
    assert "zstd: 1.5.6 → 1.5.7" in lines
    assert "gzip: 1.13 → ∅" in lines  # 4.5 KiB less: too little to show
    assert "coreutils: +8.2 KiB" in lines
    assert "diffutils: -8.0 KiB" in lines
    assert not any(line.startswith("gnused") for line in lines)
    assert any(re.fullmatch(r"foo: ∅ → ε, \+20\.\d KiB", line) for line in lines)
    assert any(re.fullmatch(r"libfoo: ∅ → 1\.0, 2-0\.1, \+7\d\.\d KiB", line) for line in lines)
    assert any(re.fullmatch(r"openssl: 3\.0\.13 → 3\.1\.0, \+100\.\d KiB", line) for line in lines)
    assert lines == sorted(lines)


def test_change_is_hashable_and_frozen() -> None:
    change = PackageChange("a", ("1.0",), ("2.0",), 10, UPGRADED)
    assert hash(change) == hash(PackageChange("a", ("1.0",), ("2.0",), 10, UPGRADED))
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.kind = DOWNGRADED  # type: ignore[misc]
