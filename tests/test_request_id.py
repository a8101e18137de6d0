"""Request ids (`hash_of_map`) against every vector in `request_ids.json` and a pure-Python reference."""

from __future__ import annotations

import hashlib
import json
import re
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import RequestIdError, cbor_decode, envelope_request_id, request_id, verify_envelope

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
REQUEST_IDS: dict[str, Any] = json.loads((VECTORS / "request_ids.json").read_text())


# --- a small reference implementation, straight from the spec ----------------------------------------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leb128_unsigned(n: int) -> bytes:
    assert n >= 0
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n == 0:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def leb128_signed(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if (n == 0 and not low & 0x40) or (n == -1 and low & 0x40):
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def ref_hash(value: object) -> bytes:
    if isinstance(value, bytes):
        return sha256(value)
    if isinstance(value, str):
        return sha256(value.encode())
    if isinstance(value, int) and not isinstance(value, bool):
        return sha256(leb128_unsigned(value) if value >= 0 else leb128_signed(value))
    if isinstance(value, list):
        return sha256(b"".join(ref_hash(v) for v in value))
    if isinstance(value, dict):
        return ref_hash_of_map(value)
    raise TypeError(type(value))


def ref_hash_of_map(m: Mapping[str, object]) -> bytes:
    return sha256(b"".join(sorted(sha256(k.encode()) + ref_hash(v) for k, v in m.items())))


# --- vector decoding -------------------------------------------------------------------------------


def decode_typed(typed: Mapping[str, Any]) -> object:
    """`{"blob_hex": ...}`, `{"text": ...}`, `{"nat": "..."}`, `{"array": [...]}`, `{"map": {...}}`."""
    ((kind, value),) = typed.items()
    if kind == "blob_hex":
        return bytes.fromhex(value)
    if kind == "text":
        return str(value)
    if kind in ("nat", "int"):
        return int(value)
    if kind == "array":
        return [decode_typed(v) for v in value]
    if kind == "map":
        return {k: decode_typed(v) for k, v in value.items()}
    raise ValueError(f"unknown vector type {kind}")


def vector_ids() -> Iterator[str]:
    for v in REQUEST_IDS["vectors"]:
        yield v["name"]


def vector(name: str) -> dict[str, Any]:
    return next(v for v in REQUEST_IDS["vectors"] if v["name"] == name)


def hashed_as_signed(v: Mapping[str, Any]) -> bool:
    return "signed" in v.get("integers_hashed_as", "") and "unsigned" not in v["integers_hashed_as"]


# --- the vectors -----------------------------------------------------------------------------------


def test_all_vectors_are_covered() -> None:
    assert len(REQUEST_IDS["vectors"]) == 11


@pytest.mark.parametrize("name", list(vector_ids()))
def test_request_id_vector(name: str) -> None:
    v = vector(name)
    content = decode_typed(v["input"])
    assert isinstance(content, dict)
    expected = bytes.fromhex(v["expected_hash_hex"])
    if hashed_as_signed(v):
        # A positive number hashed as a *signed* int (agent-rs hashes Rust i32 that way). A Python int
        # >= 0 is always a nat here, so request_id must give the nat hash that the notes state, and the
        # signed interpretation is checked with the reference implementation.
        nat_hash = re.search(r"[0-9a-f]{64}", v["notes"])
        assert nat_hash is not None
        assert request_id(content) == bytes.fromhex(nat_hash.group())
        signed = sha256(
            b"".join(sorted(sha256(k.encode()) + sha256(leb128_signed(n)) for k, n in content.items()))
        )
        assert signed == expected
        return
    assert request_id(content) == expected
    assert ref_hash_of_map(content) == expected


def test_spec_example_intermediate_hashes() -> None:
    """Each (field, value) pair of the spec example, alone in a map, hashes to H(H(key) ‖ H(value))."""
    intermediate = list(REQUEST_IDS["spec_example_intermediate_hashes"].items())
    fields = list(decode_typed(vector("spec_call_example")["input"]).items())  # type: ignore[attr-defined]
    assert len(intermediate) == 2 * len(fields) == 12
    for (key, value), (key_label, key_hash), (_, value_hash) in zip(
        fields, intermediate[0::2], intermediate[1::2], strict=True
    ):
        assert key in key_label
        single = request_id({key: value})
        assert single == sha256(bytes.fromhex(key_hash) + bytes.fromhex(value_hash))
        assert sha256(key.encode()).hex() == key_hash


@pytest.mark.parametrize("label", list(REQUEST_IDS["leb128_examples"]))
def test_leb128_examples(label: str) -> None:
    kind, number = label.split()
    n = int(number)
    encoded = bytes.fromhex(REQUEST_IDS["leb128_examples"][label])
    assert kind in ("unsigned", "signed")
    assert (n < 0) == (kind == "signed")
    # Observed through request_id: a one-field map hashes the value's LEB128.
    assert request_id({"x": n}) == sha256(sha256(b"x") + sha256(encoded))


@pytest.mark.parametrize("index", range(len(REQUEST_IDS["real_envelopes"]["items"])))
def test_real_envelopes(index: int) -> None:
    item = REQUEST_IDS["real_envelopes"]["items"][index]
    body = bytes.fromhex(item["body_cbor_hex"])
    expected = bytes.fromhex(item["request_id_hex"])
    assert envelope_request_id(body) == expected
    content = decode_typed(item["decoded_content"])
    assert request_id(content) == expected  # type: ignore[arg-type]
    decoded = cbor_decode(body)
    assert isinstance(decoded, dict)
    assert decoded["content"] == content
    # Both are anonymous query / read_state requests, so the replica accepts them at any time.
    verify_envelope(body, 0)
    verify_envelope(body, 2**64 - 1)


def test_signing_domain_separators() -> None:
    signing = REQUEST_IDS["signing"]
    assert "0a69632d72657175657374" in signing["sender_sig message"]
    assert bytes.fromhex("0a69632d72657175657374") == b"\x0aic-request"
    assert "1a69632d726571756573742d617574682d64656c65676174696f6e" in signing["delegation signature message"]


# --- behaviour beyond the vectors ----------------------------------------------------------------


def test_key_order_does_not_matter() -> None:
    a = {"a": 1, "b": b"x", "c": "y"}
    b = {"c": "y", "a": 1, "b": b"x"}
    assert request_id(a) == request_id(b)


def test_other_mappings_and_sequences_hash_like_dicts_and_lists() -> None:
    content = {"paths": [[b"a", b"b"], []], "n": 5, "m": {"k": "v"}}
    assert request_id(types.MappingProxyType(content)) == request_id(content)
    as_tuples = {"paths": ((b"a", b"b"), ()), "n": 5, "m": types.MappingProxyType({"k": "v"})}
    assert request_id(as_tuples) == request_id(content)
    assert request_id({"b": bytearray(b"xy")}) == request_id({"b": b"xy"})
    assert request_id({"b": memoryview(b"xy")}) == request_id({"b": b"xy"})


def test_signed_and_unsigned_ints_differ() -> None:
    assert request_id({"n": -1}) == sha256(sha256(b"n") + sha256(b"\x7f"))
    assert request_id({"n": 127}) == sha256(sha256(b"n") + sha256(b"\x7f"))  # nat 127 is also 7f
    assert request_id({"n": 128}) != request_id({"n": -128})


@pytest.mark.parametrize("n", [2**64, 2**64 - 1, 2**200 + 12345, -(2**63) - 1, -(2**64), -(2**300) + 7])
def test_integers_beyond_64_bits(n: int) -> None:
    assert request_id({"n": n}) == ref_hash_of_map({"n": n})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"flag": True}, "bool"),
        ({"x": 1.5}, "float"),
        ({"x": None}, "NoneType"),
        ({"x": [1, False]}, "bool"),
        ({"x": {"y": None}}, "NoneType"),
        ({"x": {1: b""}}, "keys must be str"),
        ({"x": object()}, "object"),
        ({"x": {1, 2}}, "set"),
    ],
)
def test_unhashable_values_raise(content: dict[str, object], message: str) -> None:
    with pytest.raises(RequestIdError, match=message):
        request_id(content)


