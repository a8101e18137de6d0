"""Typed facade over icgw's compiled core (`icgw._core`); the only module that imports it.

Everything here is a pure function over bytes (or a small immutable object); errors are `ValueError`
subclasses whose message says what is wrong. The signatures are a contract used by the gateway, the
replica emulator, the tests, the tools and the benchmarks. Generated from `_core.pyi` by
`scripts/gen_core_facade.py`; the documentation of each name is in the stubs.
"""

from __future__ import annotations

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
    bls_der_public_key,
    bls_public_key,
    bls_public_key_from_der,
    bls_sign,
    bls_verify,
    cbor_decode,
    cbor_encode,
    certificate_cache_clear,
    certificate_cache_stats,
    decode_client_frame,
    encode_handshake,
    hash_tree_digest,
    hash_tree_encode,
    hash_tree_root,
    lookup_path,
    principal_from_text,
    principal_to_text,
    self_authenticating_principal,
    verify_certificate,
)

__all__ = [
    "ANONYMOUS",
    "CandidError",
    "CborError",
    "CertificateError",
    "ClientFrame",
    "CoreError",
    "EnvelopeError",
    "FrameError",
    "HashTreeError",
    "MessagesError",
    "PrincipalError",
    "RequestIdError",
    "SignatureError",
    "bls_der_public_key",
    "bls_public_key",
    "bls_public_key_from_der",
    "bls_sign",
    "bls_verify",
    "cbor_decode",
    "cbor_encode",
    "certificate_cache_clear",
    "certificate_cache_stats",
    "decode_client_frame",
    "encode_handshake",
    "hash_tree_digest",
    "hash_tree_encode",
    "hash_tree_root",
    "lookup_path",
    "principal_from_text",
    "principal_to_text",
    "self_authenticating_principal",
    "verify_certificate",
]
