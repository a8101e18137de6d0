"""Candid (IC-INTERFACE.md §8, PROTOCOL.md §2) and the CBOR WebsocketMessage (PROTOCOL.md §3.1)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import (
    CandidError,
    candid_decode,
    candid_decode_values,
    candid_encode,
    candid_encode_values,
    candid_idl_hash,
    decode_websocket_message,
    encode_websocket_message,
    principal_from_text,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
CANDID = json.loads((VECTORS / "candid.json").read_text())

# The named types the Candid test suite declares (construct.test.did) and its vectors refer to.
TEST_SUITE_DEFS = """
type Vec = vec Vec;
type EmptyRecord = record { 0 : EmptyRecord };
type List = opt record { head : int; tail : List };
type List1 = opt List2;
type List2 = record { head : int; tail : List1 };
type VariantList = variant { nil; cons : record { head : int; tail : VariantList } };
"""

# Positive vectors whose bytes are not what an encoder writes for the value at the expected type: they
# test decoding of a different wire type (subtyping: extra or missing fields and arguments, opt
# coercions, services and funcs), or of non-minimal LEB128. Every other positive vector must re-encode
# byte for byte, and these must not (so that this list cannot go stale unnoticed).
NOT_CANONICAL = {
    "nat: leb overlong",
    "vec: non-recursive tree",
    "record: opt",
    "record: reserved",
    "record: ignore fields",
    "record: missing opt field",
    "record: missing null field",
    "record: missing null field also in textual format",
    "opt: parsing false : opt bool",
    "opt: parsing true : opt bool",
    "opt: parsing true : opt opt bool gives null",
    "null : opt bool <: opt nat",
    "opt true : opt bool <: opt nat",
    "opt opt true : opt opt bool <: opt nat",
    "opt opt true : opt opt bool <: opt opt nat",
    "opt: recovered coercion error under variant",
    "variant: ignore field",
    "variant {0;1} <: opt variant {0}",
    "variant: change index",
    "variant: extra args",
    "new variant field",
    "parsing into record with expected field that is greater than extra field on the wire",
    "parsing into record with expected field that is less than extra field on the wire",
    "service {} value decodes at principal",
    "service {foo} value decodes at principal",
    "recursive service value decodes at principal",
    "service { foo : (text) -> (nat) } decodes at service {}",
    "func (text) -> (nat) decodes at func (text, opt text) -> () }",
}


def vector_id(entry: dict[str, str]) -> str:
    return f"{entry['description']} {entry['type']}"


def vector_value_text(entry: dict[str, str]) -> str:
    """The expected value in Candid text. The vectors keep the test files' string-literal notation, in
    which every backslash of the Candid text is escaped once more (`"\\\\01"` for `"\\01"`)."""
    return re.sub(r"\\(.)", r"\1", entry["value"])


def suite_types(entry: dict[str, str]) -> str:
    return TEST_SUITE_DEFS + entry["type"]


# --- the Candid test-suite vectors ----------------------------------------------------------------


def test_the_vector_file_has_the_documented_size() -> None:
    assert len(CANDID["positive"]) == 85
    assert len(CANDID["negative"]) == 40


@pytest.mark.parametrize("entry", CANDID["positive"], ids=vector_id)
def test_positive_vector_decodes_to_the_expected_value(entry: dict[str, str]) -> None:
    blob = bytes.fromhex(entry["blob_hex"])
    types = suite_types(entry)
    decoded = candid_decode(blob, types=types)
    # Candid text has many spellings of one value; compare canonical forms (encode, then decode).
    expected_bytes = candid_encode(vector_value_text(entry), types=types)
    assert decoded == candid_decode(expected_bytes, types=types)
    # The decoded text is itself valid input: it re-encodes to the same value.
    assert candid_encode(decoded, types=types) == expected_bytes
    # Every positive vector is also well-formed without an expected type.
    assert candid_decode(blob).startswith("(")


@pytest.mark.parametrize("entry", CANDID["positive"], ids=vector_id)
def test_positive_vector_re_encodes_byte_for_byte_unless_it_tests_subtyping(entry: dict[str, str]) -> None:
    blob = bytes.fromhex(entry["blob_hex"])
    encoded = candid_encode(vector_value_text(entry), types=suite_types(entry))
    if entry["description"] in NOT_CANONICAL:
        assert encoded != blob
    else:
        assert encoded == blob


@pytest.mark.parametrize("entry", CANDID["negative"], ids=vector_id)
def test_negative_vector_is_rejected(entry: dict[str, str]) -> None:
    with pytest.raises(CandidError):
        candid_decode(bytes.fromhex(entry["blob_hex"]), types=suite_types(entry))


@pytest.mark.parametrize(("name", "expected"), CANDID["idl_hash"]["examples"].items())
def test_idl_hash_examples(name: str, expected: int) -> None:
    assert candid_idl_hash(name) == expected


def test_idl_hash_check_example_fields_are_sorted_by_id() -> None:
    # bar (4895187) comes before foo (5097222) in the type table.
    encoded = candid_encode("(record { foo = 42; bar = true })")
    assert encoded.hex().startswith("4449444c016c02d3e3aa027e868eb7027c")


PRIMITIVE_SAMPLES: dict[str, object] = {
    "null": None,
    "bool": True,
    "nat": 1,
    "int": -1,
    "nat8": 255,
    "nat16": 65535,
    "nat32": 2**32 - 1,
    "nat64": 2**64 - 1,
    "int8": -128,
    "int16": -(2**15),
    "int32": -(2**31),
    "int64": -(2**63),
    "float32": 1.5,
    "float64": -2.25,
    "text": "t",
    "reserved": None,
    "principal": b"\x04",
}
CONSTRUCTOR_SAMPLES: dict[str, tuple[str, object]] = {
    "opt": ("opt nat", None),
    "vec": ("vec int", [1]),
    "record": ("record { a : nat }", {"a": 1}),
    "variant": ("variant { a }", {"a": None}),
    "func": ("func () -> ()", (b"\x01", "m")),
    "service": ("service {}", b"\x01"),
}


@pytest.mark.parametrize(("name", "opcode"), CANDID["type_opcodes"].items())
def test_type_opcodes(name: str, opcode: str) -> None:
    op = int(opcode, 16)
    if name == "empty":
        # No value has type empty; it still appears in a type table.
        assert candid_encode_values("(opt empty)", [None]) == bytes.fromhex("4449444c016e6f010000")
    elif name in PRIMITIVE_SAMPLES:
        data = candid_encode_values(f"({name})", [PRIMITIVE_SAMPLES[name]])
        assert data[:7] == b"DIDL\x00\x01" + bytes([op])  # no table; the argument type is the opcode
        assert candid_decode_values(f"({name})", data) == [PRIMITIVE_SAMPLES[name]]
    else:
        types, value = CONSTRUCTOR_SAMPLES[name]
        data = candid_encode_values(f"({types})", [value])
        assert data[:6] == b"DIDL\x01" + bytes([op])  # a one-entry table with this constructor
        assert candid_decode_values(f"({types})", data) == [value]


# --- IC-INTERFACE.md §8 worked encodings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "types", "expected"),
    [
        (
            '(record { canister_id = principal "ivg37-qiaaa-aaaab-aaaga-cai" })',
            None,
            "4449444c016c01b3c4b1f204680100010a000000000020000c0101",
        ),
        ('("hello")', None, "4449444c0001710568656c6c6f"),
        ("(1 : nat64)", None, "4449444c0001780100000000000000"),
        ("(1)", "(nat64)", "4449444c0001780100000000000000"),
        ("()", None, "4449444c0000"),
    ],
)
def test_worked_encodings(text: str, types: str | None, expected: str) -> None:
    assert candid_encode(text, types=types).hex() == expected


def test_worked_encoding_with_two_table_entries() -> None:
    # @dfinity/candid writes the table leaves first (blob, then the variant); the candid crate writes the
    # variant first. Both are valid: the values must agree and each side must decode the other's bytes.
    types = "(variant { Ok : blob; Err : text })"
    theirs = bytes.fromhex("4449444c026d7b6b02bc8a0100c5fed2017101010003010203")
    ours = candid_encode('(variant { Ok = blob "\\01\\02\\03" })', types=types)
    assert ours.hex() == "4449444c026b02bc8a0101c5fed201716d7b01000003010203"
    assert ours.endswith(b"\x00\x03\x01\x02\x03")
    assert theirs.endswith(b"\x00\x03\x01\x02\x03")
    assert candid_encode_values(types, [{"Ok": b"\x01\x02\x03"}]) == ours
    for data in (theirs, ours):
        assert candid_decode_values(types, data) == [{"Ok": b"\x01\x02\x03"}]
        assert candid_decode(data, types=types) == candid_decode(theirs, types=types)


def test_worked_encodings_through_python_values() -> None:
    canister = principal_from_text("ivg37-qiaaa-aaaab-aaaga-cai")
    assert candid_encode_values(
        "(record { canister_id : principal })", [{"canister_id": canister}]
    ).hex() == ("4449444c016c01b3c4b1f204680100010a000000000020000c0101")
    assert candid_decode_values("()", bytes.fromhex("4449444c0000")) == []


# --- PROTOCOL.md §2.1 field ids ---------------------------------------------------------------------

FIELD_IDS = [
    ("client_principal", 1384677498, "fa80a29405"),
    ("client_nonce", 3921324219, "bbd1eacd0e"),
    ("client_key", 1025972843, "ebb49ce903"),
    ("sequence_num", 352253448, "88ecfba701"),
    ("timestamp", 2781795542, "d6a9bbae0a"),
    ("is_service_message", 2815490792, "e8f5c3be0a"),
    ("content", 427265337, "b99adecb01"),
    ("msg", 5446209, "c1b4cc02"),
    ("gateway_principal", 647083891, "f3eec6b402"),
    ("nonce", 2680573167, "ef9999fe09"),
    ("key", 5343647, "9f93c602"),
    ("messages", 889051340, "ccb1f7a703"),
    ("cert", 1102915300, "e4cdf48d04"),
    ("tree", 1292081502, "deb28ee804"),
    ("OpenMessage", 428171005, "fdbd95cc01"),
    ("KeepAliveMessage", 2525358527, "bfd397b409"),
    ("CloseMessage", 2918480143, "8ff2d1ef0a"),
    ("AckMessage", 3049003934, "9eb7f0ad0b"),
    ("ClosedByApplication", 1198956877, "cdc2dabb04"),
    ("InvalidServiceMessage", 1409524553, "c9c68ea005"),
    ("WrongSequenceNumber", 2743637463, "d7aba29c0a"),
    ("KeepAliveTimeout", 3580612249, "999dafab0d"),
    ("last_incoming_sequence_num", 2804597848, "d888abb90a"),
    ("reason", 4238151620, "c49ff4e40f"),
    ("Ok", 17724, "bc8a01"),
    ("Err", 3456837, "c5fed201"),
    ("text", 1291439277, "ad99e7e704"),
    ("is_end_of_queue", 3733147138, "829c8df40d"),
]


@pytest.mark.parametrize(("name", "field_id", "leb"), FIELD_IDS)
def test_field_id_table(name: str, field_id: int, leb: str) -> None:
    assert candid_idl_hash(name) == field_id
    # The id appears on the wire as its LEB128: record { <name> : null } has the table 6c 01 <leb> 7f.
    data = candid_encode_values(f"(record {{ {name} : null }})", [{name: None}])
    assert data.hex() == f"4449444c016c01{leb}7f0100"  # one argument of type 0; null has no bytes


# --- the IC WebSocket types ------------------------------------------------------------------------

principals = st.binary(max_size=29)
nat64s = st.integers(min_value=0, max_value=2**64 - 1)
blobs = st.binary(max_size=64)
client_keys = st.fixed_dictionaries({"client_principal": principals, "client_nonce": nat64s})
websocket_messages = st.fixed_dictionaries(
    {
        "client_key": client_keys,
        "sequence_num": nat64s,
        "timestamp": nat64s,
        "is_service_message": st.booleans(),
        "content": blobs,
    }
)
output_messages = st.fixed_dictionaries(
    {"client_key": client_keys, "key": st.text(max_size=40), "content": blobs}
)
certified_messages = st.fixed_dictionaries(
    {
        "messages": st.lists(output_messages, max_size=4),
        "cert": blobs,
        "tree": blobs,
        "is_end_of_queue": st.booleans(),
    }
)
unit_results = st.one_of(st.just({"Ok": None}), st.builds(lambda t: {"Err": t}, st.text(max_size=20)))
sequence_nums = st.fixed_dictionaries({"last_incoming_sequence_num": nat64s})
close_reasons = st.sampled_from(
    ["WrongSequenceNumber", "InvalidServiceMessage", "KeepAliveTimeout", "ClosedByApplication"]
).map(lambda r: {r: None})
service_messages = st.one_of(
    st.fixed_dictionaries({"OpenMessage": st.fixed_dictionaries({"client_key": client_keys})}),
    st.fixed_dictionaries({"AckMessage": sequence_nums}),
    st.fixed_dictionaries({"KeepAliveMessage": sequence_nums}),
    st.fixed_dictionaries({"CloseMessage": st.fixed_dictionaries({"reason": close_reasons})}),
)

WS_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "ClientPrincipal": principals,
    "GatewayPrincipal": principals,
    "ClientKey": client_keys,
    "WebsocketMessage": websocket_messages,
    "CanisterOutputMessage": output_messages,
    "CanisterOutputCertifiedMessages": certified_messages,
    "CanisterWsOpenArguments": st.fixed_dictionaries(
        {"client_nonce": nat64s, "gateway_principal": principals}
    ),
    "CanisterWsOpenResult": unit_results,
    "CanisterWsCloseArguments": st.fixed_dictionaries({"client_key": client_keys}),
    "CanisterWsCloseResult": unit_results,
    "CanisterWsMessageArguments": st.fixed_dictionaries({"msg": websocket_messages}),
    "CanisterWsMessageResult": unit_results,
    "CanisterWsGetMessagesArguments": st.fixed_dictionaries({"nonce": nat64s}),
    "CanisterWsGetMessagesResult": st.one_of(
        certified_messages.map(lambda m: {"Ok": m}), st.text(max_size=20).map(lambda t: {"Err": t})
    ),
    "CanisterOpenMessageContent": st.fixed_dictionaries({"client_key": client_keys}),
    "CanisterAckMessageContent": sequence_nums,
    "ClientKeepAliveMessageContent": sequence_nums,
    "CloseMessageReason": close_reasons,
    "CanisterCloseMessageContent": st.fixed_dictionaries({"reason": close_reasons}),
    "WebsocketServiceMessageContent": service_messages,
    "AppMessage": st.fixed_dictionaries({"text": st.text(max_size=40), "timestamp": nat64s}),
}


@pytest.mark.parametrize("type_name", WS_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_ws_type_round_trips(type_name: str, data: st.DataObject) -> None:
    value = data.draw(WS_TYPES[type_name])
    types = f"({type_name})"
    encoded = candid_encode_values(types, [value])
    assert candid_decode_values(types, encoded) == [value]
    # The same bytes through the text path, with field names from the type.
    assert candid_encode(candid_decode(encoded, types=types), types=types) == encoded


@settings(max_examples=40, deadline=None)
@given(msg=websocket_messages, app=st.none() | WS_TYPES["AppMessage"])
def test_ws_message_arguments_with_the_app_argument(msg: dict[str, Any], app: dict[str, Any] | None) -> None:
    types = "(CanisterWsMessageArguments, opt AppMessage)"
    encoded = candid_encode_values(types, [{"msg": msg}, app])
    assert candid_decode_values(types, encoded) == [{"msg": msg}, app]


def test_test_canister_argument_types() -> None:
    cases: list[tuple[str, list[object]]] = [
        ("(principal, vec blob)", [b"\x01\x02", [b"a", b"", b"c"]]),
        ("(nat64, nat64)", [50, 300_000]),
        ("(principal)", [b"\x04"]),
    ]
    for types, values in cases:
        assert candid_decode_values(types, candid_encode_values(types, values)) == values


CLIENT = bytes(range(1, 30))
NONCE = 385892949151814926


@pytest.mark.parametrize(
    ("content", "value_tail"),
    [
        (
            {"OpenMessage": {"client_key": {"client_principal": CLIENT, "client_nonce": NONCE}}},
            b"\x00\x01\x1d" + CLIENT + NONCE.to_bytes(8, "little"),
        ),
        ({"KeepAliveMessage": {"last_incoming_sequence_num": 7}}, b"\x01" + (7).to_bytes(8, "little")),
        ({"CloseMessage": {"reason": {"ClosedByApplication": None}}}, b"\x02\x00"),
        ({"CloseMessage": {"reason": {"InvalidServiceMessage": None}}}, b"\x02\x01"),
        ({"CloseMessage": {"reason": {"WrongSequenceNumber": None}}}, b"\x02\x02"),
        ({"CloseMessage": {"reason": {"KeepAliveTimeout": None}}}, b"\x02\x03"),
        ({"AckMessage": {"last_incoming_sequence_num": 0}}, b"\x03" + bytes(8)),
    ],
)
def test_service_message_wire_indices(content: dict[str, Any], value_tail: bytes) -> None:
    # The value is the last part of the message: the variant index, then the payload.
    data = candid_encode_values("(WebsocketServiceMessageContent)", [content])
    assert data.endswith(value_tail)
    assert candid_decode_values("(WebsocketServiceMessageContent)", data) == [content]


# --- hand-built messages: another type-table order, and what the SDK sends ------------------------


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fid(name: str) -> bytes:
    return leb(candid_idl_hash(name))


SDK_CONTENT = b"DIDL\x00\x01\x71\x02hi"
SDK_MSG: dict[str, Any] = {
    "client_key": {"client_principal": CLIENT, "client_nonce": NONCE},
    "sequence_num": 2,
    "timestamp": 1_702_143_738_049_000_000,
    "is_service_message": False,
    "content": SDK_CONTENT,
}


def ws_message_value() -> bytes:
    """The msg record's value; fields in id order (sequence_num, content, client_key, timestamp, …)."""
    return (
        (2).to_bytes(8, "little")
        + leb(len(SDK_CONTENT))
        + SDK_CONTENT
        + b"\x01\x1d"
        + CLIENT
        + NONCE.to_bytes(8, "little")
        + (1_702_143_738_049_000_000).to_bytes(8, "little")
        + b"\x00"
    )


