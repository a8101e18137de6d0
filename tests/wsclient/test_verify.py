"""MessageVerifier: the SDK's certification checks, once per certificate and tree, freshness every time."""

from __future__ import annotations

import hashlib
import time

import pytest

from icgw.core import (
    bls_der_public_key,
    bls_public_key,
    bls_sign,
    cbor_decode,
    cbor_encode,
    decode_messages_reply,
    hash_tree_digest,
    hash_tree_encode,
)
from icgw.wsclient import MessageVerifier, VerificationError

from ..certified import CANISTER, ROOT_KEY, SECRET, build_reply, contents, leb128

NS_PER_MINUTE = 60 * 10**9


class Clock:
    def __init__(self) -> None:
        self.now = time.time_ns()

    def __call__(self) -> int:
        return self.now


def batch_frames(n: int, **build: object) -> list[tuple[str, bytes, bytes, bytes]]:
    batch = decode_messages_reply(build_reply(contents(n), **build))  # type: ignore[arg-type]
    return [(key, content, batch.cert, batch.tree) for _, _, key, content in batch.messages]


def test_genuine_messages_pass_and_share_one_certificate_check() -> None:
    verifier = MessageVerifier(ROOT_KEY, CANISTER)
    for frame in batch_frames(5):
        verifier.verify(*frame)
    assert (verifier.certificate_checks, verifier.messages_checked) == (1, 5)


def test_content_not_matching_its_key_fails() -> None:
    verifier = MessageVerifier(ROOT_KEY, CANISTER)
    (key, _, cert, tree), (_, other_content, _, _) = batch_frames(2)
    with pytest.raises(VerificationError, match="not the certified one"):
        verifier.verify(key, other_content, cert, tree)


def test_key_outside_the_witness_fails() -> None:
    verifier = MessageVerifier(ROOT_KEY, CANISTER)
    ((key, content, cert, tree),) = batch_frames(1)
    with pytest.raises(VerificationError, match="does not cover key"):
        verifier.verify(key[:-1] + "9", content, cert, tree)


def test_witness_of_another_state_fails() -> None:
    verifier = MessageVerifier(ROOT_KEY, CANISTER)
    ((key, content, cert, _),) = batch_frames(1)
    ((_, _, _, other_tree),) = batch_frames(1, first_nonce=1)
    with pytest.raises(VerificationError, match="witness does not match"):
        verifier.verify(key, content, cert, other_tree)


def test_wrong_root_key_fails() -> None:
    other_root = bls_der_public_key(bls_public_key(bytes(31) + b"\x05"))
    verifier = MessageVerifier(other_root, CANISTER)
    with pytest.raises(VerificationError, match="Certificate validation failed"):
        verifier.verify(*batch_frames(1)[0])


def test_certificate_of_another_canister_fails() -> None:
    verifier = MessageVerifier(ROOT_KEY, bytes.fromhex("00000000000000020101"))
    with pytest.raises(VerificationError, match="Could not find certified data for this canister"):
        verifier.verify(*batch_frames(1)[0])


def test_broken_signature_fails() -> None:
    key, content, cert, tree = batch_frames(1)[0]
    fields = cbor_decode(cert)
    assert isinstance(fields, dict)
    signature = bytearray(fields["signature"])
    signature[-1] ^= 1
    forged = cbor_encode({**fields, "signature": bytes(signature)})
    with pytest.raises(VerificationError):
        MessageVerifier(ROOT_KEY, CANISTER).verify(key, content, forged, tree)


@pytest.mark.parametrize("offset_ns", [-6 * NS_PER_MINUTE, 6 * NS_PER_MINUTE], ids=["old", "future"])
def test_certificate_outside_the_time_window_fails(offset_ns: int) -> None:
    clock = Clock()
    verifier = MessageVerifier(ROOT_KEY, CANISTER, clock=clock)
    with pytest.raises(VerificationError):
        verifier.verify(*batch_frames(1, time_ns=clock.now + offset_ns)[0])


