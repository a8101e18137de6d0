"""The client's wire format: handshake and frame parsing, and frames byte-compatible with the SDK's."""

from __future__ import annotations

import pytest

from icgw.core import (
    Ed25519Identity,
    candid_decode_values,
    cbor_decode,
    cbor_encode,
    decode_client_frame,
    encode_handshake,
    sign_envelope,
)
from icgw.wsclient import HandshakeError, ProtocolError
from icgw.wsclient.messages import (
    call_content,
    envelope_frame,
    ingress_expiry,
    keep_alive_content,
    parse_handshake,
    parse_incoming_frame,
    sdk_timestamp,
    ws_message_arg,
)

from ..certified import CANISTER

GATEWAY = bytes(range(29))
MINUTE = 60 * 10**9

# PROTOCOL.md §9 step 9: the shipped IDL's encoding of KeepAliveMessage{last_incoming_sequence_num = 2}.
SDK_KEEP_ALIVE_2 = bytes.fromhex(
    "4449444c066c02fa80a2940568bbd1eacd0e786c01ebb49ce903006c01d888abb90a786b04cdc2dabb047fc9c68ea0057f"
    "d7aba29c0a7f999dafab0d7f6c01c49ff4e40f036b04fdbd95cc0101bfd397b409028ff2d1ef0a049eb7f0ad0b0201050102"
    "00000000000000"
)


def test_handshake_with_or_without_the_self_describe_tag() -> None:
    assert parse_handshake(encode_handshake(GATEWAY)) == GATEWAY
    assert parse_handshake(cbor_encode({"gateway_principal": GATEWAY}, self_describe=False)) == GATEWAY


def test_handshake_with_an_invalid_principal_is_refused() -> None:
    with pytest.raises(HandshakeError):
        parse_handshake(cbor_encode({"gateway_principal": bytes(30)}))  # longer than 29 bytes


def test_incoming_frame_accepts_extra_fields_and_the_tag() -> None:
    fields = {"key": "k", "content": b"c", "cert": b"x", "tree": b"t", "extra": 1}
    assert parse_incoming_frame(cbor_encode(fields)) == ("k", b"c", b"x", b"t")
    assert parse_incoming_frame(cbor_encode(fields, self_describe=False)).key == "k"


@pytest.mark.parametrize(
    "fields",
    [
        {"key": b"k", "content": b"c", "cert": b"x", "tree": b"t"},
        {"key": "k", "content": "c", "cert": b"x", "tree": b"t"},
        {"key": "k", "content": b"c", "cert": b"x"},
        {"key": "k", "content": b"c", "cert": b"x", "tree": b""},
        {"key": "k", "content": [1, 2], "cert": b"x", "tree": b"t"},
    ],
    ids=["bytes-key", "text-content", "no-tree", "empty-tree", "array-content"],
)
def test_incoming_frame_the_sdk_refuses_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ProtocolError, match="not a ClientIncomingMessage"):
        parse_incoming_frame(cbor_encode(fields))


def test_ingress_expiry_is_four_minutes_ahead_rounded_down_to_the_minute() -> None:
    now = 1_700_000_000 * 10**9 + 123_456_789
    expiry = ingress_expiry(now)
    assert expiry % MINUTE == 0
    assert now + 3 * MINUTE < expiry <= now + 4 * MINUTE


def test_sdk_timestamp_has_millisecond_precision() -> None:
    assert sdk_timestamp(1_700_000_000_123_456_789) == 1_700_000_000_123_000_000


def test_envelope_frame_is_the_tagged_envelope_map() -> None:
    identity = Ed25519Identity.generate()
    envelope = sign_envelope(
        identity, call_content(CANISTER, identity.principal, "ws_open", b"DIDL\x00\x00", 0)
    )
    frame = envelope_frame(envelope)
    assert frame.startswith(b"\xd9\xd9\xf7")
    assert cbor_decode(frame) == {"envelope": cbor_decode(envelope)}
    assert decode_client_frame(frame).method_name == "ws_open"


def test_keep_alive_decodes_like_the_sdks_encoding() -> None:
    types = "(WebsocketServiceMessageContent)"
    assert candid_decode_values(types, keep_alive_content(2)) == candid_decode_values(types, SDK_KEEP_ALIVE_2)


def test_ws_message_arg_carries_opt_null_as_second_argument() -> None:
    arg = ws_message_arg((GATEWAY, 7), 3, 1000, False, b"payload")
    (args, second) = candid_decode_values("(CanisterWsMessageArguments, opt null)", arg)
    assert second is None
    assert args == {
        "msg": {
            "client_key": {"client_principal": GATEWAY, "client_nonce": 7},
            "sequence_num": 3,
            "timestamp": 1000,
            "is_service_message": False,
            "content": b"payload",
        }
    }
    # The argument type table ends with `opt null` (0x6e 0x7f), as the SDK's IDL declares it.
    assert b"\x6e\x7f" in arg