def hand_built_ws_message_args(second: bytes) -> bytes:
    """(CanisterWsMessageArguments, <second>) with a type table written leaves first (the reverse of what
    the candid crate writes), entry 0 = `opt null` for the SDK's second argument."""
    table = [
        b"\x6e\x7f",  # 0: opt null
        b"\x6d\x7b",  # 1: blob
        b"\x6c\x02" + fid("client_principal") + b"\x68" + fid("client_nonce") + b"\x78",  # 2: ClientKey
        b"\x6c\x05"  # 3: WebsocketMessage
        + fid("sequence_num")
        + b"\x78"
        + fid("content")
        + b"\x01"
        + fid("client_key")
        + b"\x02"
        + fid("timestamp")
        + b"\x78"
        + fid("is_service_message")
        + b"\x7e",
        b"\x6c\x01" + fid("msg") + b"\x03",  # 4: CanisterWsMessageArguments
    ]
    header = b"DIDL" + leb(len(table)) + b"".join(table)
    if second:
        return header + b"\x02\x04\x00" + ws_message_value() + second
    return header + b"\x01\x04" + ws_message_value()


def test_decoding_tolerates_another_table_order_and_the_sdks_opt_null() -> None:
    sdk = hand_built_ws_message_args(second=b"\x00")  # opt null = null
    assert candid_decode_values("(CanisterWsMessageArguments, opt AppMessage)", sdk) == [
        {"msg": SDK_MSG},
        None,
    ]
    assert candid_decode_values("(CanisterWsMessageArguments)", sdk) == [{"msg": SDK_MSG}]


