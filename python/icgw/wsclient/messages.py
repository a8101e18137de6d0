"""The client's side of the IC WebSocket wire format, without I/O (PROTOCOL.md §3, §4, §7.1).

Frames from the gateway: the handshake (`{gateway_principal}`) and certified canister messages
(`{key, content, cert, tree}`). Frames to the gateway: `{envelope}` holding a signed IC call to
`ws_open` or `ws_message`. The encoders produce exactly what `ic-websocket-js` 0.5.0 sends, so a
gateway or canister sees no difference between this client and the SDK.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from icgw.core import (
    CandidError,
    CborError,
    Ed25519Identity,
    PrincipalError,
    candid_decode_values,
    candid_encode_values,
    cbor_decode,
    principal_to_text,
    sign_envelope,
)

from .errors import HandshakeError, ProtocolError

NS_PER_MS = 1_000_000
_NS_PER_MINUTE = 60_000_000_000

# @dfinity/agent's ingress expiry: 5 minutes ahead, minus 60 s of allowed clock drift, rounded down to
# the minute (PROTOCOL.md §7.1; agent transforms.js `Expiry`).
INGRESS_EXPIRY_DELTA_NS = 5 * _NS_PER_MINUTE
INGRESS_EXPIRY_DRIFT_NS = _NS_PER_MINUTE

# The frame header `tag(55799) map(1) "envelope"`: a signed envelope's CBOR (without its own tag) is
# appended as the value, so a client frame costs no decode and re-encode of the envelope.
_ENVELOPE_FRAME_PREFIX = b"\xd9\xd9\xf7\xa1\x68envelope"
_SELF_DESCRIBE_TAG = b"\xd9\xd9\xf7"

# Argument-type lists resolved by the core against the CDK's ws_types.did (+ the test canister's
# AppMessage). The second ws_message argument is `opt null` with no value, as the SDK's IDL sends it.
_WS_OPEN_TYPES = "(CanisterWsOpenArguments)"
_WS_MESSAGE_TYPES = "(CanisterWsMessageArguments, opt null)"
_SERVICE_MESSAGE_TYPES = "(WebsocketServiceMessageContent)"
_APP_MESSAGE_TYPES = "(AppMessage)"

ClientKey = tuple[bytes, int]


class IncomingFrame(NamedTuple):
    """A `ClientIncomingMessage`: one certified canister message as the gateway relays it."""

    key: str
    content: bytes
    cert: bytes
    tree: bytes


# --- frames from the gateway -------------------------------------------------------------------------


def parse_handshake(data: bytes) -> bytes:
    """The gateway principal in a `GatewayHandshakeMessage`, checked as the SDK checks it (§4.1).

    `gateway_principal` must be a non-empty CBOR byte string holding a valid principal; a text principal
    is refused like the SDK refuses it.
    """
    try:
        message = cbor_decode(data)
    except CborError as error:
        raise HandshakeError(f"First message is not a GatewayHandshakeMessage: {error}") from error
    principal = message.get("gateway_principal") if isinstance(message, dict) else None
    if not isinstance(principal, bytes) or not principal:
        raise HandshakeError("First message is not a GatewayHandshakeMessage")
    try:
        principal_to_text(principal)
    except PrincipalError as error:
        raise HandshakeError(f"First message is not a GatewayHandshakeMessage: {error}") from error
    return principal


def parse_incoming_frame(data: bytes) -> IncomingFrame:
    """A relayed canister message; ProtocolError unless it is a ClientIncomingMessage the SDK accepts:
    `key` text, `content`, `cert` and `tree` non-empty byte strings (extra fields are ignored)."""
    try:
        message = cbor_decode(data)
    except CborError as error:
        raise ProtocolError(f"Incoming message is not valid CBOR: {error}") from error
    if not isinstance(message, dict):
        raise ProtocolError("Incoming message is not a ClientIncomingMessage")
    key = message.get("key")
    content = message.get("content")
    cert = message.get("cert")
    tree = message.get("tree")
    # The SDK's CBOR decoder yields an ArrayBuffer, not a Uint8Array, for an empty byte string, which
    # its type guard refuses (§4.4); empty fields are refused here for the same reason.
    if (
        type(key) is not str
        or type(content) is not bytes
        or type(cert) is not bytes
        or type(tree) is not bytes
        or not content
        or not cert
        or not tree
    ):
        raise ProtocolError("Incoming message is not a ClientIncomingMessage")
    return IncomingFrame(key, content, cert, tree)


def decode_service_message(content: bytes) -> dict[str, Any]:
    """A `WebsocketServiceMessageContent` as a one-key dict, e.g. `{"AckMessage": {...}}`."""
    try:
        (value,) = candid_decode_values(_SERVICE_MESSAGE_TYPES, content)
    except (CandidError, ValueError) as error:
        raise ProtocolError(f"Service message error: {error}") from error
    if not isinstance(value, dict) or len(value) != 1:
        raise ProtocolError("Service message error: not a WebsocketServiceMessageContent")
    return value


# --- frames to the gateway ---------------------------------------------------------------------------


def ingress_expiry(now_ns: int) -> int:
    """The `ingress_expiry` @dfinity/agent puts in a call made at `now_ns`."""
    expiry = now_ns + INGRESS_EXPIRY_DELTA_NS - INGRESS_EXPIRY_DRIFT_NS
    return expiry - expiry % _NS_PER_MINUTE


def call_content(
    canister_id: bytes, sender: bytes, method_name: str, arg: bytes, now_ns: int
) -> dict[str, object]:
    """The content of an IC call as the SDK's agent builds it, with a fresh 16-byte nonce."""
    return {
        "request_type": "call",
        "canister_id": canister_id,
        "method_name": method_name,
        "arg": arg,
        "sender": sender,
        "ingress_expiry": ingress_expiry(now_ns),
        "nonce": os.urandom(16),
    }


