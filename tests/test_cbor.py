"""CBOR codec: agreement with cbor2, IC flavour (tag 55799), strict limits on hostile input."""

from __future__ import annotations

import contextlib
import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import CborError, cbor_decode, cbor_encode

SELF_DESCRIBE = b"\xd9\xd9\xf7"

keys = st.one_of(st.text(max_size=8), st.integers(min_value=-(2**64), max_value=2**64 - 1))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.binary(max_size=64),
    st.text(max_size=32),
    st.floats(allow_nan=False),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=40,
)


def normalise(value: object) -> object:
    """cbor2 decodes arrays as lists and maps as dicts; make tuples comparable too."""
    if isinstance(value, tuple | list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


@given(values)
def test_round_trip(value: object) -> None:
    encoded = cbor_encode(value)
    assert encoded.startswith(SELF_DESCRIBE)
    assert normalise(cbor_decode(encoded)) == normalise(value)


@given(values)
def test_agrees_with_cbor2_both_ways(value: object) -> None:
    ours = cbor_encode(value, self_describe=False)
    assert normalise(cbor2.loads(ours)) == normalise(value)
    theirs = cbor2.dumps(value)
    assert normalise(cbor_decode(theirs)) == normalise(value)


def test_self_describe_tag_is_dropped_wherever_it_appears() -> None:
    data = SELF_DESCRIBE + b"\xa1\x61k" + SELF_DESCRIBE + b"\x82\x01\x02"
    assert cbor_decode(data) == {"k": [1, 2]}


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (0, b"\x00"),
        (23, b"\x17"),
        (24, b"\x18\x18"),
        (2**64 - 1, b"\x1b" + b"\xff" * 8),
        (-1, b"\x20"),
        (-(2**64), b"\x3b" + b"\xff" * 8),
        (2**64, b"\xc2\x49\x01" + b"\x00" * 8),
        (-(2**64) - 1, b"\xc3\x49\x01" + b"\x00" * 8),
        (b"", b"\x40"),
        ("", b"\x60"),
        ([], b"\x80"),
        ({}, b"\xa0"),
    ],
)
def test_minimal_definite_encodings(value: object, encoding: bytes) -> None:
    assert cbor_encode(value, self_describe=False) == encoding
    assert cbor_decode(encoding) == value


def test_bytes_like_values_are_byte_strings() -> None:
    assert cbor_encode(bytearray(b"ab"), self_describe=False) == b"\x42ab"
    assert cbor_encode(memoryview(b"ab"), self_describe=False) == b"\x42ab"


def test_floats() -> None:
    assert cbor_decode(b"\xf9\x3c\x00") == 1.0  # half precision
    assert math.isinf(cbor_decode(cbor_encode(math.inf)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x01\x02", "trailing"),
        (b"\x9a\xff\xff\xff\xff", "exceeds"),
        (b"\x5a\xff\xff\xff\xff", "invalid CBOR"),
        (b"\x81" * 500 + b"\x00", "deep"),
        (b"\x5f\x41a\xff", "indefinite"),
        (b"\x9f\xff", "indefinite"),
        (b"\xa2\x61a\x01\x61a\x02", "duplicate"),
        (b"\xc1\x00", "tag 1"),
        (b"\x1c", "invalid CBOR"),
        (b"\xff", "invalid CBOR"),
        (b"\xa1\x80\x00", "map key"),
        (b"\x62\xff\xfe", "invalid CBOR"),
    ],
)
def test_malformed_input_raises_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(CborError, match=reason):
        cbor_decode(data)


def test_depth_limit_is_adjustable() -> None:
    nested = b"\x81" * 10 + b"\x00"
    assert cbor_decode(nested, max_depth=11) == [[[[[[[[[[0]]]]]]]]]]
    with pytest.raises(CborError, match="deep"):
        cbor_decode(nested, max_depth=10)


def test_unencodable_values_raise() -> None:
    with pytest.raises(CborError, match="set"):
        cbor_encode({1, 2})
    nested: list[object] = []
    for _ in range(300):
        nested = [nested]
    with pytest.raises(CborError, match="nested too deeply"):
        cbor_encode(nested)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(CborError):
        cbor_decode(data)


@settings(max_examples=300)
@given(values, st.data())
def test_truncated_encodings_are_rejected(value: object, data: st.DataObject) -> None:
    encoded = cbor_encode(value, self_describe=False)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CborError):
        cbor_decode(encoded[:cut])