def test_an_absent_second_argument_decodes_as_none() -> None:
    alone = hand_built_ws_message_args(second=b"")
    assert candid_decode_values("(CanisterWsMessageArguments, opt AppMessage)", alone) == [
        {"msg": SDK_MSG},
        None,
    ]


def test_a_mismatched_opt_argument_decodes_as_none() -> None:
    # (CanisterWsMessageArguments, opt text) decoded at (…, opt AppMessage): opt subtyping gives none.
    encoded = candid_encode_values("(CanisterWsMessageArguments, opt text)", [{"msg": SDK_MSG}, "hello"])
    assert candid_decode_values("(CanisterWsMessageArguments, opt AppMessage)", encoded) == [
        {"msg": SDK_MSG},
        None,
    ]


def test_wrong_types_are_rejected() -> None:
    # sequence_num as nat instead of nat64.
    wrong = candid_encode_values(
        "(record { msg : record { client_key : ClientKey; sequence_num : nat; timestamp : nat64;"
        " is_service_message : bool; content : blob } })",
        [{"msg": SDK_MSG}],
    )
    with pytest.raises(CandidError, match="Subtyping error"):
        candid_decode_values("(CanisterWsMessageArguments)", wrong)
    with pytest.raises(CandidError):
        candid_decode_values("(CanisterWsOpenArguments)", candid_encode('("text")'))
    with pytest.raises(CandidError):
        candid_decode_values("(CanisterWsOpenArguments)", candid_encode("()"))


