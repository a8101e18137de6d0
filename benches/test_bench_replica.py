"""The emulator's in-process cost of one `ws_get_messages`: the CDK's range of the gateway's queue, the
witness of those keys, the data certificate of the round and the Candid reply, without HTTP (the
process benchmark `python -m benches.replica_bench` measures the same query through the HTTP server).

The queue holds 60 messages; a poll from nonce 2 returns 50 of them, a poll past the end none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from icgw.core import Ed25519Identity, decode_messages_reply
from icgw.replica import Replica, ReplicaConfig
from icgw.replica.canister import Canister
from icgw.replica.clock import ManualClock
from icgw.replica.interfaces import Reply
from icgw.replica.test_canister import TestCanisterCalls, encode_app_message

QUEUED = 60
POLLED_FROM = 2  # after the OpenMessage and the test canister's "ping"


@dataclass
class HostedQueue:
    replica: Replica
    canister: Canister
    gateway: bytes


@pytest.fixture(scope="module", params=["rust", "motoko"])
def hosted_queue(request: pytest.FixtureRequest) -> Iterator[HostedQueue]:
    """A replica (manual clock) whose test canister queued QUEUED messages for one gateway, certified."""
    loop = asyncio.new_event_loop()
    replica = Replica(ReplicaConfig(port=0, flavor=request.param), clock=ManualClock())
    loop.run_until_complete(replica.start())
    try:
        canister = replica.canisters[replica.canister_ids[0]]
        assert isinstance(canister, Canister)
        gateway, client = Ed25519Identity.generate().principal, Ed25519Identity.generate().principal
        for call, caller in [
            (TestCanisterCalls.ws_open(1, gateway), client),
            (
                TestCanisterCalls.send(client, [encode_app_message(f"m{i}", 0) for i in range(QUEUED - 2)]),
                client,
            ),
        ]:
            assert isinstance(canister.handle_update(call.method, call.arg, caller), Reply)
        # Queries run on certified state: let the replica certify the changes first.
        pending = replica.when_clean(lambda: None)
        if isinstance(pending, asyncio.Future):
            loop.run_until_complete(pending)
        yield HostedQueue(replica, canister, gateway)
    finally:
        loop.run_until_complete(replica.stop())
        loop.close()


@pytest.mark.parametrize("messages", [50, 0])
@pytest.mark.benchmark(group="replica-ws-get-messages")
def test_ws_get_messages(benchmark: BenchmarkFixture, hosted_queue: HostedQueue, messages: int) -> None:
    poll = TestCanisterCalls.ws_get_messages(POLLED_FROM if messages else QUEUED)
    replica, canister, gateway = hosted_queue.replica, hosted_queue.canister, hosted_queue.gateway
    outcome = benchmark(replica.run_query, canister, poll.method, poll.arg, gateway)
    assert isinstance(outcome, Reply)
    batch = decode_messages_reply(outcome.arg)
    assert len(batch) == messages
    if messages:
        batch.verify(replica.root_key_der, canister.canister_id)
    benchmark.extra_info["flavor"] = canister.cdk.flavor
    benchmark.extra_info["reply_bytes"] = len(outcome.arg)
