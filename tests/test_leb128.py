"""Unsigned LEB128 against the spec's examples, round trips and malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icgw.leb128 import decode_unsigned, encode_unsigned

from .conftest import load_vector


def test_the_vector_examples() -> None:
    examples = load_vector("request_ids.json")["leb128_examples"]
    for name, encoded in examples.items():
        kind, number = name.split()
        if kind == "unsigned":
            assert encode_unsigned(int(number)).hex() == encoded
            assert decode_unsigned(bytes.fromhex(encoded)) == int(number)


@given(st.integers(min_value=0, max_value=2**200))
def test_round_trip(n: int) -> None:
    assert decode_unsigned(encode_unsigned(n)) == n


MALFORMED = [(b"", "truncated"), (b"\x80", "truncated"), (b"\x01\x01", "after")]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_unsigned(data)


def test_negative_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        encode_unsigned(-1)
