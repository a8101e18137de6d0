"""The gateway never relays what the IC did not certify, and keeps serving the other canisters' clients.

Between `python -m icgw` and `python -m icgw.replica` (two canisters) sits a proxy that tampers with the
`ws_get_messages` answers of the first canister only (`tampering_proxy.py`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from icgw.core import Ed25519Identity, principal_from_text
from icgw.wsclient import ConnectionClosedError, OpenTimeoutError

from .processes import ReplicaProcess
from .stack import Gateway, ping_pong, start_gateway, start_replica
from .tampering_proxy import Tampering, TamperingProxy, tampering_proxy

pytestmark = pytest.mark.timeout(60)


@dataclass
class Setup:
    ic: ReplicaProcess
    proxy: TamperingProxy
    gw: Gateway

    @property
    def victim_canister(self) -> str:
        return self.ic.canisters[0]

    @property
    def healthy_canister(self) -> str:
        return self.ic.canisters[1]


@asynccontextmanager
async def behind_a_tampering_proxy(tmp_path: Path) -> AsyncIterator[Setup]:
    node_secret = secrets.token_bytes(32)
    node_key_file = tmp_path / "node_key"
    node_key_file.write_text(node_secret.hex())
    async with start_replica("--canisters", "2", "--node-key-file", str(node_key_file)) as ic:
        victim = principal_from_text(ic.canisters[0])
        async with (
            tampering_proxy(ic.url, Ed25519Identity.from_secret_key(node_secret), {victim}) as proxy,
            start_gateway(proxy.url, tmp_path) as gw,
        ):
            # Clients fetch the root key from the replica itself, not through the proxy.
            gw.ic_url = ic.url
            yield Setup(ic, proxy, gw)
            await gw.close_clients()


async def test_a_forged_certificate_is_never_relayed(tmp_path: Path) -> None:
    async with behind_a_tampering_proxy(tmp_path) as setup:
        gw, proxy = setup.gw, setup.proxy
        healthy = await gw.open_client(setup.healthy_canister)
        conversation = asyncio.create_task(ping_pong(healthy, 20))

        victim = await gw.connect(setup.victim_canister, open_timeout_s=3)
        with pytest.raises(OpenTimeoutError):  # its OpenMessage only ever came with a forged certificate
            await victim.open()
        await asyncio.wait_for(conversation, 30)

        assert proxy.tampered > 0
        metrics = await gw.metrics()
        assert metrics.value("icgw_certificate_failures_total") >= proxy.tampered
        assert metrics.value("icgw_messages_relayed_total", direction="to_client") == 2 + 20  # all healthy's

        # Once the answers are genuine again, the gateway relays them (it kept asking, with back-off).
        proxy.mode = Tampering.NONE
        later = await gw.open_client(setup.victim_canister)
        await ping_pong(later, 3)


async def test_garbage_from_the_ic_closes_that_canisters_clients_with_1014(tmp_path: Path) -> None:
    async with behind_a_tampering_proxy(tmp_path) as setup:
        gw, proxy = setup.gw, setup.proxy
        proxy.mode = Tampering.GARBAGE
        healthy = await gw.open_client(setup.healthy_canister)
        conversation = asyncio.create_task(ping_pong(healthy, 20))

        victim = await gw.connect(setup.victim_canister)
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(victim.open(), 20)
        assert closed.value.peer is not None
        assert closed.value.peer.code == 1014
        await asyncio.wait_for(conversation, 30)

        metrics = await gw.metrics()
        assert metrics.value("icgw_connections_closed_total", reason="canister_refused") == 1
        assert metrics.value("icgw_messages_relayed_total", direction="to_client") == 2 + 20
        assert metrics.value("icgw_connections_open") == 1
