"""verify_envelope / sign_envelope / envelope_request_id: the synthetic vectors and one test per IC rule."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icgw.core import (
    ANONYMOUS,
    Ed25519Identity,
    EnvelopeError,
    RequestIdError,
    cbor_decode,
    cbor_encode,
    envelope_request_id,
    principal_from_text,
    principal_to_text,
    request_id,
    self_authenticating_principal,
    sign_envelope,
    verify_envelope,
    verify_signature,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
SYNTHETIC: dict[str, Any] = json.loads((VECTORS / "synthetic_emulator_vectors.json").read_text())

SECOND = 1_000_000_000
NOW = 1_750_000_000 * SECOND
MAX_AHEAD = (5 * 60 + 30) * SECOND
CANISTER = bytes.fromhex("000000000020000c0101")
OTHER_CANISTER = bytes.fromhex("00000000000000070101")
REQUEST_DOMAIN = b"\x0aic-request"
DELEGATION_DOMAIN = b"\x1aic-request-auth-delegation"
RESPONSE_DOMAIN = b"\x0bic-response"


# --- signers of every scheme -----------------------------------------------------------------------


class Signer(ABC):
    der: bytes

    @abstractmethod
    def sign(self, message: bytes) -> bytes: ...

    @property
    def principal(self) -> bytes:
        return self_authenticating_principal(self.der)


class IdentitySigner(Signer):
    def __init__(self, identity: Ed25519Identity | None = None) -> None:
        self.identity = identity or Ed25519Identity.generate()
        self.der = self.identity.der_public_key

    def sign(self, message: bytes) -> bytes:
        return self.identity.sign(message)


class EcdsaSigner(Signer):
    def __init__(self, curve: ec.EllipticCurve, high_s: bool = False) -> None:
        self.key = ec.generate_private_key(curve)
        self.order = (
            0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
            if isinstance(curve, ec.SECP256K1)
            else 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        )
        self.high_s = high_s
        self.der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
        if self.high_s and s <= self.order // 2:
            s = self.order - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class CryptographyEd25519Signer(Signer):
    def __init__(self) -> None:
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


def all_signers() -> list[Signer]:
    return [
        IdentitySigner(),
        CryptographyEd25519Signer(),
        EcdsaSigner(ec.SECP256K1()),
        EcdsaSigner(ec.SECP256R1()),
        EcdsaSigner(ec.SECP256K1(), high_s=True),
        EcdsaSigner(ec.SECP256R1(), high_s=True),
    ]


# --- building envelopes by hand ------------------------------------------------------------------


def call(sender: bytes, expiry: int = NOW + 60 * SECOND, **extra: object) -> dict[str, object]:
    content: dict[str, object] = {
        "request_type": "call",
        "sender": sender,
        "ingress_expiry": expiry,
        "canister_id": CANISTER,
        "method_name": "ws_open",
        "arg": b"DIDL\x00\x00",
    }
    content.update(extra)
    return content


def query(sender: bytes, expiry: int = NOW + 60 * SECOND, **extra: object) -> dict[str, object]:
    return call(sender, expiry, request_type="query", method_name="ws_get_messages", **extra)


def read_state(sender: bytes, expiry: int = NOW + 60 * SECOND, **extra: object) -> dict[str, object]:
    content: dict[str, object] = {
        "request_type": "read_state",
        "sender": sender,
        "ingress_expiry": expiry,
        "paths": [[b"time"]],
    }
    content.update(extra)
    return content


@dataclass
class Delegation:
    """One link of a chain: the key delegated to and the map that is signed."""

    to: Signer
    expiration: int = NOW + 3600 * SECOND
    extra: dict[str, object] = field(default_factory=dict)

    def as_map(self) -> dict[str, object]:
        return {"pubkey": self.to.der, "expiration": self.expiration, **self.extra}


def signed_delegation(delegation: Mapping[str, object], by: Signer) -> dict[str, object]:
    return {"delegation": dict(delegation), "signature": by.sign(DELEGATION_DOMAIN + request_id(delegation))}


def envelope(
    content: Mapping[str, object],
    sender: Signer | None,
    chain: list[Delegation] | None = None,
    request_signer: Signer | None = None,
    **overrides: object,
) -> bytes:
    """Encode a complete envelope, each delegation signed by the key before it."""
    env: dict[str, object] = {"content": dict(content)}
    if sender is not None:
        env["sender_pubkey"] = sender.der
        signer: Signer = sender
        if chain is not None:
            links = []
            for link in chain:
                links.append(signed_delegation(link.as_map(), signer))
                signer = link.to
            env["sender_delegation"] = links
        env["sender_sig"] = (request_signer or signer).sign(REQUEST_DOMAIN + request_id(content))
    env.update(overrides)
    return cbor_encode(env)


def rejected(envelope_bytes: bytes, match: str, now: int = NOW) -> None:
    with pytest.raises(EnvelopeError, match=match):
        verify_envelope(envelope_bytes, now)


# --- the synthetic vectors -----------------------------------------------------------------------

KEYS = SYNTHETIC["keys"]
SIGNED_QUERY = SYNTHETIC["signed_query_envelope"]
SIGNED_QUERY_BYTES = bytes.fromhex(SIGNED_QUERY["envelope_cbor_hex"])
USER = Ed25519Identity.from_secret_key(bytes.fromhex(KEYS["user_ed25519_secret_hex (RFC 8032 test 2)"]))
NODE_DER = bytes.fromhex(KEYS["node_ed25519_public_der_hex"])


def signed_query_content() -> dict[str, Any]:
    decoded = cbor_decode(SIGNED_QUERY_BYTES)
    assert isinstance(decoded, dict)
    content = decoded["content"]
    assert isinstance(content, dict)
    return content


def test_signed_query_envelope_vector() -> None:
    content = signed_query_content()
    expiry = content["ingress_expiry"]
    rid = bytes.fromhex(SIGNED_QUERY["content_request_id_hex"])
    assert envelope_request_id(SIGNED_QUERY_BYTES) == rid
    assert request_id(content) == rid
    assert REQUEST_DOMAIN + rid == bytes.fromhex(SIGNED_QUERY["sender_sig_message_hex"])
    sender_sig = bytes.fromhex(SIGNED_QUERY["sender_sig_hex"])
    assert verify_signature(USER.der_public_key, REQUEST_DOMAIN + rid, sender_sig) is True
    assert content["sender"] == USER.principal
    assert principal_to_text(content["sender"]) == KEYS["user_principal"]
    # A signed query is bound to the window [expiry - 5 min 30 s, expiry].
    for now in (expiry, expiry - MAX_AHEAD, expiry - 60 * SECOND):
        verify_envelope(SIGNED_QUERY_BYTES, now)
    rejected(SIGNED_QUERY_BYTES, "has passed", now=expiry + 1)
    rejected(SIGNED_QUERY_BYTES, "too far in the future", now=expiry - MAX_AHEAD - 1)


def test_sign_envelope_reproduces_the_vector_byte_for_byte() -> None:
    assert sign_envelope(USER, signed_query_content()) == SIGNED_QUERY_BYTES


def query_response_request_id() -> bytes:
    qrs = SYNTHETIC["query_response_signatures"]
    q = qrs["query_content"]
    content = {
        "request_type": q["request_type"],
        "sender": bytes.fromhex(q["sender_hex"]),
        "canister_id": principal_from_text(q["canister_id"]),
        "method_name": q["method_name"],
        "arg": bytes.fromhex(q["arg_hex"]),
        "ingress_expiry": int(q["ingress_expiry"]),
    }
    rid = request_id(content)
    assert rid.hex() == qrs["request_id_hex"]
    # It is an anonymous query: valid at any time, and sign_envelope-free.
    verify_envelope(cbor_encode({"content": content}), 0)
    return rid


def test_node_signature_on_replied_query_response() -> None:
    replied = SYNTHETIC["query_response_signatures"]["replied"]
    rid = query_response_request_id()
    timestamp = int(replied["timestamp"])
    signed_map = {
        "status": "replied",
        "reply": {"arg": bytes.fromhex(replied["reply_arg_hex"])},
        "timestamp": timestamp,
        "request_id": rid,
    }
    message = RESPONSE_DOMAIN + request_id(signed_map)
    assert message.hex() == replied["message_hex"]
    signature = bytes.fromhex(replied["signature_hex"])
    assert verify_signature(NODE_DER, message, signature) is True
    assert (
        verify_signature(NODE_DER, RESPONSE_DOMAIN + request_id({**signed_map, "timestamp": 1}), signature)
        is False
    )

    body = cbor_decode(bytes.fromhex(replied["full_query_response_body_cbor_hex"]))
    assert isinstance(body, dict)
    (node_signature,) = body["signatures"]
    assert node_signature["identity"] == self_authenticating_principal(NODE_DER)
    assert principal_to_text(node_signature["identity"]) == KEYS["node_id"]
    assert node_signature["signature"] == signature
    from_body = {"status": body["status"], "reply": body["reply"], "timestamp": node_signature["timestamp"]}
    assert verify_signature(
        NODE_DER, RESPONSE_DOMAIN + request_id({**from_body, "request_id": rid}), signature
    )


def test_node_signature_on_rejected_query_response() -> None:
    rej = SYNTHETIC["query_response_signatures"]["rejected"]
    signed_map = {
        "status": "rejected",
        "reject_code": rej["reject_code"],
        "reject_message": rej["reject_message"],
        "error_code": rej["error_code"],
        "timestamp": int(rej["timestamp"]),
        "request_id": query_response_request_id(),
    }
    message = RESPONSE_DOMAIN + request_id(signed_map)
    assert message.hex() == rej["message_hex"]
    assert verify_signature(NODE_DER, message, bytes.fromhex(rej["signature_hex"])) is True


def test_synthetic_call_request_id() -> None:
    c = SYNTHETIC["synthetic_call_certificate"]["call_content"]
    content = {
        "request_type": c["request_type"],
        "sender": bytes.fromhex(c["sender_hex"]),
        "canister_id": principal_from_text(c["canister_id"]),
        "method_name": c["method_name"],
        "arg": bytes.fromhex(c["arg_hex"]),
        "ingress_expiry": int(c["ingress_expiry"]),
        "nonce": bytes.fromhex(c["nonce_hex"]),
    }
    assert request_id(content).hex() == SYNTHETIC["synthetic_call_certificate"]["request_id_hex"]
    # An anonymous *call* is bound to its expiry.
    env = cbor_encode({"content": content})
    verify_envelope(env, int(c["ingress_expiry"]) - SECOND)
    rejected(env, "has passed", now=int(c["ingress_expiry"]) + 1)


def test_real_secp256k1_ws_open_envelope_from_the_protocol_notes() -> None:
    """PROTOCOL.md §9 records a real ws_open frame signed by the JS SDK with a secp256k1 identity."""
    notes = (VECTORS.parent / "spec" / "PROTOCOL.md").read_text()
    (frame_hex,) = re.findall(r"d9d9f7a168656e76656c6f7065[0-9a-f]+", notes)
    frame = bytes.fromhex(frame_hex)
    # The frame is 55799({"envelope": <envelope>}): strip the tag, the 1-entry map head and the key.
    prefix = bytes.fromhex("d9d9f7a1") + cbor_encode("envelope", self_describe=False)
    assert frame.startswith(prefix)
    env = frame[len(prefix) :]
    decoded = cbor_decode(env)
    assert isinstance(decoded, dict)
    content = decoded["content"]
    assert decoded["sender_pubkey"].startswith(bytes.fromhex("3056301006072a8648ce3d020106052b8104000a"))
    assert envelope_request_id(env) == request_id(content)
    verify_envelope(env, content["ingress_expiry"] - 60 * SECOND)
    tampered = env[:-1] + bytes([env[-1] ^ 1])
    rejected(tampered, "sender_sig does not verify", now=content["ingress_expiry"] - 60 * SECOND)


# --- signatures of every scheme --------------------------------------------------------------------


@pytest.mark.parametrize(
    "signer", all_signers(), ids=lambda s: type(s).__name__ + getattr(s, "high_s", False) * "-high-s"
)
@pytest.mark.parametrize("make", [call, query, read_state])
def test_signed_requests_of_every_scheme_verify(signer: Signer, make: Any) -> None:
    content = make(signer.principal)
    env = envelope(content, signer)
    verify_envelope(env, NOW)
    assert envelope_request_id(env) == request_id(content)


def test_wrong_sender_sig_is_rejected() -> None:
    signer = IdentitySigner()
    env = envelope(call(signer.principal), signer, request_signer=IdentitySigner())
    rejected(env, "sender_sig does not verify")


def test_signature_over_the_wrong_domain_is_rejected() -> None:
    signer = IdentitySigner()
    content = call(signer.principal)
    sig = signer.sign(b"\x0bic-request" + request_id(content))
    rejected(envelope(content, signer, sender_sig=sig), "sender_sig does not verify")


def test_malformed_sender_sig_is_rejected() -> None:
    signer = IdentitySigner()
    rejected(envelope(call(signer.principal), signer, sender_sig=b"\x00" * 63), "expected 64 bytes")


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (bytes.fromhex("302a300506032b6570032100") + bytes(31), "sender_pubkey: malformed"),
        (bytes.fromhex("3017300c060a2b0601040183b8430102030700") + bytes(6), "canister signature keys"),
    ],
)
def test_unsupported_sender_pubkey_is_rejected(der: bytes, message: str) -> None:
    content = call(self_authenticating_principal(der))
    env = cbor_encode({"content": content, "sender_pubkey": der, "sender_sig": bytes(64)})
    rejected(env, message)


# --- anonymous rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"sender_sig": bytes(64)},
        {"sender_pubkey": IdentitySigner().der},
        {"sender_pubkey": IdentitySigner().der, "sender_sig": bytes(64)},
        {"sender_delegation": []},
    ],
)
def test_anonymous_requests_carry_no_signature(extra: dict[str, object]) -> None:
    env = cbor_encode({"content": call(ANONYMOUS), **extra})
    rejected(env, "^Signature is not allowed for the anonymous user$")


@pytest.mark.parametrize("make", [query, read_state])
def test_anonymous_query_and_read_state_skip_the_expiry_check(make: Any) -> None:
    env = cbor_encode({"content": make(ANONYMOUS, expiry=1)})
    verify_envelope(env, NOW)
    env = cbor_encode({"content": make(ANONYMOUS, expiry=2**64 - 1)})
    verify_envelope(env, NOW)


def test_anonymous_call_is_checked_for_expiry() -> None:
    rejected(cbor_encode({"content": call(ANONYMOUS, expiry=NOW - 1)}), "has passed")
    rejected(cbor_encode({"content": call(ANONYMOUS, expiry=NOW + MAX_AHEAD + 1)}), "too far in the future")


@pytest.mark.parametrize("make", [call, query, read_state])
def test_signed_requests_are_checked_for_expiry(make: Any) -> None:
    signer = IdentitySigner()
    verify_envelope(envelope(make(signer.principal, expiry=NOW), signer), NOW)
    verify_envelope(envelope(make(signer.principal, expiry=NOW + MAX_AHEAD), signer), NOW)
    rejected(envelope(make(signer.principal, expiry=NOW - 1), signer), "has passed")
    rejected(envelope(make(signer.principal, expiry=NOW + MAX_AHEAD + 1), signer), "too far in the future")


def test_expiry_window_does_not_overflow_near_the_end_of_time() -> None:
    signer = IdentitySigner()
    verify_envelope(envelope(call(signer.principal, expiry=2**64 - 1), signer), 2**64 - 2)


# --- sender ----------------------------------------------------------------------------------------


def test_sender_must_be_the_self_authenticating_id_of_the_key() -> None:
    signer, other = IdentitySigner(), IdentitySigner()
    rejected(envelope(call(other.principal), signer), "does not match sender_pubkey")


def test_non_anonymous_sender_needs_key_and_signature() -> None:
    signer = IdentitySigner()
    content = call(signer.principal)
    rejected(cbor_encode({"content": content}), "missing sender_pubkey")
    rejected(cbor_encode({"content": content, "sender_pubkey": signer.der}), "missing sender_sig")
    rejected(cbor_encode({"content": content, "sender_sig": bytes(64)}), "missing sender_pubkey")


# --- content structure -----------------------------------------------------------------------------


def anonymous(content: Mapping[str, object]) -> bytes:
    return cbor_encode({"content": dict(content)})


def without(content: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in content.items() if k != key}


@pytest.mark.parametrize(
    ("make", "missing"),
    [
        (call, "sender"),
        (call, "ingress_expiry"),
        (call, "canister_id"),
        (call, "method_name"),
        (call, "arg"),
        (query, "canister_id"),
        (query, "method_name"),
        (query, "arg"),
        (read_state, "paths"),
        (read_state, "sender"),
        (read_state, "ingress_expiry"),
    ],
)
def test_required_fields(make: Any, missing: str) -> None:
    content = without(make(ANONYMOUS), missing)
    rejected(anonymous(content), f"{content['request_type']} content is missing {missing}$")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (without(call(ANONYMOUS), "request_type"), "content is missing request_type"),
        (call(ANONYMOUS, request_type="update"), 'unknown request_type "update"'),
        (call(ANONYMOUS, request_type=b"call"), "request_type must be a text string"),
        (call(ANONYMOUS, method_name=b"greet"), "method_name must be a text string, not a byte string"),
        (call(ANONYMOUS, arg="DIDL"), "arg must be a byte string"),
        (call(ANONYMOUS, ingress_expiry="soon"), "ingress_expiry must be a nat"),
        (call(ANONYMOUS, ingress_expiry=-1), "ingress_expiry must be a nat"),
        (call(ANONYMOUS, ingress_expiry=2**64), "ingress_expiry does not fit in 64 bits"),
        (call(ANONYMOUS, canister_id=bytes(30)), "canister_id is not a principal: 30 bytes"),
        (call(bytes(30)), "sender is not a principal"),
        (
            call(ANONYMOUS, sender_info={"info": b"", "signer": b"", "sig": b""}),
            "sender_info is only allowed",
        ),
        (call(ANONYMOUS, paths=[]), 'unexpected field "paths" in call content'),
        (call(ANONYMOUS, extra=1), 'unexpected field "extra" in call content'),
        (read_state(ANONYMOUS, canister_id=CANISTER), 'unexpected field "canister_id" in read_state content'),
        (read_state(ANONYMOUS, method_name="m"), 'unexpected field "method_name" in read_state content'),
        (read_state(ANONYMOUS, paths=[b"time"]), r"paths\[0\] must be an array"),
        (read_state(ANONYMOUS, paths=[["time"]]), r"paths\[0\]\[0\] must be a byte string"),
        (read_state(ANONYMOUS, paths=b"time"), "paths must be an array"),
        (call(ANONYMOUS, nonce="abc"), "nonce must be a byte string"),
        (call(ANONYMOUS, flag=True), 'unexpected field "flag"'),
    ],
)
def test_malformed_content(content: dict[str, object], message: str) -> None:
    rejected(anonymous(content), message)


def test_content_and_envelope_shape() -> None:
    rejected(cbor_encode({}), "envelope is missing content")
    rejected(cbor_encode({"content": [1]}), "content must be a map, not a array")
    rejected(cbor_encode([{"content": call(ANONYMOUS)}]), "envelope must be a map")
    rejected(
        cbor_encode({"content": call(ANONYMOUS), "extra": 1}), 'unexpected field "extra" in the envelope'
    )
    rejected(cbor_encode({"content": {1: "call"}}), "content is missing request_type")
    rejected(cbor_encode({"content": {**call(ANONYMOUS), 1: 2}}), "content keys must be text strings")
    rejected(
        cbor_encode({"content": call(ANONYMOUS), "sender_sig": "sig"}), "sender_sig must be a byte string"
    )
    rejected(
        cbor_encode({"content": call(ANONYMOUS), "sender_delegation": {}}),
        "sender_delegation must be an array",
    )


@pytest.mark.parametrize("make", [call, query, read_state])
def test_nonce_at_most_32_bytes(make: Any) -> None:
    verify_envelope(anonymous(make(ANONYMOUS, expiry=NOW, nonce=bytes(32))), NOW)
    rejected(anonymous(make(ANONYMOUS, nonce=bytes(33))), "nonce is 33 bytes; at most 32 are allowed")


def test_paths_limits() -> None:
    verify_envelope(anonymous(read_state(ANONYMOUS, paths=[[b"time"]] * 1000)), NOW)
    rejected(anonymous(read_state(ANONYMOUS, paths=[[b"time"]] * 1001)), "1001 paths; at most 1000")
    verify_envelope(anonymous(read_state(ANONYMOUS, paths=[[b"x"] * 127])), NOW)
    rejected(
        anonymous(read_state(ANONYMOUS, paths=[[], [b"x"] * 128])), r"paths\[1\] has 128 labels; at most 127"
    )
    verify_envelope(anonymous(read_state(ANONYMOUS, paths=[])), NOW)


def test_bignum_encoded_expiry_is_a_nat_with_the_same_request_id() -> None:
    signer = IdentitySigner()
    content = call(signer.principal, expiry=NOW + SECOND)
    rid = request_id(content)
    as_bignum = {**content, "ingress_expiry": cbor2.CBORTag(2, (NOW + SECOND).to_bytes(9, "big"))}
    env = cbor2.dumps(
        cbor2.CBORTag(
            55799,
            {
                "content": as_bignum,
                "sender_pubkey": signer.der,
                "sender_sig": signer.sign(REQUEST_DOMAIN + rid),
            },
        )
    )
    assert envelope_request_id(env) == rid
    verify_envelope(env, NOW)


# --- delegations -----------------------------------------------------------------------------------


def chain_of(n: int, **kwargs: Any) -> list[Delegation]:
    return [Delegation(IdentitySigner(), **kwargs) for _ in range(n)]


@pytest.mark.parametrize("length", [0, 1, 2, 20])
def test_delegation_chains_verify(length: int) -> None:
    sender = IdentitySigner()
    verify_envelope(envelope(call(sender.principal), sender, chain_of(length)), NOW)


def test_mixed_scheme_chain_verifies() -> None:
    sender = EcdsaSigner(ec.SECP256K1())
    chain = [
        Delegation(EcdsaSigner(ec.SECP256R1())),
        Delegation(IdentitySigner()),
        Delegation(EcdsaSigner(ec.SECP256K1(), high_s=True)),
    ]
    verify_envelope(envelope(query(sender.principal), sender, chain), NOW)


def test_at_most_20_delegations() -> None:
    sender = IdentitySigner()
    rejected(envelope(call(sender.principal), sender, chain_of(21)), "21 delegations; at most 20 are allowed")


def test_request_must_be_signed_by_the_last_delegation() -> None:
    sender = IdentitySigner()
    chain = chain_of(2)
    env = envelope(call(sender.principal), sender, chain, request_signer=sender)
    rejected(env, r"sender_sig \(by the last delegation's key\) does not verify")
    env = envelope(call(sender.principal), sender, chain, request_signer=chain[0].to)
    rejected(env, r"sender_sig \(by the last delegation's key\) does not verify")


def test_each_delegation_is_signed_by_the_previous_key() -> None:
    sender = IdentitySigner()
    content = call(sender.principal)
    a, b = IdentitySigner(), IdentitySigner()
    d0 = signed_delegation({"pubkey": a.der, "expiration": NOW + SECOND}, sender)
    d1_by_sender = signed_delegation({"pubkey": b.der, "expiration": NOW + SECOND}, sender)
    env = cbor_encode(
        {
            "content": content,
            "sender_pubkey": sender.der,
            "sender_delegation": [d0, d1_by_sender],
            "sender_sig": b.sign(REQUEST_DOMAIN + request_id(content)),
        }
    )
    rejected(env, "signature of delegation 1 by the key of delegation 0 does not verify")
    first_by_stranger = signed_delegation({"pubkey": a.der, "expiration": NOW + SECOND}, IdentitySigner())
    env = cbor_encode(
        {
            "content": content,
            "sender_pubkey": sender.der,
            "sender_delegation": [first_by_stranger],
            "sender_sig": a.sign(REQUEST_DOMAIN + request_id(content)),
        }
    )
    rejected(env, "signature of delegation 0 by sender_pubkey does not verify")


def test_delegation_signature_uses_its_own_domain_separator() -> None:
    sender, a = IdentitySigner(), IdentitySigner()
    content = call(sender.principal)
    d = {"pubkey": a.der, "expiration": NOW + SECOND}
    wrong_domain = b"\x1bic-request-auth-delegation" + request_id(d)
    env = cbor_encode(
        {
            "content": content,
            "sender_pubkey": sender.der,
            "sender_delegation": [{"delegation": d, "signature": sender.sign(wrong_domain)}],
            "sender_sig": a.sign(REQUEST_DOMAIN + request_id(content)),
        }
    )
    rejected(env, "signature of delegation 0 by sender_pubkey does not verify")


def test_expired_delegation_is_rejected() -> None:
    sender = IdentitySigner()
    chain = [Delegation(IdentitySigner()), Delegation(IdentitySigner(), expiration=NOW - 1)]
    rejected(envelope(call(sender.principal), sender, chain), f"delegation 1 expired at {NOW - 1}")
    # Expiring exactly now is still valid.
    chain = [Delegation(IdentitySigner(), expiration=NOW)]
    verify_envelope(envelope(call(sender.principal), sender, chain), NOW)


def test_no_public_key_twice_in_the_chain() -> None:
    sender, a = IdentitySigner(), IdentitySigner()
    rejected(
        envelope(call(sender.principal), sender, [Delegation(sender)]),
        "appears twice in the delegation chain",
    )
    rejected(envelope(call(sender.principal), sender, [Delegation(a), Delegation(sender)]), "appears twice")
    rejected(envelope(call(sender.principal), sender, [Delegation(a), Delegation(a)]), "appears twice")


def test_targets_must_contain_the_canister() -> None:
    sender = IdentitySigner()
    allowed = [Delegation(IdentitySigner(), extra={"targets": [OTHER_CANISTER, CANISTER]})]
    verify_envelope(envelope(call(sender.principal), sender, allowed), NOW)
    verify_envelope(envelope(query(sender.principal), sender, allowed), NOW)
    elsewhere = [Delegation(IdentitySigner(), extra={"targets": [OTHER_CANISTER]})]
    message = f"canister {principal_to_text(CANISTER)} is not one of the delegation targets"
    rejected(envelope(call(sender.principal), sender, elsewhere), message)
    rejected(envelope(query(sender.principal), sender, elsewhere), message)
    nothing = [Delegation(IdentitySigner(), extra={"targets": []})]
    rejected(envelope(call(sender.principal), sender, nothing), message)
    # read_state has no canister_id; its effective canister is checked by the caller.
    verify_envelope(envelope(read_state(sender.principal), sender, elsewhere), NOW)


def test_targets_intersect_across_the_chain() -> None:
    sender = IdentitySigner()
    chain = [
        Delegation(IdentitySigner(), extra={"targets": [CANISTER, OTHER_CANISTER]}),
        Delegation(IdentitySigner()),  # no restriction
        Delegation(IdentitySigner(), extra={"targets": [OTHER_CANISTER]}),
    ]
    rejected(envelope(call(sender.principal), sender, chain), "is not one of the delegation targets")
    chain[2] = Delegation(IdentitySigner(), extra={"targets": [CANISTER]})
    verify_envelope(envelope(call(sender.principal), sender, chain), NOW)


def test_at_most_1000_targets() -> None:
    sender = IdentitySigner()
    targets = [CANISTER] + [i.to_bytes(10, "big") for i in range(999)]
    ok = [Delegation(IdentitySigner(), extra={"targets": targets})]
    verify_envelope(envelope(call(sender.principal), sender, ok), NOW)
    too_many = [Delegation(IdentitySigner(), extra={"targets": [*targets, CANISTER]})]
    rejected(
        envelope(call(sender.principal), sender, too_many), "delegation 0 has 1001 targets; at most 1000"
    )


def test_target_must_be_a_principal() -> None:
    sender = IdentitySigner()
    chain = [Delegation(IdentitySigner(), extra={"targets": [bytes(30)]})]
    rejected(envelope(call(sender.principal), sender, chain), "delegation 0 target is not a principal")


@pytest.mark.parametrize(
    ("permissions", "make", "error"),
    [
        ("queries", query, None),
        ("queries", read_state, None),
        ("queries", call, 'delegation 0 has permissions "queries", which do not allow a call request'),
        ("all", call, None),
        ("all", query, None),
        ("everything", query, 'delegation 0 has unknown permissions "everything"'),
        (1, query, "delegation 0 permissions must be a text string"),
    ],
)
def test_delegation_permissions(permissions: object, make: Any, error: str | None) -> None:
    sender = IdentitySigner()
    chain = [Delegation(IdentitySigner(), extra={"permissions": permissions})]
    env = envelope(make(sender.principal), sender, chain)
    if error is None:
        verify_envelope(env, NOW)
    else:
        rejected(env, error)


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ({"delegation": {"pubkey": b"k"}}, r"sender_delegation\[0\] is missing signature"),
        ({"signature": b""}, r"sender_delegation\[0\] is missing delegation"),
        ({"delegation": {"expiration": NOW}, "signature": b""}, "delegation 0 is missing pubkey"),
        ({"delegation": {"pubkey": b"k"}, "signature": b""}, "delegation 0 is missing expiration"),
        (
            {"delegation": {"pubkey": b"k", "expiration": NOW, "senders": []}, "signature": b""},
            'unexpected field "senders"',
        ),
        (
            {"delegation": {"pubkey": b"k", "expiration": NOW}, "signature": b"", "x": 1},
            'unexpected field "x"',
        ),
        (
            {"delegation": {"pubkey": "k", "expiration": NOW}, "signature": b""},
            "delegation 0 pubkey must be a byte string",
        ),
        (
            {"delegation": {"pubkey": b"k", "expiration": "now"}, "signature": b""},
            "delegation 0 expiration must be a nat",
        ),
        (
            {"delegation": {"pubkey": b"k", "expiration": NOW, "targets": b""}, "signature": b""},
            "targets must be an array",
        ),
        ({"delegation": [], "signature": b""}, "delegation 0 must be a map"),
    ],
)
def test_malformed_delegations(link: dict[str, object], message: str) -> None:
    sender = IdentitySigner()
    env = cbor_encode(
        {
            "content": call(sender.principal),
            "sender_pubkey": sender.der,
            "sender_sig": bytes(64),
            "sender_delegation": [link],
        }
    )
    rejected(env, message)


def test_delegation_to_an_unsupported_key_is_rejected() -> None:
    sender = IdentitySigner()
    webauthn = bytes.fromhex("305e300c060a2b0601040183b8430101034e00") + bytes(77)
    content = call(sender.principal)
    env = cbor_encode(
        {
            "content": content,
            "sender_pubkey": sender.der,
            "sender_delegation": [
                signed_delegation({"pubkey": webauthn, "expiration": NOW + SECOND}, sender)
            ],
            "sender_sig": bytes(64),
        }
    )
    rejected(env, "delegation 0 pubkey: unsupported public key: WebAuthn")


# --- sign_envelope ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [call, query, read_state])
def test_sign_envelope_output_verifies(make: Any) -> None:
    identity = Ed25519Identity.generate()
    content = make(identity.principal, nonce=bytes(16))
    env = sign_envelope(identity, content)
    assert env.startswith(bytes.fromhex("d9d9f7"))
    decoded = cbor_decode(env)
    assert isinstance(decoded, dict)
    assert list(decoded) == ["content", "sender_pubkey", "sender_sig"]
    assert decoded["content"] == content
    assert decoded["sender_pubkey"] == identity.der_public_key
    assert envelope_request_id(env) == request_id(content)
    verify_envelope(env, NOW)


def test_sign_envelope_requires_the_identity_as_sender() -> None:
    identity = Ed25519Identity.generate()
    with pytest.raises(EnvelopeError, match="is not the signing identity's principal"):
        sign_envelope(identity, call(ANONYMOUS))


def test_sign_envelope_checks_the_content() -> None:
    identity = Ed25519Identity.generate()
    with pytest.raises(EnvelopeError, match="call content is missing method_name"):
        sign_envelope(identity, without(call(identity.principal), "method_name"))
    with pytest.raises(EnvelopeError, match="nonce is 33 bytes"):
        sign_envelope(identity, call(identity.principal, nonce=bytes(33)))
    with pytest.raises(RequestIdError, match="float"):
        sign_envelope(identity, call(identity.principal, ingress_expiry=1.5))
    with pytest.raises(RequestIdError, match="bool"):
        sign_envelope(identity, call(identity.principal, flag=True))
    with pytest.raises(EnvelopeError, match="content must be a mapping"):
        sign_envelope(identity, [("request_type", "call")])  # type: ignore[arg-type]


# --- hostile input ---------------------------------------------------------------------------------


def valid_envelope() -> bytes:
    sender = EcdsaSigner(ec.SECP256K1())
    return envelope(
        call(sender.principal), sender, [Delegation(IdentitySigner(), extra={"targets": [CANISTER]})]
    )


VALID = valid_envelope()


def test_every_truncation_is_rejected() -> None:
    verify_envelope(VALID, NOW)
    for n in range(len(VALID)):
        with pytest.raises(EnvelopeError):
            verify_envelope(VALID[:n], NOW)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        verify_envelope(data, NOW)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_rejected(position: int, xor: int) -> None:
    mutated = bytearray(VALID)
    mutated[position] ^= xor
    with pytest.raises(EnvelopeError):
        verify_envelope(bytes(mutated), NOW)


cbor_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.binary(max_size=20),
        st.text(max_size=10),
        st.floats(allow_nan=False),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["content", "sender_pubkey", "sender_sig", "request_type", "x"]),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(cbor_values)
def test_random_cbor_documents_are_rejected(value: object) -> None:
    data = cbor_encode(value)
    with pytest.raises(EnvelopeError):
        verify_envelope(data, NOW)
    try:
        rid = envelope_request_id(data)
    except ValueError:
        return
    assert len(rid) == 32
