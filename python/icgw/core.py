"""Typed facade over icgw's compiled core (`icgw._core`); the only module that imports it.

Everything here is a pure function over bytes (or a small immutable object); errors are `ValueError`
subclasses whose message says what is wrong. The signatures are a contract used by the gateway, the
replica emulator, the tests, the tools and the benchmarks.
"""

from __future__ import annotations

from icgw._core import (
    ANONYMOUS,
    CandidError,
    CborError,
    CertificateError,
    CoreError,
    EnvelopeError,
    FrameError,
    HashTreeError,
    MessagesError,
    PrincipalError,
    RequestIdError,
    SignatureError,
    cbor_decode,
    cbor_encode,
    principal_from_text,
    principal_to_text,
    self_authenticating_principal,
)

# --- section: authentication (request ids, identities, envelopes) -------------------------------



# --- section: certification (hash trees, BLS, certificates) --------------------------------------



# --- section: candid and fan-out -------------------------------------------------------------------
# Candid for the IC WebSocket interface (types from ws_types.did, PROTOCOL.md §2.1), the CBOR
# WebsocketMessage (§3.1) and the ws_get_messages fan-out into client frames (§3.3, §5.4).
from icgw._core import (
    MessagesBatch,
    candid_decode,
    candid_decode_values,
    candid_encode,
    candid_encode_values,
    candid_idl_hash,
    decode_messages_reply,
    decode_websocket_message,
    encode_websocket_message,
)

# --- section: gateway frames -----------------------------------------------------------------------



__all__ = [
    "ANONYMOUS",
    "CandidError",
    "CborError",
    "CertificateError",
    "CoreError",
    "EnvelopeError",
    "FrameError",
    "HashTreeError",
    "MessagesError",
    "PrincipalError",
    "RequestIdError",
    "SignatureError",
    "cbor_decode",
    "cbor_encode",
    "principal_from_text",
    "principal_to_text",
    "self_authenticating_principal",
    # authentication names:

    # certification names:

    # candid and fan-out names:
    "MessagesBatch",
    "candid_decode",
    "candid_decode_values",
    "candid_encode",
    "candid_encode_values",
    "candid_idl_hash",
    "decode_messages_reply",
    "decode_websocket_message",
    "encode_websocket_message",

    # frame names:

]
