"""Nix store paths and package names.

Validation follows Nix 2.8 src/libstore/path.cc (StorePath, checkName), made stricter: only the
canonical text `/nix/store/<hash>-<name>` is accepted, because topdeck puts these values in
commands, file names and bucket keys.
"""

import re
from dataclasses import dataclass

from topdeck.core.errors import StorePathError
from topdeck.core.nix.nixbase32 import ALPHABET

STORE_DIR = "/nix/store"
HASH_LENGTH = 32
MAX_NAME_LENGTH = 211

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-._?=")
_HASH_CHARS = frozenset(ALPHABET)
_SHOWN_LENGTH = 100

# Nix 2.8 src/nix/diff-closures.cc, getClosureInfo: std::regex_match, so the whole name must match.
_OUTPUT_SUFFIX = re.compile(r"(.*)-([a-z]+|lib32|lib64)")


@dataclass(frozen=True, order=True)
class StorePath:
    """A store path. Ordered as Nix orders them (by basename, the hash part being fixed-length)."""

    hash_part: str
    name: str

    def __post_init__(self) -> None:
        problem = _hash_problem(self.hash_part) or _name_problem(self.name)
        if problem:
            raise StorePathError(f"{_shown(self.path)} is not a Nix store path: {problem}")

    @property
    def basename(self) -> str:
        return f"{self.hash_part}-{self.name}"

    @property
    def path(self) -> str:
        return f"{STORE_DIR}/{self.basename}"

    def __str__(self) -> str:
        return self.path


def parse_store_path(text: str) -> StorePath:
    """The only way from text to a StorePath: exactly `/nix/store/<32 nix-base32 chars>-<name>`."""
    prefix = STORE_DIR + "/"
    if not text.startswith(prefix):
        raise StorePathError(f"{_shown(text)} is not a Nix store path: it is not in {STORE_DIR}/")
    basename = text[len(prefix) :]
    if basename[HASH_LENGTH : HASH_LENGTH + 1] != "-":
        raise StorePathError(f"{_shown(text)} is not a Nix store path: expected <32-character hash>-<name>")
    return StorePath(basename[:HASH_LENGTH], basename[HASH_LENGTH + 1 :])


def split_name_version(name: str) -> tuple[str, str]:
    """Split a package name like Nix's DrvName (Nix 2.8 src/libstore/names.cc): the version starts
    after the first `-` followed by a character that is not a letter. No version gives ''.

    `openssl-3.0.13` -> ('openssl', '3.0.13'); `hello` -> ('hello', '').
    """
    for index, char in enumerate(name[:-1]):
        if char == "-" and not _is_letter(name[index + 1]):
            return name[:index], name[index + 1 :]
    return name, ""


def split_output(name: str) -> tuple[str, str]:
    """Strip an output name the way `nix store diff-closures` does (Nix 2.8 src/nix/diff-closures.cc,
    getClosureInfo): a last `-` followed by lowercase letters only, or `-lib32`/`-lib64`, is taken as
    the output. Nix notes this is ambiguous: `foo-unstable` loses `unstable` too. No output gives ''.

    `glibc-2.39-52-bin` -> ('glibc-2.39-52', 'bin').
    """
    match = _OUTPUT_SUFFIX.fullmatch(name)
    if match is None:
        return name, ""
    return match[1], match[2]


def diff_closures_key(name: str) -> tuple[str, str]:
    """The (package name, version) under which `nix store diff-closures` groups a store path name."""
    return split_name_version(split_output(name)[0])


def _is_letter(char: str) -> bool:
    # Nix uses C isalpha in the C locale: ASCII letters only.
    return char.isascii() and char.isalpha()


def _hash_problem(hash_part: str) -> str | None:
    if len(hash_part) != HASH_LENGTH or not _HASH_CHARS.issuperset(hash_part):
        return f"the hash part is not {HASH_LENGTH} nix-base32 characters"
    return None


def _name_problem(name: str) -> str | None:
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is longer than {MAX_NAME_LENGTH} characters"
    if name.startswith("."):
        return "the name starts with '.'"
    bad = next((char for char in name if char not in _NAME_CHARS), None)
    if bad is not None:
        return f"the name contains {bad!r}"
    return None


def _shown(text: str) -> str:
    if len(text) > _SHOWN_LENGTH:
        return repr(text[:_SHOWN_LENGTH]) + "..."
    return repr(text)