# --- encoding checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "values", "message"),
    [
        (
            "(CanisterWsMessageArguments)",
            [{"msg": {**SDK_MSG, "client_key": {"client_principal": CLIENT, "client_nonce": 2**64}}}],
            "arg0.msg.client_key.client_nonce: 18446744073709551616 is out of range for nat64",
        ),
        ("(CanisterWsGetMessagesArguments)", [{"nonce": -1}], "arg0.nonce: -1 is out of range for nat64"),
        (
            "(CanisterWsGetMessagesArguments)",
            [{"nonce": True}],
            "arg0.nonce: expected an int for nat64, got a bool",
        ),
        ("(CanisterWsGetMessagesArguments)", [{}], "arg0: missing field nonce"),
        ("(CanisterWsGetMessagesArguments)", [{"nonce": 1, "x": 2}], "arg0: unknown field 'x'"),
        ("(CanisterWsGetMessagesArguments)", [[1]], "arg0: expected a dict for a record, got list"),
        (
            "(CanisterWsOpenArguments)",
            [{"client_nonce": 1, "gateway_principal": bytes(30)}],
            "at most 29 bytes",
        ),
        (
            "(CanisterWsOpenArguments)",
            [{"client_nonce": 1, "gateway_principal": "aaaaa-aa"}],
            "expected principal",
        ),
        (
            "(CanisterWsOpenResult)",
            [{"Maybe": None}],
            "arg0: unknown variant case 'Maybe' (expected one of Ok, Err)",
        ),
        ("(CanisterWsOpenResult)", [{"Ok": None, "Err": "x"}], "arg0: expected a one-key dict"),
        ("(CanisterWsOpenResult)", [{"Ok": 1}], "arg0.Ok: expected None for null, got int"),
        ("(CanisterWsOpenResult)", [{"Err": b"x"}], "arg0.Err: expected a str for text, got bytes"),
        ("(vec nat8)", [[1, 2]], "arg0: expected bytes for blob, got list"),
        ("(vec nat16)", [[1, 65536]], "arg0[1]: 65536 is out of range for nat16"),
        ("(nat8)", [1.0], "expected an int for nat8, got float"),
        ("(nat, nat)", [1], "2 types but 1 values"),
        ("(nat)", "1", "values must be a sequence, not str"),
        ("(empty)", [None], "no value has type empty"),
    ],
)
def test_encoding_checks_ranges_and_shapes(types: str, values: Any, message: str) -> None:
    with pytest.raises(CandidError) as excinfo:
        candid_encode_values(types, values)
    assert message in str(excinfo.value)


