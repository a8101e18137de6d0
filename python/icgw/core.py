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
from ._core import (
    Ed25519Identity,
    envelope_request_id,
    request_id,
    sign_envelope,
    verify_envelope,
    verify_signature,
)

# --- section: certification (hash trees, BLS, certificates) --------------------------------------



# --- section: candid and fan-out -------------------------------------------------------------------



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
    "Ed25519Identity",
    "envelope_request_id",
    "request_id",
    "sign_envelope",
    "verify_envelope",
    "verify_signature",

    # certification names:

    # candid and fan-out names:

    # frame names:

]
