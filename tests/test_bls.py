"""BLS12-381 min-sig: every vector, signing for the emulator, DER keys, and malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import (
    SignatureError,
    bls_der_public_key,
    bls_public_key,
    bls_public_key_from_der,
    bls_sign,
    bls_verify,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
BLS = json.loads((VECTORS / "bls_signatures.json").read_text())
README_ROOT_KEY_DER = bytes.fromhex(
    "308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100814c0e6ec71fab583b08bd"
    "81373c255c3c371b2e84863c98a4f1e08b74235d14fb5d9c0cd546d9685f913a0c0b2cc5341583bf4b4392e467db96d6"
    "5b9bb4cb717112f8472e0d5a4d14505ffd7484b01291091c5f87b98883463f98091a0baaae"
)
DER_PREFIX = README_ROOT_KEY_DER[:37]
STATE_ROOT_DOMAIN = b"\x0dic-state-root"
# The order r of the BLS12-381 groups: secret keys are scalars in 1 ..= r - 1.
GROUP_ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
SIGN_VECTOR = BLS["sign_vectors"][0]


def triple(entry: dict[str, Any], pk: str, sig: str) -> tuple[bytes, bytes, bytes]:
    return bytes.fromhex(entry[pk]), bytes.fromhex(entry[sig]), bytes.fromhex(entry["message_hex"])


def test_ciphersuite_is_the_ics() -> None:
    assert BLS["dst"] == "BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_"


@pytest.mark.parametrize("entry", BLS["verify_vectors"], ids=lambda e: e["name"])
def test_verify_vectors(entry: dict[str, Any]) -> None:
    pk, sig, msg = triple(entry, "public_key_g2_96_hex", "signature_g1_48_hex")
    assert bls_verify(pk, sig, msg) is entry["expected_valid"]


@pytest.mark.parametrize(
    "entry",
    BLS["certificate_signatures"],
    ids=lambda e: e["from"].removesuffix(".json") + ":" + e["signer"].replace(" ", "_"),
)
def test_certificate_signature_triples(entry: dict[str, Any]) -> None:
    pk, sig, msg = triple(entry, "public_key_g2_96_hex", "signature_g1_48_hex")
    assert msg.startswith(STATE_ROOT_DOMAIN)
    assert len(msg) == len(STATE_ROOT_DOMAIN) + 32
    assert bls_verify(pk, sig, msg) is entry["expected_valid"]
    # The same triple with the last message byte changed must fail.
    assert bls_verify(pk, sig, msg[:-1] + bytes([msg[-1] ^ 1])) is False


def test_signing_vector() -> None:
    secret = bytes.fromhex(SIGN_VECTOR["secret_key_32_hex"])
    message = bytes.fromhex(SIGN_VECTOR["message_hex"])
    signature = bls_sign(secret, message)
    assert signature.hex() == SIGN_VECTOR["expected_signature_g1_48_hex"]
    public_key = bls_public_key(secret)
    assert public_key.hex() == SIGN_VECTOR["derived_public_key_g2_96_hex"]
    assert bls_verify(public_key, signature, message) is True


secret_keys = st.integers(min_value=1, max_value=GROUP_ORDER - 1).map(lambda n: n.to_bytes(32, "big"))


@settings(max_examples=25, deadline=None)
@given(secret_keys, st.binary(max_size=200), st.binary(min_size=1, max_size=200))
def test_sign_verify_round_trip(secret: bytes, message: bytes, other: bytes) -> None:
    public_key = bls_public_key(secret)
    signature = bls_sign(secret, message)
    assert len(public_key) == 96
    assert len(signature) == 48
    assert bls_sign(secret, message) == signature  # deterministic
    assert bls_verify(public_key, signature, message) is True
    if other != message:
        assert bls_verify(public_key, signature, other) is False


@settings(max_examples=10, deadline=None)
@given(secret_keys, secret_keys)
def test_a_signature_does_not_verify_under_another_key(secret: bytes, other: bytes) -> None:
    if secret != other:
        assert bls_verify(bls_public_key(other), bls_sign(secret, b"m"), b"m") is False


@pytest.mark.parametrize(
    "secret",
    [bytes(32), GROUP_ORDER.to_bytes(32, "big"), b"\xff" * 32],
    ids=["zero", "group-order", "all-ones"],
)
def test_out_of_range_secret_keys_are_rejected(secret: bytes) -> None:
    with pytest.raises(SignatureError, match="secret key"):
        bls_sign(secret, b"m")
    with pytest.raises(SignatureError, match="secret key"):
        bls_public_key(secret)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_secret_key_length_is_checked(length: int) -> None:
    with pytest.raises(SignatureError, match="32 bytes"):
        bls_sign(b"\x01" * length, b"m")
    with pytest.raises(SignatureError, match="32 bytes"):
        bls_public_key(b"\x01" * length)


def test_wrong_lengths_raise_signature_error() -> None:
    """Documented choice: lengths are the caller's bug (e.g. a DER key), so they raise."""
    secret = bytes.fromhex(SIGN_VECTOR["secret_key_32_hex"])
    pk, sig = bls_public_key(secret), bls_sign(secret, b"m")
    for bad_pk in (pk[:95], pk + b"\x00", bls_der_public_key(pk), b""):
        with pytest.raises(SignatureError, match="96 bytes"):
            bls_verify(bad_pk, sig, b"m")
    for bad_sig in (sig[:47], sig + b"\x00", b""):
        with pytest.raises(SignatureError, match="48 bytes"):
            bls_verify(pk, bad_sig, b"m")


