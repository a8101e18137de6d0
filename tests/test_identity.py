"""Ed25519Identity (keys, PEM, files) and verify_signature for Ed25519, ECDSA secp256k1 and ECDSA P-256."""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import (
    Ed25519Identity,
    SignatureError,
    principal_to_text,
    self_authenticating_principal,
    verify_signature,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
SYNTHETIC: dict[str, Any] = json.loads((VECTORS / "synthetic_emulator_vectors.json").read_text())
KEYS: dict[str, str] = SYNTHETIC["keys"]

ED25519_DER_PREFIX = bytes.fromhex("302a300506032b6570032100")
PKCS8_V1_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def spki(key: Any) -> bytes:
    data: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def pkcs8_pem(key: Any, encryption: Any = None) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )
    return data


def ecdsa_raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """cryptography signs DER; the IC wants 64 bytes r ‖ s."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def flip_s(signature: bytes, order: int) -> bytes:
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (order - s).to_bytes(32, "big")


# --- Ed25519Identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "der", "principal"),
    [
        (
            "node_ed25519_secret_hex (RFC 8032 test 1)",
            "node_ed25519_public_der_hex",
            "node_id",
        ),
        (
            "user_ed25519_secret_hex (RFC 8032 test 2)",
            "user_public_der_hex",
            "user_principal",
        ),
    ],
)
def test_from_secret_key_matches_vectors(secret: str, der: str, principal: str) -> None:
    identity = Ed25519Identity.from_secret_key(bytes.fromhex(KEYS[secret]))
    assert identity.der_public_key == bytes.fromhex(KEYS[der])
    assert principal_to_text(identity.principal) == KEYS[principal]


def test_generated_identity_is_consistent() -> None:
    a, b = Ed25519Identity.generate(), Ed25519Identity.generate()
    assert a.principal != b.principal
    assert len(a.der_public_key) == 44
    assert a.der_public_key.startswith(ED25519_DER_PREFIX)
    assert a.principal == self_authenticating_principal(a.der_public_key)
    signature = a.sign(b"hello")
    assert len(signature) == 64
    assert verify_signature(a.der_public_key, b"hello", signature) is True
    assert verify_signature(b.der_public_key, b"hello", signature) is False
    # And an independent implementation agrees.
    public = serialization.load_der_public_key(a.der_public_key)
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(signature, b"hello")


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_from_secret_key_wrong_length(length: int) -> None:
    with pytest.raises(SignatureError, match="32 bytes"):
        Ed25519Identity.from_secret_key(bytes(length))


def test_pem_round_trip() -> None:
    identity = Ed25519Identity.generate()
    pem = identity.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pem.endswith(b"-----END PRIVATE KEY-----\n")
    again = Ed25519Identity.from_pem(pem)
    assert again.principal == identity.principal
    assert again.sign(b"m") == identity.sign(b"m")  # Ed25519 is deterministic


def test_pem_from_cryptography() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    identity = Ed25519Identity.from_pem(pkcs8_pem(key))
    assert identity.der_public_key == spki(key.public_key())
    assert identity.sign(b"interop") == key.sign(b"interop")


def test_pem_to_cryptography() -> None:
    identity = Ed25519Identity.generate()
    key = serialization.load_pem_private_key(identity.to_pem(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert spki(key.public_key()) == identity.der_public_key
    assert key.sign(b"interop") == identity.sign(b"interop")
    # The same bytes as openssl / cryptography write: PKCS#8 v1 (RFC 8410).
    assert identity.to_pem() == pkcs8_pem(key)


def pem(der: bytes, label: str = "PRIVATE KEY") -> bytes:
    import base64

    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode()


def test_pem_v2_layouts_with_public_key() -> None:
    """dfx / IC tools write `[1] EXPLICIT` (a1 23 03 21 00); RFC 5958 says IMPLICIT (81 21 00)."""
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = spki(key.public_key())[12:]
    explicit = bytes.fromhex("3053020101300506032b657004220420") + seed + bytes.fromhex("a123032100") + public
    implicit = bytes.fromhex("3051020101300506032b657004220420") + seed + bytes.fromhex("812100") + public
    for der in (explicit, implicit):
        assert Ed25519Identity.from_pem(pem(der)).der_public_key == spki(key.public_key())
    # CRLF line endings and surrounding text are fine.
    crlf = b"key for the gateway\r\n" + pem(explicit).replace(b"\n", b"\r\n")
    assert Ed25519Identity.from_pem(crlf).der_public_key == spki(key.public_key())
    # A public key that does not belong to the secret is refused.
    wrong = bytearray(explicit)
    wrong[-1] ^= 0x01
    with pytest.raises(SignatureError, match="does not match"):
        Ed25519Identity.from_pem(pem(bytes(wrong)))


@pytest.mark.parametrize(
    ("make_pem", "message"),
    [
        (lambda: pkcs8_pem(ec.generate_private_key(ec.SECP256K1())), "ECDSA key on secp256k1"),
        (lambda: pkcs8_pem(ec.generate_private_key(ec.SECP256R1())), "ECDSA key on P-256"),
        (
            lambda: ec.generate_private_key(ec.SECP256K1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
            "EC \\(SEC1\\) key",
        ),
        (lambda: pkcs8_pem(rsa.generate_private_key(65537, 1024)), "algorithm OID 1.2.840.113549.1.1.1"),
        (lambda: pkcs8_pem(ed448.Ed448PrivateKey.generate()), "algorithm OID 1.3.101.113"),
        (
            lambda: pkcs8_pem(
                ed25519.Ed25519PrivateKey.generate(), serialization.BestAvailableEncryption(b"password")
            ),
            "encrypted",
        ),
        (
            lambda: (
                ed25519.Ed25519PrivateKey.generate()
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            ),
            'expected a "PRIVATE KEY" block, got "PUBLIC KEY"',
        ),
        (lambda: b"", "no -----BEGIN line"),
        (
            lambda: b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n",
            "no -----END PRIVATE KEY----- line",
        ),
        (lambda: pem(PKCS8_V1_PREFIX + bytes(31)), "malformed PKCS#8"),
        (lambda: pem(b"\x30\x03\x02\x01\x00"), "malformed PKCS#8"),
        (lambda: b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "bad base64"),
        (lambda: b"\xff\xfe-----BEGIN PRIVATE KEY-----", "not ASCII"),
    ],
)
def test_from_pem_rejects_other_keys_clearly(make_pem: Callable[[], bytes], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        Ed25519Identity.from_pem(make_pem())


def test_save_creates_private_file_atomically(tmp_path: Path) -> None:
    identity = Ed25519Identity.generate()
    target = tmp_path / "deep" / "er" / "identity.pem"
    identity.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert Ed25519Identity.load(target).principal == identity.principal
    assert Ed25519Identity.load(str(target)).principal == identity.principal
    assert sorted(p.name for p in target.parent.iterdir()) == ["identity.pem"]  # no temporary left over


def test_save_replaces_an_existing_file_and_fixes_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "identity.pem"
    target.write_bytes(b"old")
    target.chmod(0o644)
    identity = Ed25519Identity.generate()
    identity.save(str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == identity.to_pem()


def test_save_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Ed25519Identity.generate().save(tmp_path / "id.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "id.pem").stat().st_mode) == 0o600


def test_save_into_a_directory_path_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError):
        Ed25519Identity.generate().save(tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Ed25519Identity.load(tmp_path / "missing.pem")
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(OSError, match="not a key file"):
        Ed25519Identity.load(big)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(pkcs8_pem(ec.generate_private_key(ec.SECP256K1())))
    with pytest.raises(SignatureError, match=r"cannot load identity from .*bad\.pem: .*secp256k1"):
        Ed25519Identity.load(bad)


def test_secret_never_shows_in_repr() -> None:
    secret = bytes(range(32))
    identity = Ed25519Identity.from_secret_key(secret)
    pem_body = b"".join(identity.to_pem().splitlines()[1:-1]).decode()
    for text in (repr(identity), str(identity)):
        assert principal_to_text(identity.principal) in text
        assert secret.hex() not in text
        assert pem_body not in text
        assert "PRIVATE" not in text


def test_identity_is_immutable_and_not_picklable() -> None:
    identity = Ed25519Identity.generate()
    with pytest.raises(AttributeError):
        identity.principal = b"x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(identity)


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200))
def test_identity_agrees_with_cryptography(secret: bytes, message: bytes) -> None:
    identity = Ed25519Identity.from_secret_key(secret)
    reference = ed25519.Ed25519PrivateKey.from_private_bytes(secret)
    assert identity.der_public_key == spki(reference.public_key())
    assert identity.sign(message) == reference.sign(message)
    assert Ed25519Identity.from_pem(identity.to_pem()).principal == identity.principal


# --- verify_signature ------------------------------------------------------------------------------


class Signer:
    """One key of one scheme, signing the way IC clients do (64-byte signatures)."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        if scheme == "ed25519":
            self.ed = ed25519.Ed25519PrivateKey.generate()
            self.der = spki(self.ed.public_key())
        else:
            self.ec = ec.generate_private_key(ec.SECP256K1() if scheme == "secp256k1" else ec.SECP256R1())
            self.der = spki(self.ec.public_key())

    def sign(self, message: bytes) -> bytes:
        if self.scheme == "ed25519":
            return self.ed.sign(message)
        return ecdsa_raw_signature(self.ec, message)