def test_cached_certificate_still_ages() -> None:
    clock = Clock()
    verifier = MessageVerifier(ROOT_KEY, CANISTER, clock=clock)
    first, second = batch_frames(2, time_ns=clock.now)
    verifier.verify(*first)
    clock.now += 4 * NS_PER_MINUTE
    verifier.verify(*second)  # cached and still fresh
    clock.now += 2 * NS_PER_MINUTE
    with pytest.raises(VerificationError, match="too old"):
        verifier.verify(*first)
    assert verifier.certificate_checks == 1


def test_max_age_none_switches_freshness_off() -> None:
    verifier = MessageVerifier(ROOT_KEY, CANISTER, max_certificate_age_ns=None)
    verifier.verify(*batch_frames(1, time_ns=time.time_ns() - 10**6 * NS_PER_MINUTE)[0])


def test_cache_is_bounded_and_evicts_the_least_recent() -> None:
    verifier = MessageVerifier(ROOT_KEY, CANISTER, cache_size=2)
    batches = [batch_frames(1, time_ns=time.time_ns() - i) for i in range(3)]
    for (frame,) in batches:
        verifier.verify(*frame)
    assert verifier.certificate_checks == 3
    verifier.verify(*batches[2][0])  # still cached
    assert verifier.certificate_checks == 3
    verifier.verify(*batches[0][0])  # evicted: checked again
    assert verifier.certificate_checks == 4


def certify(witness: object) -> tuple[bytes, bytes]:
    """A certificate for a canister whose certified data is the root of `witness`, and the witness's CBOR."""
    state = (
        "fork",
        (
            "labeled",
            b"canister",
            ("labeled", CANISTER, ("labeled", b"certified_data", ("leaf", hash_tree_digest(witness)))),
        ),
        ("labeled", b"time", ("leaf", leb128(time.time_ns()))),
    )
    signature = bls_sign(SECRET, b"\x0dic-state-root" + hash_tree_digest(state))
    cert = cbor_encode({"tree": cbor_decode(hash_tree_encode(state)), "signature": signature})
    return cert, hash_tree_encode(witness)


def test_websocket_leaf_stands_for_every_key() -> None:
    """Like the SDK: when the witness maps `websocket` itself to a leaf, that hash covers any key."""
    content = b"\xa5 any content"
    cert, tree = certify(("labeled", b"websocket", ("leaf", hashlib.sha256(content).digest())))
    verifier = MessageVerifier(ROOT_KEY, CANISTER)
    verifier.verify("whatever_00000000000000000000", content, cert, tree)
    with pytest.raises(VerificationError):
        verifier.verify("whatever_00000000000000000000", content + b"!", cert, tree)


def test_only_revealed_leaves_certify() -> None:
    first, second = b"first content", b"second content"
    hidden = ("labeled", b"k1", ("leaf", hashlib.sha256(first).digest()))
    nested = ("labeled", b"k3", ("labeled", b"deeper", ("leaf", hashlib.sha256(second).digest())))
    websocket = (
        "fork",
        ("pruned", hash_tree_digest(hidden)),
        ("fork", ("labeled", b"k2", ("leaf", hashlib.sha256(second).digest())), nested),
    )
    cert, tree = certify(("labeled", b"websocket", websocket))
    verifier = MessageVerifier(ROOT_KEY, CANISTER)
    verifier.verify("k2", second, cert, tree)
    with pytest.raises(VerificationError, match="does not cover key 'k1'"):
        verifier.verify("k1", first, cert, tree)  # pruned: the witness does not reveal it
    with pytest.raises(VerificationError, match="does not cover key 'k3'"):
        verifier.verify("k3", second, cert, tree)  # not a leaf


def test_malformed_witness_fails() -> None:
    key, content, cert, _ = batch_frames(1)[0]
    with pytest.raises(VerificationError, match="bad witness tree"):
        MessageVerifier(ROOT_KEY, CANISTER).verify(key, content, cert, cbor_encode([9, b"x"]))


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        MessageVerifier(ROOT_KEY, CANISTER, cache_size=0)
