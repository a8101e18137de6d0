"""Typed facade over icgw's compiled core (`icgw._core`); the only module that imports it.

Everything here is a pure function over bytes (or a small immutable object); errors are `ValueError`
subclasses whose message says what is wrong. The signatures are a contract used by the gateway, the
replica emulator, the tests, the tools and the benchmarks.
"""

from __future__ import annotations

# --- section: authentication (request ids, identities, envelopes) -------------------------------
# --- section: certification (hash trees, BLS, certificates) --------------------------------------
# --- section: candid and fan-out -------------------------------------------------------------------
# --- section: gateway frames -----------------------------------------------------------------------
from icgw._core import (
    ANONYMOUS,
    CandidError,
    CborError,
    CertificateError,
    ClientFrame,
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
    decode_client_frame,
    encode_handshake,
    principal_from_text,
    principal_to_text,
    self_authenticating_principal,
)

__all__ = [
    "ANONYMOUS",
    "CandidError",
    "CborError",
    "CertificateError",
    # authentication names:
    # certification names:
    # candid and fan-out names:
    # frame names:
    "ClientFrame",
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
    "decode_client_frame",
    "encode_handshake",
    "principal_from_text",
    "principal_to_text",
    "self_authenticating_principal",
]
