"""`python -m icgw` in front of `python -m icgw.replica` when the IC misbehaves.

Each test runs healthy clients of `icgw.wsclient` beside the trouble and checks that they get every message,
in order (the client checks each certificate and sequence number), while the clients the trouble hits get
the documented close code. The gateway's `/metrics` says what it saw.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from icgw.replica.canister import canister_id_for_index
from icgw.replica.config import random_bls_secret_key
from icgw.wsclient import ConnectionClosedError, encode_app_message

from .processes import free_port
from .stack import CanisterApp, burst, eventually, ping_pong, receive_all, start_gateway, start_replica

pytestmark = pytest.mark.timeout(60)

BAD_GATEWAY = 1014


async def test_unknown_canister_gets_1014_and_other_clients_carry_on(tmp_path: Path) -> None:
    async with start_replica("--canisters", "1") as ic, start_gateway(ic.url, tmp_path) as gw:
        healthy = await gw.open_client(ic.canisters[0])
        conversation = asyncio.create_task(ping_pong(healthy, 30))

        unknown = await gw.connect(canister_id_for_index(7))  # inside the subnet's range, not installed
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(unknown.open(), 20)
        assert closed.value.peer is not None
        assert closed.value.peer.code == BAD_GATEWAY

        await asyncio.wait_for(conversation, 30)
        metrics = await gw.metrics()
        assert metrics.value("icgw_connections_closed_total", reason="canister_refused") == 1
        assert metrics.value("icgw_connections_open") == 1
        assert metrics.value("icgw_messages_relayed_total", direction="to_client") == 2 + 30
        await gw.close_clients()


async def test_slow_replica_delivers_everything_in_order(tmp_path: Path) -> None:
    async with (
        start_replica("--query-delay-ms", "150", "--call-delay-ms", "100") as ic,
        start_gateway(ic.url, tmp_path) as gw,
    ):
        clients = await asyncio.gather(*(gw.open_client(ic.canisters[0]) for _ in range(3)))
        # Client envelopes queue up behind slow calls; canister messages pile up behind slow polls.
        await asyncio.gather(*(burst(client, 10, f"client {i}") for i, client in enumerate(clients)))
        app = CanisterApp(ic.url, ic.canisters[0])
        pushed = [encode_app_message(f"pushed {i}", i) for i in range(60)]  # more than one batch of 50
        assert await app.send(clients[0].principal, pushed) == {"Ok": None}
        received = await receive_all(clients[0], 60)
        assert [message.content for message in received] == pushed
        assert [message.sequence_num for message in received] == list(range(13, 73))

        metrics = await gw.metrics()
        assert metrics.value("icgw_messages_relayed_total", direction="to_client") == 3 * 12 + 60
        assert metrics.value("icgw_poll_latency_seconds_count") > 0
        # No poll waited anywhere near the 5 s poll timeout, and none failed.
        assert metrics.value("icgw_polls_total", outcome="timeout") == 0
        assert metrics.value("icgw_polls_total", outcome="error") == 0
        await gw.close_clients()


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(("--fault-5xx", "0.3"), id="5xx"),
        pytest.param(("--fault-5xx", "0.15", "--fault-drop", "0.1"), id="5xx-and-drop"),
    ],
)
async def test_flaky_replica_still_delivers_everything_in_order(
    tmp_path: Path, faults: tuple[str, ...]
) -> None:
    async with (
        start_replica("--fault-seed", "7", *faults) as ic,
        start_gateway(ic.url, tmp_path) as gw,
    ):
        clients = await asyncio.gather(*(gw.open_client(ic.canisters[0]) for _ in range(3)))
        await asyncio.gather(*(ping_pong(client, 10, f"client {i}") for i, client in enumerate(clients)))
        await asyncio.gather(*(burst(client, 10, f"client {i}") for i, client in enumerate(clients)))
        metrics = await gw.metrics()
        assert metrics.value("icgw_messages_relayed_total", direction="to_client") == 3 * 22
        assert metrics.value("icgw_polls_total", outcome="error") > 0  # the faults did hit the gateway
        assert all(client.is_open for client in clients)
        await gw.close_clients()


async def test_replica_down_and_back(tmp_path: Path) -> None:
    """The replica dies and comes back on the same port with the same root key but none of its state.

    The gateway keeps its clients through the outage (polls fail and back off); the canister that comes
    back has forgotten them, so they hear nothing more, but nothing out of order either. New clients
    work through the same gateway.
    """
    root_key_file = tmp_path / "root_key"
    root_key_file.write_text(random_bls_secret_key().hex())
    replica_args = ("--listen", f"127.0.0.1:{free_port()}", "--root-key-file", str(root_key_file))
    async with start_replica(*replica_args) as ic, start_gateway(ic.url, tmp_path) as gw:
        before = await gw.open_client(ic.canisters[0])
        await ping_pong(before, 3)

        ic.process.kill()
        await asyncio.to_thread(ic.process.wait)
        errors = (await gw.metrics()).value("icgw_polls_total", outcome="error")

        async def polls_fail() -> bool:
            return (await gw.metrics()).value("icgw_polls_total", outcome="error") >= errors + 2

        await eventually(polls_fail)
        assert before.is_open

        async with start_replica(*replica_args) as back:
            assert back.url == ic.url
            assert back.root_key == ic.root_key
            after = await gw.open_client(back.canisters[0])
            await ping_pong(after, 5)
            assert before.is_open
            assert before.error is None
            assert before.next_incoming_sequence_num == 6  # 1 open, 2 ping, 3-5 replies: nothing since
            metrics = await gw.metrics()
            assert metrics.value("icgw_connections_open") == 2
            await gw.close_clients()