def test_identity_points_do_not_verify() -> None:
    secret = bytes.fromhex(SIGN_VECTOR["secret_key_32_hex"])
    pk, sig = bls_public_key(secret), bls_sign(secret, b"m")
    identity_pk = b"\xc0" + bytes(95)
    identity_sig = b"\xc0" + bytes(47)
    assert bls_verify(identity_pk, sig, b"m") is False
    assert bls_verify(identity_pk, identity_sig, b"m") is False
    assert bls_verify(pk, identity_sig, b"m") is False


def test_uncompressed_or_flagless_encodings_are_not_points() -> None:
    secret = bytes.fromhex(SIGN_VECTOR["secret_key_32_hex"])
    pk, sig = bls_public_key(secret), bls_sign(secret, b"m")
    # Clearing the compression flag makes the right-length bytes an invalid encoding.
    assert bls_verify(bytes([pk[0] & 0x7F]) + pk[1:], sig, b"m") is False
    assert bls_verify(pk, bytes([sig[0] & 0x7F]) + sig[1:], b"m") is False
    # Flipping the sign flag gives the negated point: a valid point, a wrong key.
    assert bls_verify(bytes([pk[0] ^ 0x20]) + pk[1:], sig, b"m") is False


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=96, max_size=96), st.binary(min_size=48, max_size=48), st.binary(max_size=64))
def test_random_keys_and_signatures_are_false_not_errors(pk: bytes, sig: bytes, msg: bytes) -> None:
    assert bls_verify(pk, sig, msg) is False


# --- DER keys ---------------------------------------------------------------------------------------


def test_der_round_trip_on_the_mainnet_root_key() -> None:
    raw = bls_public_key_from_der(README_ROOT_KEY_DER)
    assert raw == README_ROOT_KEY_DER[37:]
    assert len(raw) == 96
    assert bls_der_public_key(raw) == README_ROOT_KEY_DER
    assert raw.hex() == BLS["verify_vectors"][0]["public_key_g2_96_hex"]


def test_der_of_a_generated_key() -> None:
    pk = bls_public_key(bytes.fromhex(SIGN_VECTOR["secret_key_32_hex"]))
    der = bls_der_public_key(pk)
    assert der == DER_PREFIX + pk
    assert len(der) == 133
    assert bls_public_key_from_der(der) == pk


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (README_ROOT_KEY_DER[:-1], "133 bytes"),
        (README_ROOT_KEY_DER + b"\x00", "133 bytes"),
        (b"", "133 bytes"),
        (b"\x31" + README_ROOT_KEY_DER[1:], "prefix"),
        (README_ROOT_KEY_DER[:20] + b"\x00" + README_ROOT_KEY_DER[21:], "prefix"),
        # An Ed25519 DER key is not a BLS key.
        (bytes.fromhex("302a300506032b6570032100") + bytes(32), "133 bytes"),
    ],
)
def test_malformed_der_keys(der: bytes, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        bls_public_key_from_der(der)


@pytest.mark.parametrize("length", [0, 48, 95, 97, 133])
def test_der_encoding_needs_a_raw_key(length: int) -> None:
    with pytest.raises(SignatureError, match="96 bytes"):
        bls_der_public_key(bytes(length))
