"""Polls and relayed calls use separate HTTP connection pools: a synchronous call holds its connection until
the canister ran it, so a poll sharing the pool waits behind as many calls as the pool has connections."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from icgw.core import Ed25519Identity, candid_encode_values, sign_envelope
from icgw.gateway.backend import AgentBackend
from icgw.gateway.poller import ws_get_messages_arg
from icgw.ic.agent import IcAgent
from icgw.replica import Replica, ReplicaConfig

pytestmark = pytest.mark.timeout(30)

CALL_DELAY_MS = 1500


@pytest.fixture
async def slow_replica() -> AsyncIterator[Replica]:
    """Calls execute 1.5 s after they arrive, so each holds its HTTP connection that long."""
    replica = Replica(ReplicaConfig(port=0, call_delay_ms=CALL_DELAY_MS))
    await replica.start()
    try:
        yield replica
    finally:
        await replica.stop()


def a_call(canister_id: bytes) -> bytes:
    identity = Ed25519Identity.generate()
    arg = candid_encode_values("(principal, vec blob)", [identity.principal, []])
    content = {
        "request_type": "call",
        "sender": identity.principal,
        "canister_id": canister_id,
        "method_name": "send",
        "arg": arg,
        "ingress_expiry": time.time_ns() + 120 * 10**9,
        "nonce": os.urandom(16),
    }
    return sign_envelope(identity, content)


async def poll_seconds_behind_a_call(replica: Replica, backend: AgentBackend) -> float:
    canister_id = replica.canister_ids[0]
    call = asyncio.create_task(backend.submit_call(canister_id, a_call(canister_id)))
    await asyncio.sleep(0.2)  # the call is on the wire and holds its connection
    started = time.monotonic()
    await backend.query_messages(canister_id, ws_get_messages_arg(0))
    elapsed = time.monotonic() - started
    await call
    return elapsed


async def test_a_poll_does_not_wait_for_relayed_calls(slow_replica: Replica) -> None:
    identity = Ed25519Identity.generate()
    async with (
        IcAgent(slow_replica.url, max_connections=1) as calls,
        IcAgent(slow_replica.url, max_connections=1) as polls,
    ):
        root_key = await calls.root_key()
        own_pool = AgentBackend(
            calls, identity, root_key, certificate_max_age_ns=300 * 10**9, query_agent=polls
        )
        assert await poll_seconds_behind_a_call(slow_replica, own_pool) < CALL_DELAY_MS / 2000

        shared_pool = AgentBackend(calls, identity, root_key, certificate_max_age_ns=300 * 10**9)
        assert await poll_seconds_behind_a_call(slow_replica, shared_pool) > CALL_DELAY_MS / 2000
