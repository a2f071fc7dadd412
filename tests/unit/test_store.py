"""Store paths, nix-base32 and package names, in process (against the real Nix where Nix has an opinion:
tests/lab/test_store_nix.py)."""

import os

import pytest

from topdeck.core.errors import StorePathError
from topdeck.core.nix import nixbase32
from topdeck.core.nix.store import (
    StorePath,
    diff_closures_key,
    parse_store_path,
    split_name_version,
    split_output,
)

HASH = "l8r1i0a3ak0fi2m5gb0shz8v88b85kyp"


def test_parse_gives_hash_name_basename() -> None:
    path = parse_store_path(f"/nix/store/{HASH}-openssl-3.0.13-bin")

    assert path == StorePath(HASH, "openssl-3.0.13-bin")
    assert path.hash_part == HASH
    assert path.name == "openssl-3.0.13-bin"
    assert path.basename == f"{HASH}-openssl-3.0.13-bin"
    assert str(path) == path.path == f"/nix/store/{HASH}-openssl-3.0.13-bin"


def test_store_paths_sort_by_basename_as_nix_does() -> None:
    basenames = ["0" * 32 + "-zz", f"{HASH}-b", f"{HASH}-a-1", f"{HASH}-a", "z" * 32 + "-a"]
    paths = [parse_store_path(f"/nix/store/{basename}") for basename in basenames]

    assert [path.basename for path in sorted(paths)] == sorted(basenames)


def test_accepts_every_name_character_and_the_longest_name() -> None:
    for name in ["a+b-c.d_e?f=g", "A", "0", "x" * 211, "hello-2.12.drv"]:
        assert parse_store_path(f"/nix/store/{HASH}-{name}").name == name


