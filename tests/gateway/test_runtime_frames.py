"""The gateway runtime's own sockets (not the test harness's): frames far larger than their small initial
buffers go both ways, through the replica emulator and its ping-pong test canister."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from icgw.config import GatewayConfig, SocketAddress
from icgw.gateway.app import GatewayRuntime
from icgw.replica import Replica, ReplicaConfig
from icgw.wsclient import IcWebSocketClient

pytestmark = pytest.mark.timeout(60)


async def test_large_frames_cross_the_runtime_both_ways(tmp_path: Path) -> None:
    replica = Replica(ReplicaConfig(port=0))
    await replica.start()
    gateway = GatewayRuntime(
        GatewayConfig(
            gateway_address=SocketAddress("127.0.0.1", 0),
            ic_network_url=replica.url,
            polling_interval_ms=10,
            prometheus_endpoint=None,
            data_dir=tmp_path,
        )
    )
    try:
        await gateway.start()
        client = await IcWebSocketClient.connect(
            f"ws://127.0.0.1:{gateway.port}", replica.canister_ids[0], ic_url=replica.url
        )
        await asyncio.wait_for(client.open(), 10)
        ping = await asyncio.wait_for(client.receive(), 10)
        assert ping.app_message is not None
        for size in (100, 3_000, 300_000):
            text = "y" * size
            await client.send_app_message(text)
            reply = await asyncio.wait_for(client.receive(), 10)
            assert reply.app_message is not None
            assert reply.app_message["text"] == text + " ping"
        await client.close()
    finally:
        await gateway.stop()
        await replica.stop()
