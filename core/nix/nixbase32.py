"""Nix's base-32 encoding, as in Nix 2.8 src/libutil/hash.cc (printHash32 and the Base32 branch of Hash).

Nix reads the bytes as one little-endian number and writes its base-32 digits most significant
first, with a fixed length of ceil(8 * len(bytes) / 5) characters. Store path hash parts (20 bytes,
32 characters) and sha256 hashes in narinfos (32 bytes, 52 characters) use it.
"""

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"

_DIGITS = {char: value for value, char in enumerate(ALPHABET)}


def encoded_length(size: int) -> int:
    """How many characters encode `size` bytes."""
    return (size * 8 + 4) // 5


def encode(data: bytes) -> str:
    number = int.from_bytes(data, "little")
    return "".join(ALPHABET[(number >> (5 * k)) & 31] for k in reversed(range(encoded_length(len(data)))))


def decode(text: str) -> bytes:
    """Raise ValueError on a character outside the alphabet, a length no byte count encodes to,
    or bits set beyond the last byte (Nix rejects all three)."""
    size = len(text) * 5 // 8
    if encoded_length(size) != len(text):
        raise ValueError(f"invalid nix-base32 length {len(text)}")
    number = 0
    for char in text:
        if char not in _DIGITS:
            raise ValueError(f"invalid nix-base32 character {char!r}")
        number = number << 5 | _DIGITS[char]
    if number >> (8 * size):
        raise ValueError("nix-base32 value does not fit its length")
    return number.to_bytes(size, "little")
