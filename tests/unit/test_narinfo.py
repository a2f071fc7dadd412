"""Narinfos and NarHash forms, in process (against narinfos the real Nix wrote and `nix path-info`:
tests/lab/test_narinfo_nix.py)."""

import hashlib

import pytest

from topdeck.core.errors import NarinfoError
from topdeck.core.nix.narinfo import (
    fingerprint,
    hash_to_nix32,
    hash_to_sri,
    parse_hash,
    parse_narinfo,
    render_narinfo,
)

HASH = "l8r1i0a3ak0fi2m5gb0shz8v88b85kyp"
DIGEST = hashlib.sha256(b"topdeck").digest()


def minimal_narinfo(**changes: str) -> str:
    fields = {
        "StorePath": f"/nix/store/{HASH}-hello-2.12",
        "URL": "nar/x.nar",
        "NarHash": hash_to_nix32(DIGEST),
        "NarSize": "120",
        "References": "",
    }
    fields.update(changes)
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def test_fingerprint_sorts_full_reference_paths() -> None:
    info = parse_narinfo(minimal_narinfo(References=f"{'z' * 32}-a {'0' * 32}-b"))

    assert fingerprint(info) == (
        f"1;/nix/store/{HASH}-hello-2.12;{hash_to_nix32(DIGEST)};120;"
        f"/nix/store/{'0' * 32}-b,/nix/store/{'z' * 32}-a"
    )


def test_defaults_unknown_keys_and_optional_fields() -> None:
    text = minimal_narinfo(Deriver="unknown-deriver", Foo="bar", System="x86_64-linux", CA="fixed:r:sha256:x")

    info = parse_narinfo(text + "Sig: b:2\nSig: a:1\nSig: b:2\n")

    assert info.compression == "bzip2"
    assert info.file_hash is None and info.file_size == 0
    assert info.deriver is None
    assert info.system == "x86_64-linux" and info.ca == "fixed:r:sha256:x"
    assert info.sigs == ("a:1", "b:2")
    assert render_narinfo(info) == (
        f"StorePath: /nix/store/{HASH}-hello-2.12\nURL: nar/x.nar\nCompression: bzip2\nFileSize: 0\n"
        f"NarHash: {hash_to_nix32(DIGEST)}\nNarSize: 120\nReferences: \nSystem: x86_64-linux\n"
        "Sig: a:1\nSig: b:2\nCA: fixed:r:sha256:x\n"
    )


def test_equal_narinfos_compare_equal_whatever_the_order() -> None:
    refs = f"{'z' * 32}-a {'0' * 32}-b"

    assert parse_narinfo(minimal_narinfo(References=refs)) == parse_narinfo(
        minimal_narinfo(References=" ".join(reversed(refs.split())))
    )


def test_every_hash_form_gives_the_same_digest() -> None:
    forms = [
        hash_to_nix32(DIGEST),
        hash_to_sri(DIGEST),
        "sha256:" + DIGEST.hex(),
        "sha256:" + DIGEST.hex().upper(),
        "sha256:" + hash_to_sri(DIGEST).removeprefix("sha256-"),
    ]

    assert {parse_hash(form) for form in forms} == {DIGEST}
    assert render_narinfo(parse_narinfo(minimal_narinfo(NarHash=hash_to_sri(DIGEST)))) == minimal_narinfo(
        NarHash=hash_to_nix32(DIGEST)
    ).replace("URL: nar/x.nar\n", "URL: nar/x.nar\nCompression: bzip2\nFileSize: 0\n")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha1:" + "0" * 32,
        "md5-" + "A" * 24,
        "sha256-" + DIGEST.hex(),
        "sha256:" + "e" * 52,
        "sha256:" + "0" * 51,
        "sha256:" + DIGEST.hex()[:-1],
        "sha256:" + "g" * 64,
        "sha256:" + "!" * 44,
        "sha256: " + DIGEST.hex(),
        "sha256:" + "\u00e9" * 44,
    ],
)
def test_parse_hash_rejects(text: str) -> None:
    with pytest.raises(NarinfoError):
        parse_hash(text)


def without(key: str) -> str:
    return "".join(line for line in minimal_narinfo().splitlines(keepends=True) if not line.startswith(key))


# Malformed narinfos Nix 2.8 also refuses ("NAR info file ... is corrupt").
REFUSED_BY_NIX = {
    "no StorePath": without("StorePath"),
    "no NarHash": without("NarHash"),
    "no URL": without("URL"),
    "empty URL": minimal_narinfo(URL=""),
    "no NarSize": without("NarSize"),
    "zero NarSize": minimal_narinfo(NarSize="0"),
    "NarSize not a number": minimal_narinfo(NarSize="12x"),
    "bad NarHash": minimal_narinfo(NarHash="sha256:xyz"),
    "bad FileHash": minimal_narinfo(FileHash="sha256:" + "!" * 52),
    "a line without colon": minimal_narinfo() + "garbage\n",
    "no newline at the end": minimal_narinfo().removesuffix("\n"),
}
# Malformed narinfos Nix reads in its own way or refuses with another error; topdeck refuses them.
REFUSED_BY_TOPDECK = {
    "StorePath elsewhere": minimal_narinfo(StorePath=f"/tmp/{HASH}-hello"),
    "StorePath with a trailing slash": minimal_narinfo(StorePath=f"/nix/store/{HASH}-hello/"),
    "bad reference": minimal_narinfo(References=f"{HASH}-ok ../etc/passwd"),
    "bad deriver": minimal_narinfo(Deriver="x.drv"),
    "negative NarSize": minimal_narinfo(NarSize="-1"),
    "huge NarSize": minimal_narinfo(NarSize=str(2**64)),
    "repeated key": minimal_narinfo() + "URL: nar/y.nar\n",
    "empty line": minimal_narinfo() + "\n",
    "no space after colon": minimal_narinfo() + "System:x86_64-linux\n",
    "CRLF": minimal_narinfo().replace("\n", "\r\n"),
}


@pytest.mark.parametrize("text", [*REFUSED_BY_NIX.values(), *REFUSED_BY_TOPDECK.values()])
def test_rejects_malformed_narinfo_with_one_line(text: str) -> None:
    with pytest.raises(NarinfoError) as caught:
        parse_narinfo(text, "abc.narinfo")

    assert str(caught.value).startswith("abc.narinfo: ")
    assert "\n" not in str(caught.value)


