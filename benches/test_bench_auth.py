"""Request ids, signing and signature checks: icgw's core versus hashlib / `cryptography`."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pytest_benchmark.fixture import BenchmarkFixture

from icgw.core import Ed25519Identity, request_id, sign_envelope, verify_envelope, verify_signature

IDENTITY = Ed25519Identity.from_secret_key(bytes(range(32)))
CONTENT: dict[str, object] = {
    "request_type": "call",
    "sender": IDENTITY.principal,
    "ingress_expiry": 1_702_143_738_049_473_644,
    "canister_id": bytes(8) + b"\x01\x01",
    "method_name": "ws_message",
    "arg": bytes(120),
    "nonce": bytes(16),
}
EXPECTED = request_id(CONTENT)


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def request_id_python(content: dict[str, object]) -> bytes:
    """The spec's hash_of_map for flat call content, with hashlib: the best pure-Python path."""
    sha = hashlib.sha256
    parts = []
    for key, value in content.items():
        if isinstance(value, bytes):
            digest = sha(value).digest()
        elif isinstance(value, str):
            digest = sha(value.encode()).digest()
        else:
            assert isinstance(value, int)
            digest = sha(leb128(value)).digest()
        parts.append(sha(key.encode()).digest() + digest)
    return sha(b"".join(sorted(parts))).digest()


@pytest.mark.benchmark(group="request-id")
def test_request_id_core(benchmark: BenchmarkFixture) -> None:
    assert benchmark(request_id, CONTENT) == EXPECTED


@pytest.mark.benchmark(group="request-id")
def test_request_id_hashlib(benchmark: BenchmarkFixture) -> None:
    assert benchmark(request_id_python, CONTENT) == EXPECTED


MESSAGE = b"\x0aic-request" + EXPECTED
SIGNATURE = IDENTITY.sign(MESSAGE)
PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC: Ed25519PublicKey = PRIVATE.public_key()


@pytest.mark.benchmark(group="ed25519-verify")
def test_ed25519_verify_core(benchmark: BenchmarkFixture) -> None:
    assert benchmark(verify_signature, IDENTITY.der_public_key, MESSAGE, SIGNATURE)


@pytest.mark.benchmark(group="ed25519-verify")
def test_ed25519_verify_cryptography(benchmark: BenchmarkFixture) -> None:
    benchmark(PUBLIC.verify, SIGNATURE, MESSAGE)


@pytest.mark.benchmark(group="ed25519-sign")
def test_ed25519_sign_core(benchmark: BenchmarkFixture) -> None:
    assert benchmark(IDENTITY.sign, MESSAGE) == SIGNATURE


@pytest.mark.benchmark(group="ed25519-sign")
def test_ed25519_sign_cryptography(benchmark: BenchmarkFixture) -> None:
    assert benchmark(PRIVATE.sign, MESSAGE) == SIGNATURE


@pytest.mark.benchmark(group="envelope")
def test_sign_envelope(benchmark: BenchmarkFixture) -> None:
    benchmark(sign_envelope, IDENTITY, CONTENT)


@pytest.mark.benchmark(group="envelope")
def test_verify_envelope(benchmark: BenchmarkFixture) -> None:
    envelope = sign_envelope(IDENTITY, {**CONTENT, "ingress_expiry": 2_000_000_000_000_000_000})
    benchmark(verify_envelope, envelope, 1_999_999_900_000_000_000)
