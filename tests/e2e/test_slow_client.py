"""A client that stops reading holds up nobody: the poller hands its messages to the socket's buffer and
moves on. (Past `--send-buffer-high-water` the gateway closes it with 1013: tests/wsclient/test_live.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from icgw.wsclient import encode_app_message

from .stack import CanisterApp, eventually, ping_pong, receive_all, start_gateway, start_replica

pytestmark = pytest.mark.timeout(60)

PUSHES = 10
PER_PUSH = 50
SIZE = 20_000  # 10 MB in all: far more than the kernel's socket buffers hold for a client that reads nothing


async def test_a_client_that_stops_reading_does_not_delay_the_others(tmp_path: Path) -> None:
    async with (
        start_replica() as ic,
        start_gateway(ic.url, tmp_path, "--send-buffer-high-water", str(64 * 1024 * 1024)) as gw,
    ):
        slow = await gw.open_client(ic.canisters[0])
        healthy = await gw.open_client(ic.canisters[0])
        slow.pause_reading()
        app = CanisterApp(ic.url, ic.canisters[0])
        pushed = [encode_app_message(f"{i:06d}" + "x" * SIZE, i) for i in range(PUSHES * PER_PUSH)]
        for start in range(0, len(pushed), PER_PUSH):
            assert await app.send(slow.principal, pushed[start : start + PER_PUSH]) == {"Ok": None}

        async def all_handed_to_the_sockets() -> bool:
            metrics = await gw.metrics()
            return metrics.value("icgw_messages_relayed_total", direction="to_client") == 4 + len(pushed)

        # Every message for the stalled client has left the poller (it sits in the socket's buffers) ...
        await eventually(all_handed_to_the_sockets, within=30)
        # ... and the other client of the same canister talks at full speed meanwhile.
        await asyncio.wait_for(ping_pong(healthy, 20), 10)
        metrics = await gw.metrics()
        assert metrics.value("icgw_connections_open") == 2
        assert metrics.value("icgw_slow_client_closes_total") == 0

        slow.resume_reading()  # under the high-water mark nothing was dropped: it all comes, in order
        received = await receive_all(slow, len(pushed))
        assert [message.content for message in received] == pushed
        await gw.close_clients()
