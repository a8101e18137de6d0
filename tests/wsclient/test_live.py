"""IcWebSocketClient end to end: the real gateway, the replica emulator and its test canister, on loopback.

The test canister (the reference gateway's) sends "ping" when a client opens and answers every message
with its text + " ping"; its `send` and `close` methods let a test act as the canister's application.
Canister time stands still (the replica's manual clock) and moves only through the replica's admin
endpoint, which fires the CDK's timers that fall due: the ack tick and the keep-alive check happen at
exact canister times, whatever the latency of the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from icgw.config import GatewayConfig, SocketAddress
from icgw.core import (
    Ed25519Identity,
    bls_der_public_key,
    bls_public_key,
    candid_decode_values,
    candid_encode_values,
)
from icgw.gateway.app import GatewayRuntime
from icgw.ic.agent import IcAgent
from icgw.replica import Replica, ReplicaConfig
from icgw.replica.canister import canister_id_for_index
from icgw.replica.clock import ManualClock
from icgw.wsclient import (
    CLOSE_BY_APPLICATION,
    ConnectionClosedError,
    ConnectionClosedOK,
    IcWebSocketClient,
    MessageVerifier,
    ReceivedMessage,
    VerificationError,
    encode_app_message,
    fetch_root_key,
)

pytestmark = pytest.mark.timeout(60)

# The CDK's smallest ack interval (it must exceed the 60 s keep-alive timeout).
ACK_INTERVAL_MS = 60_001
KEEP_ALIVE_TIMEOUT_MS = 60_000
_RESULT = "(variant { Ok : null; Err : text })"


@dataclass
class Stack:
    replica: Replica
    gateway: GatewayRuntime
    agent: IcAgent
    http: aiohttp.ClientSession
    canister_id: bytes

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}"

    async def connect(self, **options: Any) -> IcWebSocketClient:
        options.setdefault("ic_url", self.replica.url)
        options.setdefault("ack_interval_ms", ACK_INTERVAL_MS)
        return await IcWebSocketClient.connect(self.gateway_url, self.canister_id, **options)

    async def open_client(self, **options: Any) -> IcWebSocketClient:
        """A client past its OpenMessage and the test canister's "ping"."""
        client = await self.connect(**options)
        await asyncio.wait_for(client.open(), 10)
        ping = await asyncio.wait_for(client.receive(), 10)
        assert ping.app_message is not None
        assert ping.app_message["text"] == "ping"
        return client

    async def call(self, method: str, types: str, values: list[object]) -> object:
        """Call a method of the test canister (it has no access control) and decode its result."""
        reply = await self.agent.call(
            Ed25519Identity.generate(), self.canister_id, method, candid_encode_values(types, values)
        )
        (result,) = candid_decode_values(_RESULT, reply)
        return result

    async def send(self, client_principal: bytes, messages: list[bytes]) -> object:
        return await self.call("send", "(principal, vec blob)", [client_principal, messages])

    async def close(self, client_principal: bytes) -> object:
        return await self.call("close", "(principal)", [client_principal])

    async def advance_ms(self, milliseconds: int) -> None:
        """Move canister time forward; the CDK's timers that fall due fire."""
        url = f"{self.replica.url}/_admin/advance_time"
        async with self.http.post(url, json={"ms": milliseconds}) as response:
            assert response.status == 200, await response.text()


@contextlib.asynccontextmanager
async def running_stack(data_dir: Path, **gateway_options: Any) -> AsyncIterator[Stack]:
    """A replica with one test canister and a gateway polling it every 10 ms, both on loopback."""
    config = ReplicaConfig(port=0, ack_interval_ms=ACK_INTERVAL_MS, allow_admin=True)
    replica = Replica(config, clock=ManualClock())
    await replica.start()
    gateway = GatewayRuntime(
        GatewayConfig(
            gateway_address=SocketAddress("127.0.0.1", 0),
            ic_network_url=replica.url,
            polling_interval_ms=10,
            prometheus_endpoint=None,
            data_dir=data_dir,
            **gateway_options,
        )
    )
    try:
        await gateway.start()
        async with IcAgent(replica.url) as agent, aiohttp.ClientSession() as http:
            yield Stack(replica, gateway, agent, http, replica.canister_ids[0])
    finally:
        await gateway.stop()
        await replica.stop()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as stack:
        yield stack