def test_encoding_fills_absent_optional_fields_and_accepts_tuples() -> None:
    assert candid_decode_values(
        "(record { a : opt nat; b : null })", candid_encode_values("(record { a : opt nat; b : null })", [{}])
    ) == [{"a": None, "b": None}]
    data = candid_encode_values("(record { int; bool })", [(42, True)])
    assert data == bytes.fromhex("4449444c016c02007c017e01002a01")
    assert candid_decode_values("(record { int; bool })", data) == [{0: 42, 1: True}]
    assert candid_encode_values("(nat)", (5,)) == candid_encode("(5 : nat)")


def test_big_numbers() -> None:
    for types, value in [("(nat)", 2**200), ("(int)", -(2**100)), ("(int)", 2**64), ("(nat)", 0)]:
        assert candid_decode_values(types, candid_encode_values(types, [value])) == [value]


def test_bad_type_lists_are_candid_errors() -> None:
    for types in ["(NoSuchType)", "(record {", "nat"]:
        with pytest.raises(CandidError, match="Candid types"):
            candid_encode_values(types, [1])


# --- hostile Candid --------------------------------------------------------------------------------


def test_decoding_bombs_are_refused() -> None:
    bomb = bytes.fromhex("4449444c016d7f0100ffffffff0f")  # vec null with 2^32 - 1 elements
    with pytest.raises(CandidError, match="limit"):
        candid_decode(bomb)
    with pytest.raises(CandidError):
        candid_decode_values("(vec null)", bomb)


