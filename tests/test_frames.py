"""Client frames and the handshake (PROTOCOL.md §3.4, §3.5, §4.2)."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import FrameError, cbor_decode, decode_client_frame, encode_handshake, principal_from_text

from .conftest import load_vector

CANISTER = principal_from_text("ivg37-qiaaa-aaaab-aaaga-cai")
SENDER = bytes(range(28)) + b"\x02"
SELF_DESCRIBE = b"\xd9\xd9\xf7"


def call_content(**overrides: object) -> dict[str, object]:
    content: dict[str, object] = {
        "request_type": "call",
        "canister_id": CANISTER,
        "method_name": "ws_open",
        "arg": b"DIDL\x00\x00",
        "sender": SENDER,
        "ingress_expiry": 1_702_143_738_049_473_644,
        "nonce": bytes(16),
    }
    content.update(overrides)
    return content


def sdk_frame(content: dict[str, object], **envelope_extra: object) -> bytes:
    """A frame shaped like the one @dfinity/agent's Cbor.encode produces: tag 55799, sorted keys."""
    envelope = {
        "content": content,
        "sender_pubkey": b"\x30" * 44,
        "sender_sig": b"\x01" * 64,
        **envelope_extra,
    }
    return cbor2.dumps(cbor2.CBORTag(55799, {"envelope": envelope}), canonical=True)


def test_fields_of_a_call_frame() -> None:
    frame = decode_client_frame(sdk_frame(call_content()))
    assert frame.request_type == "call"
    assert frame.canister_id == CANISTER
    assert frame.sender == SENDER
    assert frame.method_name == "ws_open"
    assert frame.arg == b"DIDL\x00\x00"
    assert frame.ingress_expiry == 1_702_143_738_049_473_644
    assert frame.nonce == bytes(16)
    assert "ws_open" in repr(frame)


def test_envelope_bytes_are_forwarded_unchanged_behind_one_tag() -> None:
    data = sdk_frame(call_content())
    envelope = decode_client_frame(data).envelope
    assert envelope.startswith(SELF_DESCRIBE)
    assert not envelope[3:].startswith(SELF_DESCRIBE)
    # The original bytes are a substring of the frame: nothing was re-encoded.
    assert envelope[3:] in data
    assert cbor_decode(envelope)["sender_sig"] == b"\x01" * 64  # type: ignore[index]


def test_a_tagged_envelope_keeps_a_single_tag() -> None:
    envelope = cbor2.CBORTag(55799, {"content": call_content(), "sender_sig": b"s"})
    data = cbor2.dumps({"envelope": envelope})
    assert decode_client_frame(data).envelope.count(SELF_DESCRIBE) == 1


def test_real_agent_envelope_in_a_frame() -> None:
    """A recorded @dfinity/agent request body, wrapped as the SDK wraps its envelopes."""
    item = load_vector("request_ids.json")["real_envelopes"]["items"][0]
    body = bytes.fromhex(item["body_cbor_hex"])
    frame = decode_client_frame(b"\xa1\x68envelope" + body)
    assert frame.request_type == "query"
    assert frame.sender == b"\x04"
    assert frame.envelope == body


def test_delegations_are_kept_in_the_forwarded_envelope() -> None:
    delegation = [{"delegation": {"pubkey": b"k", "expiration": 1}, "signature": b"s"}]
    frame = decode_client_frame(sdk_frame(call_content(), sender_delegation=delegation))
    assert cbor_decode(frame.envelope)["sender_delegation"] == delegation  # type: ignore[index]


def test_nonce_is_optional() -> None:
    content = call_content()
    del content["nonce"]
    assert decode_client_frame(sdk_frame(content)).nonce is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00", "map"),
        (cbor2.dumps([1]), "map"),
        (cbor2.dumps({"other": 1}), "no envelope"),
        (cbor2.dumps({"envelope": 1}), "must be a map"),
        (cbor2.dumps({"envelope": {}}), "no content"),
        (cbor2.dumps({"envelope": {"content": []}}), "content must be a map"),
        (sdk_frame(call_content(request_type="read_state")), "cannot be relayed"),
        (sdk_frame(call_content(request_type=1)), "request_type"),
        (sdk_frame(call_content(method_name=b"ws_open")), "method_name"),
        (sdk_frame(call_content(canister_id="ivg37")), "canister_id"),
        (sdk_frame(call_content(canister_id=bytes(30))), "at most 29 bytes"),
        (sdk_frame(call_content(sender=bytes(30))), "sender"),
        (sdk_frame(call_content(arg="DIDL")), "arg"),
        (sdk_frame(call_content(ingress_expiry=-1)), "ingress_expiry"),
        (sdk_frame(call_content(nonce="n")), "nonce"),
        (sdk_frame(call_content()) + b"\x00", "trailing"),
        (b"\xbf\xff", "definite-length"),
        (b"\xc1\xa0", "tag 1"),
        (SELF_DESCRIBE * 200 + b"\xa0", "too many tags"),
    ],
)
def test_bad_frames_get_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_client_frame(data)


def test_missing_fields_are_named() -> None:
    for field in ("canister_id", "method_name", "arg", "sender", "ingress_expiry", "request_type"):
        content = call_content()
        del content[field]
        with pytest.raises(FrameError, match=field):
            decode_client_frame(sdk_frame(content))


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_client_frame(data)


@settings(max_examples=200)
@given(st.data())
def test_truncated_frames_are_rejected(data: st.DataObject) -> None:
    frame = sdk_frame(call_content())
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    with pytest.raises(FrameError):
        decode_client_frame(frame[:cut])


def test_handshake_is_the_reference_layout() -> None:
    principal = bytes(range(29))
    handshake = encode_handshake(principal)
    assert handshake == SELF_DESCRIBE + b"\xa1\x71gateway_principal\x58\x1d" + principal
    assert cbor2.loads(handshake) == {"gateway_principal": principal}


@pytest.mark.parametrize("principal", [b"", bytes(30)])
def test_handshake_rejects_principals_the_sdk_cannot_use(principal: bytes) -> None:
    with pytest.raises(FrameError):
        encode_handshake(principal)
