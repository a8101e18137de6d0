"""Decoding a client frame (375 bytes, a ws_message of an Ed25519 client).

icgw's core versus cbor2 plus the same field checks in Python.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from icgw.core import decode_client_frame

CONTENT = {
    "arg": bytes(60),
    "canister_id": bytes(10),
    "ingress_expiry": 1_702_143_738_049_473_644,
    "method_name": "ws_message",
    "nonce": bytes(16),
    "request_type": "call",
    "sender": bytes(29),
}
ENVELOPE = {"content": CONTENT, "sender_pubkey": bytes(44), "sender_sig": bytes(64)}
FRAME = cbor2.dumps(cbor2.CBORTag(55799, {"envelope": ENVELOPE}))


def decode_with_cbor2(data: bytes) -> tuple[Any, ...]:
    """The same job in Python: decode, check the shape, pull the routing fields, re-encode the envelope."""
    frame = cbor2.loads(data)
    envelope = frame["envelope"]
    content = envelope["content"]
    if content["request_type"] not in ("call", "query"):
        raise ValueError("bad request type")
    fields = (content["canister_id"], content["sender"], content["method_name"], content["arg"])
    if not all(isinstance(f, bytes | str) for f in fields):
        raise ValueError("bad field")
    return (*fields, cbor2.dumps(cbor2.CBORTag(55799, envelope)))


@pytest.mark.benchmark(group="decode-client-frame")
def test_core(benchmark: BenchmarkFixture) -> None:
    def run() -> tuple[bytes, bytes, str, bytes, bytes]:
        f = decode_client_frame(FRAME)
        return (f.canister_id, f.sender, f.method_name, f.arg, f.envelope)

    assert benchmark(run)[2] == "ws_message"


@pytest.mark.benchmark(group="decode-client-frame")
def test_cbor2(benchmark: BenchmarkFixture) -> None:
    assert benchmark(decode_with_cbor2, FRAME)[2] == "ws_message"