def test_deep_nesting_is_refused() -> None:
    deep = b"DIDL\x01\x6e\x00\x01\x00" + b"\x01" * 300 + b"\x00"  # type L = opt L, 300 levels
    with pytest.raises(CandidError, match="nest"):
        candid_decode(deep)
    with pytest.raises(CandidError, match="nest"):
        candid_encode("(" + "opt " * 300 + "null)")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_candid_error_or_decode(data: bytes) -> None:
    for candidate in (data, b"DIDL" + data):
        with contextlib.suppress(CandidError):
            candid_decode(candidate)
        with contextlib.suppress(CandidError):
            candid_decode_values("(CanisterWsGetMessagesResult)", candidate)


@settings(max_examples=300, deadline=None)
@given(
    value=WS_TYPES["CanisterWsMessageArguments"], position=st.integers(min_value=0), byte=st.integers(0, 255)
)
def test_mutated_ws_messages_raise_candid_error_or_decode(
    value: dict[str, Any], position: int, byte: int
) -> None:
    data = bytearray(candid_encode_values("(CanisterWsMessageArguments)", [value]))
    data[position % len(data)] = byte
    with contextlib.suppress(CandidError):
        candid_decode_values("(CanisterWsMessageArguments, opt AppMessage)", bytes(data))


# --- WebsocketMessage CBOR (PROTOCOL.md §3.1) -----------------------------------------------------


