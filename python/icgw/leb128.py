"""Unsigned LEB128, the IC's encoding of nat leaves in certified state (`/time`, `reject_code`)."""

from __future__ import annotations


def encode_unsigned(n: int) -> bytes:
    if n < 0:
        raise ValueError("unsigned LEB128 cannot encode a negative number")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_unsigned(data: bytes) -> int:
    """The number `data` encodes; ValueError when it ends in the middle of a number or goes on after it."""
    value = 0
    for index, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if index != len(data) - 1:
                raise ValueError("bytes after the end of a LEB128 number")
            return value
    raise ValueError("a truncated LEB128 number")