HOSTILE = [
    "",
    "/nix/store/abc",
    "/tmp/x",
    "nix/store/" + HASH + "-x",
    "/nix/store/" + HASH,
    "/nix/store/" + HASH + "-",
    "/nix/store/" + HASH + "-x/",
    "/nix/store/" + HASH + "-x/bin/sh",
    "/nix/store/" + HASH + "-x;rm -rf /",
    "/nix/store/" + HASH + "-$(reboot)",
    "/nix/store/" + HASH + "-`id`",
    "/nix/store/" + HASH + "-a b",
    "/nix/store/" + HASH + "-x\n",
    "/nix/store/" + HASH + "-x\nStorePath: /nix/store/evil",
    "/nix/store/" + HASH + "-..",
    "/nix/store/" + HASH + "-.x",
    "/nix/store/../store/" + HASH + "-x",
    "/nix/store/" + HASH + "-x/../../etc",
    "/nix/store//" + HASH + "-x",
    "/nix/store/" + HASH.upper() + "-x",
    "/nix/store/" + HASH[:-1] + "-x",
    "/nix/store/" + HASH + "a-x",
    "/nix/store/" + HASH[:-1] + "e-x",
    "/nix/store/" + HASH + "_x",
    "/nix/store/" + HASH + "-" + "x" * 212,
    "/nix/store/" + HASH + "-caf\u00e9",
    "/nix/store/" + HASH + "-x\x00",
    " /nix/store/" + HASH + "-x",
    "/nix/store/" + HASH + "-x ",
    "/gnu/store/" + HASH + "-x",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_rejects_anything_but_a_canonical_store_path(text: str) -> None:
    with pytest.raises(StorePathError) as caught:
        parse_store_path(text)

    message = str(caught.value)
    assert "\n" not in message
    assert repr(text)[:40] in message


def test_error_message_truncates_long_values() -> None:
    with pytest.raises(StorePathError) as caught:
        parse_store_path("/nix/store/" + HASH + "-" + "x" * 5000)

    assert len(str(caught.value)) < 300


def test_constructing_directly_is_validated_too() -> None:
    with pytest.raises(StorePathError):
        StorePath(HASH, "a/b")
    with pytest.raises(StorePathError):
        StorePath("short", "a")


def test_nixbase32_round_trips_every_length() -> None:
    for size in range(70):
        data = os.urandom(size)
        text = nixbase32.encode(data)

        assert len(text) == nixbase32.encoded_length(size)
        assert set(text) <= set(nixbase32.ALPHABET)
        assert nixbase32.decode(text) == data


@pytest.mark.parametrize(
    ("text", "problem"),
    [("e" * 52, "character"), ("O" * 52, "character"), ("0" * 51, "length"), ("z" * 52, "fit")],
)
def test_nixbase32_rejects_what_nix_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        nixbase32.decode(text)


NAME_VERSION = [
    ("openssl-3.0.13", "openssl", "3.0.13"),
    ("perl5.38.2-Foo-Bar-1.23", "perl5.38.2-Foo-Bar", "1.23"),
    ("python3.11-requests-2.31.0", "python3.11-requests", "2.31.0"),
    ("bash-5.2p26", "bash", "5.2p26"),
    ("nixos-system-web-1-24.05.20240601.abcdef0", "nixos-system-web", "1-24.05.20240601.abcdef0"),
    ("hello", "hello", ""),
    ("util-linux-minimal-2.39.4-lib", "util-linux-minimal", "2.39.4-lib"),
    ("foo-unstable-2024-01-01", "foo-unstable", "2024-01-01"),
    ("hello-2.12.drv", "hello", "2.12.drv"),
    ("unit-dbus.service", "unit-dbus.service", ""),
    ("X11-1.0", "X11", "1.0"),
    ("foo--1", "foo", "-1"),
    ("a-", "a-", ""),
    ("-1", "", "1"),
]


@pytest.mark.parametrize(("full", "name", "version"), NAME_VERSION)
def test_split_name_version_like_drvname(full: str, name: str, version: str) -> None:
    assert split_name_version(full) == (name, version)


def test_split_output() -> None:
    assert split_output("glibc-2.39-52-bin") == ("glibc-2.39-52", "bin")
    assert split_output("wine-9.0-lib32") == ("wine-9.0", "lib32")
    assert split_output("openssl-3.0.13") == ("openssl-3.0.13", "")
    assert split_output("hello") == ("hello", "")


# Real store path names, and the (name, version) `nix store diff-closures` files them under.
DIFF_CLOSURES = [
    ("glibc-2.39-52", "glibc", "2.39-52"),
    ("glibc-2.39-52-bin", "glibc", "2.39-52"),
    ("bash-5.2p26-man", "bash", "5.2p26"),
    ("gcc-13.2.0-lib", "gcc", "13.2.0"),
    ("gcc-13.2.0-libgcc", "gcc", "13.2.0"),
    ("wine-9.0-lib32", "wine", "9.0"),
    ("util-linux-minimal-2.39.4-lib", "util-linux-minimal", "2.39.4"),
    ("linux-6.6.32-modules", "linux", "6.6.32"),
    ("linux-6.6.32-modules-shrunk", "linux", "6.6.32-modules"),
    ("libGL-1.7.0-dev", "libGL", "1.7.0"),
    ("perl5.38.2-Foo-Bar-1.23-devdoc", "perl5.38.2-Foo-Bar", "1.23"),
    ("python3.11-requests-2.31.0-dist", "python3.11-requests", "2.31.0"),
    ("nixos-system-web-1-24.05.20240601.abcdef0", "nixos-system-web", "1-24.05.20240601.abcdef0"),
    ("nss-cacert-3.101", "nss-cacert", "3.101"),
    ("xz-5.4.6-bin", "xz", "5.4.6"),
    ("hello", "hello", ""),
    ("unit-dbus.service", "unit-dbus.service", ""),
    ("foo-unstable", "foo", ""),
    ("system-units", "system", ""),
    ("etc-os-release", "etc-os", ""),
]


@pytest.mark.parametrize(("full", "name", "version"), DIFF_CLOSURES)
def test_diff_closures_key(full: str, name: str, version: str) -> None:
    assert diff_closures_key(full) == (name, version)


