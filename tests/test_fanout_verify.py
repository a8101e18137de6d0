"""MessagesBatch.verify: the gateway's check that every relayed message is certified by the IC."""

from __future__ import annotations

import time

import pytest

from icgw.core import (
    CertificateError,
    MessagesBatch,
    bls_der_public_key,
    bls_public_key,
    certificate_cache_stats,
    decode_messages_reply,
    principal_from_text,
)

from .certified import CANISTER, ROOT_KEY, build_reply, contents, empty_reply


@pytest.mark.parametrize("n", [1, 2, 5, 50])
def test_a_certified_batch_verifies(n: int) -> None:
    batch = decode_messages_reply(build_reply(contents(n)))
    assert isinstance(batch, MessagesBatch)
    batch.verify(ROOT_KEY, CANISTER)
    batch.verify(ROOT_KEY, CANISTER, now_ns=time.time_ns())


def test_an_empty_batch_needs_no_certificate() -> None:
    decode_messages_reply(empty_reply()).verify(ROOT_KEY, CANISTER)


def test_a_tampered_message_is_refused() -> None:
    batch = decode_messages_reply(build_reply(contents(3), tamper=b"\xa0forged"))
    with pytest.raises(CertificateError, match="does not match its certified hash"):
        batch.verify(ROOT_KEY, CANISTER)


def test_a_batch_for_another_canister_is_refused() -> None:
    batch = decode_messages_reply(build_reply(contents(2)))
    other = principal_from_text("ryjl3-tyaaa-aaaaa-aaaba-cai")
    with pytest.raises(CertificateError, match="no certified data for canister"):
        batch.verify(ROOT_KEY, other)


def test_a_certificate_from_another_key_is_refused() -> None:
    batch = decode_messages_reply(build_reply(contents(2)))
    forger = bls_der_public_key(bls_public_key(bytes(31) + b"\x07"))
    with pytest.raises(CertificateError):
        batch.verify(forger, CANISTER)


def test_a_stale_certificate_is_refused_when_time_is_checked() -> None:
    old = time.time_ns() - 3600 * 10**9
    batch = decode_messages_reply(build_reply(contents(1), time_ns=old))
    batch.verify(ROOT_KEY, CANISTER)
    with pytest.raises(CertificateError):
        batch.verify(ROOT_KEY, CANISTER, now_ns=time.time_ns())


def test_a_certificate_seen_again_costs_no_pairing_but_is_still_checked() -> None:
    reply = build_reply(contents(3))
    batch = decode_messages_reply(reply)
    batch.verify(ROOT_KEY, CANISTER, now_ns=time.time_ns())
    before = certificate_cache_stats()["signature_checks"]
    decode_messages_reply(reply).verify(ROOT_KEY, CANISTER, now_ns=time.time_ns())
    assert certificate_cache_stats()["signature_checks"] == before
    # Freshness, scope and the witness are checked on every use of the remembered certificate.
    with pytest.raises(CertificateError, match="too old"):
        batch.verify(ROOT_KEY, CANISTER, now_ns=time.time_ns() + 3600 * 10**9)
    other = principal_from_text("ryjl3-tyaaa-aaaaa-aaaba-cai")
    with pytest.raises(CertificateError):
        batch.verify(ROOT_KEY, other)
