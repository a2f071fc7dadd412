"""Closure diffs, checked line for line against the real `nix store diff-closures` (Nix 2.8) on toplevels
built by the lab's factory, and compareVersions against `builtins.compareVersions` (the same cases as the unit
tier's tests/unit/test_diff.py, which has the rest without Nix)."""

import dataclasses
import json
import random
import re
import shutil
import subprocess

import pytest
from test_diff import VERSION_CASES  # the unit tier's table, checked here against Nix itself

from topdeck.core.nix.diff import (
    ADDED,
    CHANGED,
    DOWNGRADED,
    REMOVED,
    UPGRADED,
    compare_versions,
    diff_closures,
    render_diff_closures,
)
from topdeck.core.nix.localnix import closure
from topdeck.core.nix.store import StorePath, parse_store_path
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