async def until(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "the condition did not become true in time"
        await asyncio.sleep(0.02)


async def test_open_and_ping_pong(stack: Stack) -> None:
    client = await stack.open_client()
    assert client.gateway_principal == stack.gateway.principal
    for round_ in range(10):
        await client.send_app_message(f"hello {round_}")
        reply = await asyncio.wait_for(client.receive(), 10)
        assert reply.app_message is not None
        assert reply.app_message["text"] == f"hello {round_} ping"
        assert reply.sequence_num == round_ + 3  # 1 = OpenMessage, 2 = "ping"
    await client.close()


async def test_canister_messages_arrive_in_order(stack: Stack) -> None:
    client = await stack.open_client()
    messages = [encode_app_message(f"message {i}", i) for i in range(60)]  # more than one 50-message batch
    assert await stack.send(client.principal, messages) == {"Ok": None}
    received = [await asyncio.wait_for(client.receive(), 10) for _ in messages]
    assert [m.content for m in received] == messages
    assert [m.sequence_num for m in received] == list(range(3, 63))
    await client.close()


async def test_close_by_client_closes_on_the_canister(stack: Stack) -> None:
    client = await stack.open_client()
    principal = client.principal
    await client.close()
    assert client.local_close is not None
    assert client.local_close.code == 1000

    async def canister_forgot_the_client() -> bool:
        result = await stack.send(principal, [encode_app_message("anyone there?", 0)])
        assert isinstance(result, dict)
        return "Err" in result

    await until(canister_forgot_the_client)  # the gateway called ws_close


async def test_close_by_canister_is_closed_by_application(stack: Stack) -> None:
    client = await stack.open_client()
    assert await stack.close(client.principal) == {"Ok": None}
    assert [message async for message in client] == []  # iteration ends: a normal close
    assert client.close_message_reason == "ClosedByApplication"
    assert client.local_close is not None
    assert (client.local_close.code, client.local_close.reason) == (
        CLOSE_BY_APPLICATION,
        "ClosedByApplication",
    )
    with pytest.raises(ConnectionClosedOK):
        await client.receive()


async def test_acks_are_answered_and_silent_clients_time_out(stack: Stack) -> None:
    alive = await stack.open_client()
    silent = await stack.open_client(keep_alive=False)
    await alive.send_app_message("before the ack")
    assert (await asyncio.wait_for(alive.receive(), 10)).sequence_num == 3

    await stack.advance_ms(ACK_INTERVAL_MS)  # the ack tick
    await until(lambda: _true(alive.keep_alives_sent == 1 and silent.acks_received == 1))
    assert alive.last_ack == 1  # the canister had accepted the client's message 1
    assert silent.last_ack == 0
    # The keep-alive (sequence number 2) is relayed before this message (3), so once this message is
    # answered the canister has registered the keep-alive.
    await alive.send_app_message("after the ack")
    reply = await asyncio.wait_for(alive.receive(), 10)
    assert reply.app_message is not None
    assert reply.app_message["text"] == "after the ack ping"

    await stack.advance_ms(KEEP_ALIVE_TIMEOUT_MS)  # the keep-alive check
    with pytest.raises(ConnectionClosedError) as closed:
        await asyncio.wait_for(silent.receive(), 10)
    assert closed.value.close_message_reason == "KeepAliveTimeout"
    assert closed.value.local is not None
    assert (closed.value.local.code, closed.value.local.reason) == (
        4000,
        "Received close message from canister",
    )

    assert alive.is_open, (alive.error, alive.local_close, alive.peer_close, alive.close_message_reason)
    await alive.send_app_message("still here")
    reply = await asyncio.wait_for(alive.receive(), 10)
    assert reply.app_message is not None
    assert reply.app_message["text"] == "still here ping"
    await alive.close()


async def test_messages_under_another_root_key_are_refused(stack: Stack) -> None:
    other_root_key = bls_der_public_key(bls_public_key(bytes(31) + b"\x09"))
    client = await stack.connect(root_key=other_root_key)
    with pytest.raises(ConnectionClosedError) as closed:
        await asyncio.wait_for(client.open(), 10)
    assert isinstance(closed.value.__cause__, VerificationError)
    assert closed.value.local is not None
    assert (closed.value.local.code, closed.value.local.reason) == (4000, "Error receiving message")


async def test_ws_open_naming_another_gateway_is_refused_by_the_gateway(stack: Stack) -> None:
    client = await stack.connect(send_ws_open=False)
    client.send_ws_open(gateway_principal=Ed25519Identity.generate().principal)
    with pytest.raises(ConnectionClosedError) as closed:
        await asyncio.wait_for(client.open(), 10)
    assert closed.value.peer is not None
    assert closed.value.peer.code == 1008


async def test_many_clients_share_one_verifier(stack: Stack) -> None:
    """The load generator's setup: one verifier for every client of a canister, callbacks, no queues."""
    verifier = MessageVerifier(await fetch_root_key(stack.replica.url), stack.canister_id)
    received: dict[bytes, list[int]] = {}

    def on_message(principal: bytes) -> Callable[[ReceivedMessage], None]:
        return lambda message: received[principal].append(message.sequence_num)

    identities = [Ed25519Identity.generate() for _ in range(50)]
    for identity in identities:
        received[identity.principal] = []
    clients = await asyncio.gather(
        *(
            stack.connect(identity=identity, verifier=verifier, on_message=on_message(identity.principal))
            for identity in identities
        )
    )
    await asyncio.wait_for(asyncio.gather(*(client.open() for client in clients)), 20)
    for client in clients:
        client.send_nowait(encode_app_message("hello", 0))
    await until(lambda: _true(all(seqs == [2, 3] for seqs in received.values())), within=20)
    # Each poll's batch is checked once for all the clients it carries messages for.
    assert verifier.messages_checked == 150
    assert verifier.certificate_checks < 150
    await asyncio.gather(*(client.close() for client in clients))


async def test_wrong_sequence_number_makes_the_canister_close_the_client(stack: Stack) -> None:
    client = await stack.open_client()
    client.send_ws_message(encode_app_message("skipping ahead", 0), sequence_num=2)
    with pytest.raises(ConnectionClosedError) as closed:
        await asyncio.wait_for(client.receive(), 10)
    assert closed.value.close_message_reason == "WrongSequenceNumber"
    assert closed.value.local is not None
    assert closed.value.local.code == 4000


async def test_text_frame_is_refused_by_the_gateway(stack: Stack) -> None:
    client = await stack.open_client()
    client.send_text("hello")
    with pytest.raises(ConnectionClosedError) as closed:
        await asyncio.wait_for(client.receive(), 10)
    assert closed.value.peer is not None
    assert closed.value.peer.code == 1003


async def test_a_client_that_stops_reading_is_closed_as_slow(tmp_path: Path) -> None:
    async with running_stack(tmp_path, send_buffer_high_water=64 * 1024) as stack:
        client = await stack.open_client()
        client.pause_reading()
        registry = stack.gateway.metrics.registry

        def slow_client_closes() -> float:
            return registry.get_sample_value("icgw_slow_client_closes_total") or 0.0

        # Enough to fill the kernel's socket buffers (several MiB on loopback) and then the gateway's.
        for _ in range(20):
            assert await stack.send(client.principal, [b"x" * 60_000] * 10) == {"Ok": None}
            await asyncio.sleep(0.1)
            if slow_client_closes():
                break
        assert slow_client_closes() == 1
        client.resume_reading()
        # The messages that were buffered, then the gateway's CLOSE.
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(drain(client), 30)
        assert closed.value.peer is not None
        assert closed.value.peer.code == 1013


async def drain(client: IcWebSocketClient) -> None:
    async for _ in client:
        pass


async def _true(value: bool) -> bool:
    return value


async def test_gateway_with_its_embedded_replica(tmp_path: Path) -> None:
    """`python -m icgw --embedded-replica`: the gateway starts the emulator at its own IC URL (port 0)."""
    gateway = GatewayRuntime(
        GatewayConfig(
            gateway_address=SocketAddress("127.0.0.1", 0),
            ic_network_url="http://127.0.0.1:0",
            polling_interval_ms=10,
            prometheus_endpoint=None,
            data_dir=tmp_path,
            embedded_replica=True,
        )
    )
    await gateway.start()
    try:
        client = await IcWebSocketClient.connect(
            f"ws://127.0.0.1:{gateway.port}", canister_id_for_index(0), ic_url=gateway.ic_url
        )
        await asyncio.wait_for(client.open(), 10)
        ping = await asyncio.wait_for(client.receive(), 10)
        assert ping.app_message is not None
        assert ping.app_message["text"] == "ping"
        await client.send_app_message("pong")
        reply = await asyncio.wait_for(client.receive(), 10)
        assert reply.app_message is not None
        assert reply.app_message["text"] == "pong ping"
        await client.close()
    finally:
        await gateway.stop()
