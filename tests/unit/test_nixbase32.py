"""core.nix.nixbase32: Nix's base-32, against values Nix 2.8 prints (`nix-hash --to-base32`) and its refusals."""

from __future__ import annotations

import hashlib

import pytest

from topdeck.core.nix import nixbase32

# (bytes, what `nix-hash --type sha256|sha1 --to-base32 <hex>` printed here)
NIX_PRINTS = [
    (hashlib.sha256(b"").digest(), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"),
    (hashlib.sha256(b"hello").digest(), "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"),
    (bytes(19) + b"\x01", "04000000000000000000000000000000"),  # little-endian: the last byte is most significant
]


@pytest.mark.parametrize(("data", "text"), NIX_PRINTS)
def test_encode_and_decode_agree_with_nix(data: bytes, text: str) -> None:
    assert nixbase32.encode(data) == text
    assert nixbase32.decode(text) == data


@pytest.mark.parametrize(("size", "length"), [(0, 0), (1, 2), (20, 32), (32, 52), (64, 103)])
def test_encoded_length_is_eight_bits_per_byte_in_five_bit_digits_rounded_up(size: int, length: int) -> None:
    assert nixbase32.encoded_length(size) == length
    assert len(nixbase32.encode(bytes(size))) == length


def test_every_byte_value_round_trips() -> None:
    data = bytes(range(256))
    assert nixbase32.decode(nixbase32.encode(data)) == data


@pytest.mark.parametrize(("text", "message"), [
    ("e" * 32, "invalid nix-base32 character 'e'"),  # not in the alphabet (neither are o, t, u)
    ("0" * 33, "invalid nix-base32 length 33"),  # no byte count encodes to 33 digits
    ("z" + "0" * 51, "does not fit its length"),  # 52 digits hold 260 bits: a sha256 leaves the top 4 clear
])
def test_what_nix_rejects_is_a_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nixbase32.decode(text)
