"""The load test's parts without locust (which monkey-patches the process it is imported into): the
arrival phases, and the blocking IC WebSocket client against real replica and gateway processes."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from benches.relay.procs import GatewayInfo, ReplicaInfo, start_gateway, start_replica
from loadtests.icws import IcWebSocketSession, fetch_root_key
from loadtests.phases import phases_duration_s, target, total_arrivals

from icgw.core import principal_from_text
from icgw.wsclient import MessageVerifier, ProtocolError

pytestmark = pytest.mark.timeout(60)


def test_the_phases_are_the_reference_arrivals() -> None:
    assert (total_arrivals("artillery"), phases_duration_s("artillery")) == (160, 40)
    assert [target("artillery", t) for t in (0, 4.9, 5.0, 34.9, 35.0, 39.9)] == [
        (5, 1), (5, 1), (155, 5), (155, 5), (160, 1), (160, 1)
    ]  # fmt: skip
    assert target("artillery", 40.0) is None
    assert (total_arrivals("short"), phases_duration_s("short")) == (54, 14)


@pytest.fixture
async def stack() -> AsyncIterator[tuple[ReplicaInfo, GatewayInfo]]:
    """The replica emulator and icgw as processes, as `python -m loadtests` starts them."""
    with tempfile.TemporaryDirectory() as folder:
        replica = await start_replica(Path(folder), [])
        try:
            gateway = await start_gateway("python -m icgw", Path(folder), ic_url=replica.url, polling_ms=20)
            try:
                yield replica, gateway
            finally:
                await gateway.managed.stop()
        finally:
            await replica.managed.stop()


def play(gateway_url: str, canister_id: str, verifier: MessageVerifier | None, rounds: int) -> list[str]:
    session = IcWebSocketSession(gateway_url, canister_id, verifier, timeout_s=10)
    session.open()
    texts = []
    try:
        for k in range(rounds):
            message = session.receive()
            assert message.sequence_num == k + 2  # 1 is the OpenMessage
            texts.append(message.text)
            if k + 1 < rounds:
                session.send_text(message.text + "-pong")
    finally:
        session.close()
    return texts


async def test_a_session_plays_the_reference_ping_pong_verified(
    stack: tuple[ReplicaInfo, GatewayInfo],
) -> None:
    replica, gateway = stack
    root_key = await asyncio.to_thread(fetch_root_key, replica.url)
    assert root_key == replica.root_key
    verifier = MessageVerifier(root_key, principal_from_text(replica.canister_id))
    texts = await asyncio.to_thread(play, gateway.url, replica.canister_id, verifier, 4)
    assert texts == [
        "ping",
        "ping-pong ping",
        "ping-pong ping-pong ping",
        "ping-pong ping-pong ping-pong ping",
    ]
    assert verifier.messages_checked == 5  # the OpenMessage too


async def test_a_refused_session_fails_with_the_gateways_close_code_and_reason(
    stack: tuple[ReplicaInfo, GatewayInfo],
) -> None:
    _, gateway = stack
    with pytest.raises(ProtocolError, match=r"\(1014: the IC refused ws_open"):
        await asyncio.to_thread(play, gateway.url, "aaaaa-aa", None, 1)  # a canister the emulator lacks
