"""CBOR decode/encode of an IC call envelope: icgw's core versus cbor2."""

from __future__ import annotations

import cbor2
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from icgw.core import cbor_decode, cbor_encode

ENVELOPE = {
    "content": {
        "request_type": "call",
        "canister_id": bytes(10),
        "method_name": "ws_message",
        "arg": bytes(180),
        "sender": bytes(29),
        "ingress_expiry": 1_702_143_738_049_473_644,
        "nonce": bytes(16),
    },
    "sender_pubkey": bytes(88),
    "sender_sig": bytes(64),
}
ENCODED = cbor2.dumps(cbor2.CBORTag(55799, ENVELOPE))


@pytest.mark.benchmark(group="cbor-decode-envelope")
def test_decode_core(benchmark: BenchmarkFixture) -> None:
    assert benchmark(cbor_decode, ENCODED) == ENVELOPE


@pytest.mark.benchmark(group="cbor-decode-envelope")
def test_decode_cbor2(benchmark: BenchmarkFixture) -> None:
    assert benchmark(cbor2.loads, ENCODED) == ENVELOPE


@pytest.mark.benchmark(group="cbor-encode-envelope")
def test_encode_core(benchmark: BenchmarkFixture) -> None:
    assert benchmark(cbor_encode, ENVELOPE) == ENCODED


@pytest.mark.benchmark(group="cbor-encode-envelope")
def test_encode_cbor2(benchmark: BenchmarkFixture) -> None:
    benchmark(lambda: cbor2.dumps(cbor2.CBORTag(55799, ENVELOPE)))
