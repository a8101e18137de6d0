"""A 50-message ws_get_messages batch turned into client frames, and its verification.

icgw's core (typed fast reader, cert and tree encoded once) versus the generic path: the core's generic
Candid decoder plus cbor2 to build each frame in Python.
"""

from __future__ import annotations

import cbor2
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from tests.certified import CANISTER, ROOT_KEY, build_reply, contents

from icgw.core import candid_decode_values, decode_messages_reply

REPLY = build_reply(contents(50))


def frames_core() -> list[bytes]:
    return decode_messages_reply(REPLY).frames()


def frames_generic() -> list[bytes]:
    (result,) = candid_decode_values("(CanisterWsGetMessagesResult)", REPLY)
    assert isinstance(result, dict)
    ok = result["Ok"]
    cert, tree = ok["cert"], ok["tree"]
    return [
        cbor2.dumps({"key": m["key"], "content": m["content"], "cert": cert, "tree": tree})
        for m in ok["messages"]
    ]


@pytest.mark.benchmark(group="fanout-50-messages")
def test_decode_and_frames_core(benchmark: BenchmarkFixture) -> None:
    frames = benchmark(frames_core)
    assert len(frames) == 50
    assert [cbor2.loads(f) for f in frames] == [cbor2.loads(f) for f in frames_generic()]


@pytest.mark.benchmark(group="fanout-50-messages")
def test_decode_and_frames_generic(benchmark: BenchmarkFixture) -> None:
    assert len(benchmark(frames_generic)) == 50


@pytest.mark.benchmark(group="fanout-verify-50-messages")
def test_verify_batch(benchmark: BenchmarkFixture) -> None:
    """One pairing check (a root-signed certificate) plus 50 witness lookups."""
    batch = decode_messages_reply(REPLY)
    benchmark(batch.verify, ROOT_KEY, CANISTER)
