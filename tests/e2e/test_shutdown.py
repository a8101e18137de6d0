"""SIGTERM drains: clients get 1001, the canister gets ws_close for each, the process exits in time."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from icgw.wsclient import ConnectionClosed, encode_app_message

from .stack import CanisterApp, eventually, start_gateway, start_replica

pytestmark = pytest.mark.timeout(60)

GOING_AWAY = 1001


async def test_sigterm_closes_clients_with_1001_and_tells_the_canister(tmp_path: Path) -> None:
    async with start_replica() as ic, start_gateway(ic.url, tmp_path, "--drain-timeout", "5") as gw:
        clients = [await gw.open_client(ic.canisters[0]) for _ in range(3)]
        started = time.monotonic()
        gw.process.process.send_signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.receive(), 10)
            assert client.peer_close is not None
            assert client.peer_close.code == GOING_AWAY
        exit_code = await asyncio.to_thread(gw.process.process.wait, 10)
        assert exit_code == 0
        assert time.monotonic() - started < 5 + 2  # within the drain timeout (plus process teardown)
        app = CanisterApp(ic.url, ic.canisters[0])
        hello = encode_app_message("after shutdown", 0)

        async def all_closed() -> bool:
            results = [await app.send(client.principal, [hello]) for client in clients]
            return all("Err" in result for result in results)  # type: ignore[operator]

        await eventually(all_closed, within=5)