SCHEMES = ["ed25519", "secp256k1", "p256"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_signature_positive_and_negative(scheme: str) -> None:
    signer, other = Signer(scheme), Signer(scheme)
    signature = signer.sign(b"message")
    assert verify_signature(signer.der, b"message", signature) is True
    assert verify_signature(signer.der, b"messagE", signature) is False
    assert verify_signature(other.der, b"message", signature) is False
    for i in (0, 31, 32, 63):
        tampered = bytearray(signature)
        tampered[i] ^= 0x01
        assert verify_signature(signer.der, b"message", bytes(tampered)) is False
    assert verify_signature(signer.der, b"message", bytes(64)) is False


@pytest.mark.parametrize(("scheme", "order"), [("secp256k1", SECP256K1_ORDER), ("p256", P256_ORDER)])
def test_high_s_ecdsa_signatures_are_accepted_like_the_ic(scheme: str, order: int) -> None:
    """The IC verifies secp256k1 "with malleability" and never checks s on P-256: both s and n - s pass."""
    signer = Signer(scheme)
    signature = signer.sign(b"malleable")
    assert verify_signature(signer.der, b"malleable", signature) is True
    assert verify_signature(signer.der, b"malleable", flip_s(signature, order)) is True


@pytest.mark.parametrize(("scheme", "order"), [("secp256k1", SECP256K1_ORDER), ("p256", P256_ORDER)])
def test_out_of_range_ecdsa_scalars_are_false(scheme: str, order: int) -> None:
    signer = Signer(scheme)
    signature = signer.sign(b"m")
    r, s = signature[:32], signature[32:]
    for bad in (bytes(32) + s, r + bytes(32), order.to_bytes(32, "big") + s, r + order.to_bytes(32, "big")):
        assert verify_signature(signer.der, b"m", bad) is False


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("length", [0, 63, 65, 72])
def test_wrong_signature_length_raises(scheme: str, length: int) -> None:
    with pytest.raises(SignatureError, match="expected 64 bytes"):
        verify_signature(Signer(scheme).der, b"m", bytes(length))


def compressed_secp256k1_spki() -> bytes:
    point = (
        ec.generate_private_key(ec.SECP256K1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    return bytes.fromhex("3036301006072a8648ce3d020106052b8104000a032200") + point


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: spki(rsa.generate_private_key(65537, 1024).public_key()), "algorithm"),
        (lambda: spki(ed448.Ed448PrivateKey.generate().public_key()), "OID 1.3.101.113"),
        (lambda: spki(ec.generate_private_key(ec.SECP384R1()).public_key()), "curve 1.3.132.0.34"),
        (compressed_secp256k1_spki, "compressed points are not accepted"),
        (lambda: Signer("ed25519").der[:-1], "malformed"),
        (lambda: Signer("ed25519").der + b"\x00", "malformed"),
        (lambda: Signer("secp256k1").der[:-1], "malformed"),
        (lambda: ED25519_DER_PREFIX + bytes(31), "malformed"),
        (lambda: b"", "malformed"),
        (lambda: bytes.fromhex("305e300c060a2b0601040183b8430101034e00") + bytes(77), "WebAuthn"),
        (lambda: bytes.fromhex("3017300c060a2b0601040183b8430102030700") + bytes(6), "canister signature"),
        # A point that is not on the curve (x = y = 1).
        (
            lambda: (
                bytes.fromhex("3056301006072a8648ce3d020106052b8104000a034200")
                + b"\x04"
                + (1).to_bytes(32, "big") * 2
            ),
            "not a point on the curve",
        ),
    ],
)
def test_unsupported_or_malformed_keys_raise(make_key: Callable[[], bytes], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_signature(make_key(), b"m", bytes(64))


@pytest.mark.parametrize(
    "weak_key",
    [
        bytes(32),  # y = 0, a point of order 4
        (1).to_bytes(32, "little"),  # the identity
        (2**255 - 19).to_bytes(32, "little"),  # y = p: a non-canonical encoding of y = 0
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # y = -1, order 2
    ],
)
def test_small_order_ed25519_keys_verify_nothing(weak_key: bytes) -> None:
    """With a small-order key a zero signature satisfies the cofactorless equation for many messages,
    so such keys must not verify anything (they would make a principal everybody can sign for)."""
    for message in (b"m", b"n", b"", b"\x00" * 40):
        assert verify_signature(ED25519_DER_PREFIX + weak_key, message, bytes(64)) is False


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(SCHEMES), st.binary(max_size=300))
def test_signatures_from_cryptography_verify(scheme: str, message: bytes) -> None:
    signer = Signer(scheme)
    signature = signer.sign(message)
    assert verify_signature(signer.der, message, signature) is True
    assert verify_signature(signer.der, message + b"\x00", signature) is False


@given(st.binary(max_size=120), st.binary(max_size=80))
def test_arbitrary_key_bytes_never_crash(der: bytes, signature: bytes) -> None:
    try:
        result = verify_signature(der, b"m", signature)
    except SignatureError:
        return
    assert result is False
