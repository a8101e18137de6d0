"""Principals against every entry of `principals.json`: text <-> bytes, invalid texts, self-auth ids."""

from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st

from icgw.core import (
    ANONYMOUS,
    PrincipalError,
    SignatureError,
    principal_from_text,
    principal_to_text,
    self_authenticating_principal,
    verify_signature,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
PRINCIPALS: dict[str, Any] = json.loads((VECTORS / "principals.json").read_text())
PRINCIPAL_TEXT = re.compile(r"\b[a-z2-7]{5}(?:-[a-z2-7]{1,5})+\b")


def crc_of_text(text: str) -> bytes:
    """The first four bytes of a principal text are its CRC32, big-endian."""
    compact = text.replace("-", "").upper()
    return base64.b32decode(compact + "=" * (-len(compact) % 8))[:4]


@pytest.mark.parametrize("entry", PRINCIPALS["textual"], ids=lambda e: e["text"])
def test_textual(entry: dict[str, str]) -> None:
    raw = bytes.fromhex(entry["bytes_hex"])
    assert principal_to_text(raw) == entry["text"]
    assert principal_from_text(entry["text"]) == raw
    # Parsing is case-insensitive (spec), unlike agent-js.
    assert principal_from_text(entry["text"].upper()) == raw
    assert principal_from_text(entry["text"].title()) == raw
    assert crc_of_text(entry["text"]).hex() == entry["crc32_be_hex"]
    assert zlib.crc32(raw).to_bytes(4, "big").hex() == entry["crc32_be_hex"]


def test_vector_counts() -> None:
    assert len(PRINCIPALS["textual"]) == 9
    assert len(PRINCIPALS["invalid_textual"]) == 4
    assert len(PRINCIPALS["self_authenticating"]) == 9


@pytest.mark.parametrize("entry", PRINCIPALS["invalid_textual"], ids=lambda e: e["text"])
def test_invalid_textual(entry: dict[str, str]) -> None:
    with pytest.raises(PrincipalError, match="invalid principal text"):
        principal_from_text(entry["text"])


@pytest.mark.parametrize("entry", PRINCIPALS["self_authenticating"], ids=lambda e: e["principal_text"])
def test_self_authenticating(entry: dict[str, str]) -> None:
    der = bytes.fromhex(entry["public_key_der_hex"])
    principal = self_authenticating_principal(der)
    assert principal.hex() == entry["principal_hex"]
    assert len(principal) == 29
    assert principal[-1] == 0x02
    assert principal_to_text(principal) == entry["principal_text"]
    assert principal_from_text(entry["principal_text"]) == principal


@pytest.mark.parametrize("entry", PRINCIPALS["self_authenticating"], ids=lambda e: e["key_type"])
def test_vector_keys_are_accepted_or_refused_as_user_keys(entry: dict[str, str]) -> None:
    """The signature verifier parses the Ed25519 / ECDSA keys of the vectors and refuses BLS keys."""
    der = bytes.fromhex(entry["public_key_der_hex"])
    if entry["key_type"].startswith("bls"):
        with pytest.raises(SignatureError, match="BLS12-381"):
            verify_signature(der, b"m", bytes(64))
    else:
        assert verify_signature(der, b"m", bytes(64)) is False


def test_ic_py_warning_vector() -> None:
    warning = PRINCIPALS["warnings"]["ic_py_vector"]
    raw_key = bytes.fromhex(warning["input_hex"])
    # ic-py hashed the raw key: a valid SHA-224 + text check, but not the key's real principal.
    assert principal_to_text(self_authenticating_principal(raw_key)) == warning["ic_py_expected"]
    correct = [t for t in PRINCIPAL_TEXT.findall(warning["warning"]) if t != warning["ic_py_expected"]]
    assert len(correct) == 1
    ed25519_prefix = bytes.fromhex(
        PRINCIPALS["der_prefixes_hex"]["ed25519 (RFC 8410, 12 bytes, + 32-byte key)"]
    )
    assert principal_to_text(self_authenticating_principal(ed25519_prefix + raw_key)) == correct[0]


def test_special_principals() -> None:
    special = PRINCIPALS["special_principals"]
    assert special["anonymous"].startswith(principal_to_text(ANONYMOUS))
    assert ANONYMOUS == b"\x04"
    assert special["management canister"].startswith(principal_to_text(b""))
    assert principal_from_text("aaaaa-aa") == b""


def prefix(label_start: str) -> bytes:
    ((value,),) = [[v] for k, v in PRINCIPALS["der_prefixes_hex"].items() if k.startswith(label_start)]
    return bytes.fromhex(value)


def test_der_prefixes_match_keys_from_cryptography() -> None:
    def spki(key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    ed = spki(ed25519.Ed25519PrivateKey.generate().public_key())
    k1 = spki(ec.generate_private_key(ec.SECP256K1()).public_key())
    r1 = spki(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert ed.startswith(prefix("ed25519"))
    assert len(ed) == len(prefix("ed25519")) + 32
    assert k1.startswith(prefix("ecdsa secp256k1"))
    assert len(k1) == len(prefix("ecdsa secp256k1")) + 65
    assert r1.startswith(prefix("ecdsa p-256"))
    assert len(r1) == len(prefix("ecdsa p-256")) + 65
    bls = [e for e in PRINCIPALS["self_authenticating"] if e["key_type"].startswith("bls")]
    assert bytes.fromhex(bls[0]["public_key_der_hex"]).startswith(prefix("bls12-381"))
    for label in ("webauthn", "canister signature"):
        assert any(k.startswith(label) for k in PRINCIPALS["der_prefixes_hex"])


@pytest.mark.parametrize(
    "text", ["", "-", "aaaaa", "aaaaa-a", "2vxsx-fae-", "2vxsxfae", "2vxs-xfae", "2vxsx_fae"]
)
def test_malformed_texts_raise(text: str) -> None:
    with pytest.raises(PrincipalError):
        principal_from_text(text)


def test_too_long_principal_is_refused() -> None:
    with pytest.raises(PrincipalError, match="at most 29 bytes"):
        principal_to_text(bytes(30))
    too_long_text = principal_to_text(bytes(29))
    assert principal_from_text(too_long_text) == bytes(29)


@given(st.binary(max_size=29))
def test_text_round_trip(raw: bytes) -> None:
    text = principal_to_text(raw)
    assert len(text) <= 63
    assert principal_from_text(text) == raw
    assert principal_from_text(text.upper()) == raw


@given(st.binary(max_size=29), st.data())
def test_any_single_character_change_is_detected(raw: bytes, data: st.DataObject) -> None:
    text = principal_to_text(raw)
    positions = [i for i, c in enumerate(text) if c != "-"]
    i = data.draw(st.sampled_from(positions))
    replacement = data.draw(st.sampled_from([c for c in "abcdefghijklmnopqrstuvwxyz234567" if c != text[i]]))
    changed = text[:i] + replacement + text[i + 1 :]
    try:
        decoded = principal_from_text(changed)
    except PrincipalError:
        return
    # CRC32 catches every single-symbol error in the body; only the trailing padding bits can change
    # without altering the bytes, and those are refused as non-canonical.
    raise AssertionError(f"{changed!r} decoded to {decoded.hex()} instead of raising")