def test_non_str_top_level_key_raises() -> None:
    with pytest.raises(RequestIdError, match="keys must be str"):
        request_id({b"k": b"v"})  # type: ignore[dict-item]


def test_non_mapping_raises() -> None:
    with pytest.raises(RequestIdError, match="expected a mapping"):
        request_id([("a", 1)])  # type: ignore[arg-type]


def test_self_referencing_value_raises_instead_of_crashing() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(RequestIdError, match="nested too deeply"):
        request_id({"x": loop})


def test_error_is_a_value_error() -> None:
    assert issubclass(RequestIdError, ValueError)


# --- hypothesis: agreement with the reference ------------------------------------------------------

leaves = st.one_of(
    st.binary(max_size=40), st.text(max_size=20), st.integers(min_value=-(2**130), max_value=2**130)
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
maps = st.dictionaries(st.text(max_size=12), values, max_size=8)


@settings(max_examples=400)
@given(maps)
def test_request_id_agrees_with_reference(content: dict[str, object]) -> None:
    assert request_id(content) == ref_hash_of_map(content)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_nat_fast_path_agrees_with_reference(n: int) -> None:
    assert request_id({"ingress_expiry": n}) == ref_hash_of_map({"ingress_expiry": n})


@given(st.integers(max_value=-1, min_value=-(2**80)))
def test_negative_ints_agree_with_reference(n: int) -> None:
    assert request_id({"n": n}) == ref_hash_of_map({"n": n})