def cbor_text(s: str) -> bytes:
    assert len(s) < 24
    return bytes([0x60 + len(s)]) + s.encode()


def open_message_content_like_the_rust_cdk(principal: bytes, nonce: int) -> bytes:
    """The 137-byte Candid OpenMessage content of the annotated example: 6 type entries (the ack and
    keep-alive contents share one record type), argument type 0, value 00 (OpenMessage), the principal
    as 01 1d + 29 bytes and the nonce as 8 little-endian bytes."""
    table = [
        b"\x6b\x04"  # 0: WebsocketServiceMessageContent
        + fid("OpenMessage")
        + b"\x01"
        + fid("KeepAliveMessage")
        + b"\x03"
        + fid("CloseMessage")
        + b"\x04"
        + fid("AckMessage")
        + b"\x03",
        b"\x6c\x01" + fid("client_key") + b"\x02",  # 1: CanisterOpenMessageContent
        b"\x6c\x02" + fid("client_principal") + b"\x68" + fid("client_nonce") + b"\x78",  # 2: ClientKey
        b"\x6c\x01" + fid("last_incoming_sequence_num") + b"\x78",  # 3: ack / keep-alive content
        b"\x6c\x01" + fid("reason") + b"\x05",  # 4: CanisterCloseMessageContent
        b"\x6b\x04"  # 5: CloseMessageReason
        + fid("ClosedByApplication")
        + b"\x7f"
        + fid("InvalidServiceMessage")
        + b"\x7f"
        + fid("WrongSequenceNumber")
        + b"\x7f"
        + fid("KeepAliveTimeout")
        + b"\x7f",
    ]
    value = b"\x00\x01\x1d" + principal + nonce.to_bytes(8, "little")
    return b"DIDL\x06" + b"".join(table) + b"\x01\x00" + value