def envelope_frame(envelope: bytes) -> bytes:
    """The client frame `{envelope: ...}` around a signed envelope's CBOR."""
    if envelope.startswith(_SELF_DESCRIBE_TAG):
        envelope = envelope[3:]
    return _ENVELOPE_FRAME_PREFIX + envelope


def signed_call_frame(identity: Ed25519Identity, content: Mapping[str, object]) -> bytes:
    """Sign `content` with `identity` and wrap the envelope in a client frame."""
    return envelope_frame(sign_envelope(identity, content))


def ws_open_arg(client_nonce: int, gateway_principal: bytes) -> bytes:
    return candid_encode_values(
        _WS_OPEN_TYPES, [{"client_nonce": client_nonce, "gateway_principal": gateway_principal}]
    )


def ws_message_arg(
    client_key: ClientKey, sequence_num: int, timestamp: int, is_service_message: bool, content: bytes
) -> bytes:
    """`(CanisterWsMessageArguments, opt null = null)` exactly as the SDK encodes it (§4.2)."""
    principal, nonce = client_key
    message = {
        "client_key": {"client_principal": principal, "client_nonce": nonce},
        "sequence_num": sequence_num,
        "timestamp": timestamp,
        "is_service_message": is_service_message,
        "content": content,
    }
    return candid_encode_values(_WS_MESSAGE_TYPES, [{"msg": message}, None])


def keep_alive_content(last_incoming_sequence_num: int) -> bytes:
    """The service message the SDK sends after every AckMessage."""
    return candid_encode_values(
        _SERVICE_MESSAGE_TYPES,
        [{"KeepAliveMessage": {"last_incoming_sequence_num": last_incoming_sequence_num}}],
    )


def sdk_timestamp(now_ns: int) -> int:
    """`Date.now() * 10**6`: the SDK stamps messages with millisecond precision in nanosecond units."""
    return now_ns - now_ns % NS_PER_MS


# --- the test canister's application message ----------------------------------------------------------


def encode_app_message(text: str, timestamp: int) -> bytes:
    """Candid of the test canister's `AppMessage { text; timestamp }`."""
    return candid_encode_values(_APP_MESSAGE_TYPES, [{"text": text, "timestamp": timestamp}])


def decode_app_message(content: bytes) -> dict[str, Any] | None:
    """The `AppMessage` in `content`, or None if `content` is not one."""
    try:
        (value,) = candid_decode_values(_APP_MESSAGE_TYPES, content)
    except (CandidError, ValueError):
        return None
    return value if isinstance(value, dict) else None
