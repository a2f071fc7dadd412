"""Store paths, nix-base32 and package names, checked against the real Nix where Nix has an opinion."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_store import DIFF_CLOSURES  # the unit tier's table, checked here against Nix itself

from topdeck.core.errors import StorePathError
from topdeck.core.nix import nixbase32
from topdeck.core.nix.store import (
    diff_closures_key,
    parse_store_path,
)
from topdeck.lab.nixenv import lab_env

requires_nix = pytest.mark.skipif(shutil.which("nix") is None, reason="needs Nix")

HASH = "l8r1i0a3ak0fi2m5gb0shz8v88b85kyp"


def nix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=lab_env(), capture_output=True, text=True, timeout=120)


@requires_nix
@pytest.mark.parametrize(
    ("name", "valid"),
    [("a+b-c.d_e?f=g", True), ("x" * 211, True), ("x" * 212, False), ("a b", False), ("a@b", False)],
)
def test_name_rules_match_nix(name: str, valid: bool) -> None:
    result = nix("nix", "eval", "--raw", "--expr", f'builtins.toFile "{name}" ""')

    assert (result.returncode == 0) == valid, result.stderr
    if valid:
        assert parse_store_path(result.stdout).name == name
    else:
        with pytest.raises(StorePathError):
            parse_store_path(f"/nix/store/{HASH}-{name}")


@requires_nix
@pytest.mark.parametrize(("algorithm", "size"), [("md5", 16), ("sha1", 20), ("sha256", 32), ("sha512", 64)])
def test_nixbase32_matches_nix_hash_to_base32(algorithm: str, size: int) -> None:
    digests = [bytes(size), bytes([255] * size), *(os.urandom(size) for _ in range(8))]

    result = nix("nix", "hash", "to-base32", "--type", algorithm, *(digest.hex() for digest in digests))

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [nixbase32.encode(digest) for digest in digests]


@requires_nix
def test_nix_also_rejects_nixbase32_overflow() -> None:
    result = nix("nix", "hash", "to-base16", "--type", "sha256", "z" * 52)

    assert result.returncode != 0




CLOSURES_NIX = """
{ names }:
let
  mk = name: refs: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${builtins.concatStringsSep " " refs} > $out" ];
  };
in {
  before = mk "closure-before" (map (name: "${mk name [ ]}") names);
  after = mk "closure-after" [ ];
}
"""


@requires_nix
def test_diff_closures_groups_like_nix(tmp_path: Path) -> None:
    expression = tmp_path / "closures.nix"
    expression.write_text(CLOSURES_NIX)
    names = "[ " + " ".join(f'"{full}"' for full, _, _ in DIFF_CLOSURES) + " ]"
    before, after = (
        nix("nix-build", str(expression), "-A", attribute, "--no-out-link", "--arg", "names", names)
        for attribute in ("before", "after")
    )
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr

    diff = nix("nix", "store", "diff-closures", before.stdout.strip(), after.stdout.strip())

    groups: dict[str, set[str]] = {}
    for full, _, _ in DIFF_CLOSURES:
        name, version = diff_closures_key(full)
        groups.setdefault(name, set()).add(version or "\u03b5")
    expected = {f"{name}: {', '.join(sorted(versions))} \u2192 \u2205" for name, versions in groups.items()}
    assert diff.returncode == 0, diff.stderr
    assert set(diff.stdout.splitlines()) == expected