def test_the_annotated_open_message_example() -> None:
    principal = bytes(range(100, 129))  # the example's 29 principal bytes are not given; any will do
    nonce, timestamp = 385892949151814926, 1702143738049473644
    content = open_message_content_like_the_rust_cdk(principal, nonce)
    assert len(content) == 137
    key = {"client_principal": principal, "client_nonce": nonce}
    assert candid_decode_values("(WebsocketServiceMessageContent)", content) == [
        {"OpenMessage": {"client_key": key}}
    ]

    expected = (
        b"\xd9\xd9\xf7"
        + b"\xa5"
        + cbor_text("client_key")
        + b"\xa2"
        + cbor_text("client_principal")
        + b"\x58\x1d"
        + principal
        + cbor_text("client_nonce")
        + b"\x1b"
        + nonce.to_bytes(8, "big")
        + cbor_text("sequence_num")
        + b"\x01"
        + cbor_text("timestamp")
        + b"\x1b"
        + timestamp.to_bytes(8, "big")
        + cbor_text("is_service_message")
        + b"\xf5"
        + cbor_text("content")
        + b"\x58\x89"
        + content
    )
    rust = encode_websocket_message(principal, nonce, 1, timestamp, True, content)
    assert len(rust) == 286
    assert rust == expected
    motoko = encode_websocket_message(principal, nonce, 1, timestamp, True, content, self_describe=False)
    assert motoko == expected[3:]
    for flavour in (rust, motoko):
        assert decode_websocket_message(flavour) == {
            "client_key": key,
            "sequence_num": 1,
            "timestamp": timestamp,
            "is_service_message": True,
            "content": content,
        }


@settings(max_examples=200, deadline=None)
@given(msg=websocket_messages, self_describe=st.booleans())
def test_websocket_message_round_trip(msg: dict[str, Any], self_describe: bool) -> None:
    key = msg["client_key"]
    data = encode_websocket_message(
        key["client_principal"],
        key["client_nonce"],
        msg["sequence_num"],
        msg["timestamp"],
        msg["is_service_message"],
        msg["content"],
        self_describe=self_describe,
    )
    assert data.startswith(b"\xd9\xd9\xf7\xa5" if self_describe else b"\xa5")
    assert decode_websocket_message(data) == msg
    # An independent decoder agrees (cbor2 strips the self-describe tag).
    assert thaw(cbor2.loads(data)) == msg


def thaw(value: Any) -> Any:
    """cbor2's maps (frozendict under a tag) as plain dicts."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


def good_message_map() -> dict[str, Any]:
    return {
        "client_key": {"client_principal": CLIENT, "client_nonce": 1},
        "sequence_num": 1,
        "timestamp": 2,
        "is_service_message": False,
        "content": b"x",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("content"), 'no field "content"'),
        (lambda m: m.update(extra=1), 'unexpected field "extra"'),
        (lambda m: m.update(sequence_num=-1), "sequence_num must be an unsigned integer"),
        (lambda m: m.update(timestamp=2**64), "timestamp must be an unsigned integer"),
        (lambda m: m.update(is_service_message=1), "is_service_message must be a bool"),
        (lambda m: m.update(content="x"), "content must be a byte string"),
        (lambda m: m["client_key"].update(client_principal=bytes(30)), "client_principal"),
        (
            lambda m: m["client_key"].update(client_principal="aaaaa-aa"),
            "client_principal must be a byte string",
        ),
        (lambda m: m["client_key"].pop("client_nonce"), 'no field "client_nonce"'),
        (lambda m: m.update(client_key=[1, 2]), "client_key must be a map"),
    ],
)
def test_websocket_message_decoding_is_strict(change: Any, message: str) -> None:
    m = good_message_map()
    change(m)
    with pytest.raises(CandidError) as excinfo:
        decode_websocket_message(cbor2.dumps(m))
    assert message in str(excinfo.value)


def test_websocket_message_rejects_a_long_principal_on_encode() -> None:
    with pytest.raises(ValueError, match="29"):
        encode_websocket_message(bytes(30), 1, 1, 1, False, b"x")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((2**64, 1, 1), "client_nonce: 18446744073709551616 is out of range for nat64"),
        ((1, -1, 1), "sequence_num: -1 is out of range for nat64"),
        ((1, 1, True), "timestamp: expected an int for nat64, got a bool"),
    ],
)
def test_websocket_message_integers_are_nat64(args: tuple[Any, Any, Any], message: str) -> None:
    with pytest.raises(CandidError) as excinfo:
        encode_websocket_message(CLIENT, *args, False, b"x")
    assert message in str(excinfo.value)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_websocket_message_random_bytes_raise_candid_error(data: bytes) -> None:
    with contextlib.suppress(CandidError):
        decode_websocket_message(data)
