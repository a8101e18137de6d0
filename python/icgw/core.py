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

from icgw._core import (
    bls_der_public_key,
    bls_public_key,
    bls_public_key_from_der,
    bls_sign,
    bls_verify,
    certificate_cache_clear,
    certificate_cache_stats,
    hash_tree_digest,
    hash_tree_encode,
    hash_tree_root,
    lookup_path,
    verify_certificate,
)


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

    # certification names:
    "bls_der_public_key",
    "bls_public_key",
    "bls_public_key_from_der",
    "bls_sign",
    "bls_verify",
    "certificate_cache_clear",
    "certificate_cache_stats",
    "hash_tree_digest",
    "hash_tree_encode",
    "hash_tree_root",
    "lookup_path",
    "verify_certificate",

    # candid and fan-out names:

    # frame names:

]
