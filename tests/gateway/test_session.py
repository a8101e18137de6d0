"""Client sessions over real sockets: handshake, the ws_open check, ordered relay, delivery, bad input."""

from __future__ import annotations

import asyncio

import cbor2
import pytest
from picows import WSMsgType

from icgw.core import decode_websocket_message, encode_handshake

from .harness import OPEN_MESSAGE_PREFIX, Gateway, HarnessSettings, RawClient, relayed_methods


async def opened_client(gateway: Gateway) -> RawClient:
    client = await RawClient.connect(gateway.url)
    await client.handshake()
    client.send_open(gateway.identity.principal)
    first = cbor2.loads(await client.next_frame())
    assert decode_websocket_message(first["content"])["content"] == OPEN_MESSAGE_PREFIX
    return client


async def eventually(condition: object, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_the_handshake_is_the_first_frame() -> None:
    async with Gateway() as gateway:
        client = await RawClient.connect(gateway.url)
        assert await client.next_frame() == encode_handshake(gateway.identity.principal)
        client.close()


async def test_open_relays_ws_open_and_delivers_the_certified_open_message() -> None:
    async with Gateway() as gateway:
        client = await opened_client(gateway)
        assert relayed_methods(gateway.ic) == ["ws_open"]
        client.close()


async def test_messages_are_relayed_in_order_including_those_sent_before_the_open_message() -> None:
    async with Gateway() as gateway:
        gateway.ic.call_delay_s = 0.002  # calls overlap if the relay does not serialise them
        client = await RawClient.connect(gateway.url)
        await client.handshake()
        client.send_open(gateway.identity.principal)
        for i in range(30):
            client.send_message(f"m{i}".encode())
        await eventually(lambda: len(gateway.ic.canister.relayed) == 31)
        sequence = [decode_sequence(envelope) for _, envelope in gateway.ic.canister.relayed[1:]]
        assert sequence == list(range(1, 31))
        client.close()


def decode_sequence(envelope: bytes) -> int:
    from icgw.core import candid_decode_values, cbor_decode

    arg = cbor_decode(envelope)["content"]["arg"]  # type: ignore[index]
    message, _ = candid_decode_values("(CanisterWsMessageArguments, opt AppMessage)", arg)
    return int(message["msg"]["sequence_num"])  # type: ignore[index]


async def test_canister_messages_reach_the_right_client_in_order() -> None:
    async with Gateway() as gateway:
        first = await opened_client(gateway)
        second = await opened_client(gateway)
        for i in range(20):
            gateway.ic.canister.push(first.key, f"a{i}".encode())
            gateway.ic.canister.push(second.key, f"b{i}".encode())
        for client, prefix in ((first, "a"), (second, "b")):
            contents = [
                decode_websocket_message(cbor2.loads(await client.next_frame())["content"]) for _ in range(20)
            ]
            assert [c["content"] for c in contents] == [f"{prefix}{i}".encode() for i in range(20)]
            assert [c["sequence_num"] for c in contents] == list(range(2, 22))
        first.close()
        second.close()


async def test_frames_of_every_size_arrive_byte_exact() -> None:
    # Around picows' 8 KiB threshold between copying a frame and writing it in place, and far above it.
    sizes = [1, 8 * 1024 - 200, 8 * 1024, 8 * 1024 + 200, 300 * 1024]
    async with Gateway() as gateway:
        client = await opened_client(gateway)
        for size in sizes:
            gateway.ic.canister.push(client.key, bytes([size % 251]) * size)
        for size in sizes:
            frame = await client.next_frame()
            assert (
                decode_websocket_message(cbor2.loads(frame)["content"])["content"]
                == bytes([size % 251]) * size
            )
        client.close()


async def test_a_client_that_leaves_is_closed_on_the_canister() -> None:
    async with Gateway() as gateway:
        client = await opened_client(gateway)
        client.close()
        await eventually(lambda: gateway.ic.canister.closed == [client.key])
        assert gateway.hub.sessions == set()


async def test_a_slow_client_is_closed_and_the_others_are_untouched() -> None:
    settings = HarnessSettings(send_buffer_high_water=64 * 1024)
    async with Gateway(settings) as gateway:
        slow = await opened_client(gateway)
        healthy = await opened_client(gateway)
        slow.transport.underlying_transport.pause_reading()  # stops reading: its socket buffers fill up
        big = b"x" * 30_000
        for i in range(200):
            gateway.ic.canister.push(slow.key, big)
            if i % 10 == 0:
                gateway.ic.canister.push(healthy.key, f"h{i}".encode())
        received = [
            decode_websocket_message(cbor2.loads(await healthy.next_frame())["content"]) for _ in range(20)
        ]
        assert [m["content"] for m in received] == [f"h{i}".encode() for i in range(0, 200, 10)]
        await eventually(lambda: gateway.observer.slow_clients == 1)
        healthy.close()


@pytest.mark.parametrize(
    ("send", "code", "reason"),
    [
        (lambda c, g: c.transport.send(WSMsgType.TEXT, b"hello"), 1003, "text frames"),
        (lambda c, g: c.send(b"\xff\x00garbage"), 1007, "invalid frame"),
        (lambda c, g: c.send(cbor2.dumps({"not": "an envelope"})), 1007, "no envelope"),
        (lambda c, g: c.send_open(g.identity.principal, request_type="query"), 1008, "only call"),
        (lambda c, g: c.send_open(g.identity.principal, method_name="ws_message"), 1008, "must be ws_open"),
        (lambda c, g: c.send_open(bytes(28) + b"\x02"), 1008, "names gateway"),
        (lambda c, g: c.send_open(g.identity.principal, arg=b"DIDL\x00\x00"), 1007, "do not decode"),
    ],
    ids=["text", "garbage", "not-envelope", "query", "wrong-method", "wrong-gateway", "bad-arg"],
)
async def test_bad_first_frames_get_a_documented_close_code(send: object, code: int, reason: str) -> None:
    async with Gateway() as gateway:
        bystander = await opened_client(gateway)
        client = await RawClient.connect(gateway.url)
        await client.handshake()
        send(client, gateway)  # type: ignore[operator]
        close_code, close_reason = await client.closed()
        assert close_code == code
        assert reason in close_reason
        assert relayed_methods(gateway.ic) == ["ws_open"]  # only the bystander's
        gateway.ic.canister.push(bystander.key, b"still served")
        message = decode_websocket_message(cbor2.loads(await bystander.next_frame())["content"])
        assert message["content"] == b"still served"
        bystander.close()


async def test_an_oversized_frame_is_refused_with_1009() -> None:
    async with Gateway() as gateway:
        client = await RawClient.connect(gateway.url)
        await client.handshake()
        client.send(b"\x00" * (128 * 1024))
        code, _ = await client.closed()
        assert code == 1009


async def test_a_flood_of_frames_is_cut_off_with_1013() -> None:
    async with Gateway(HarnessSettings(max_client_messages_per_second=20)) as gateway:
        client = await opened_client(gateway)
        for i in range(100):
            client.send_message(f"spam{i}".encode())
        code, reason = await client.closed()
        assert code == 1013
        assert "slow down" in reason


async def test_a_client_that_never_opens_is_timed_out() -> None:
    async with Gateway(HarnessSettings(open_timeout_s=0.2)) as gateway:
        client = await RawClient.connect(gateway.url)
        await client.handshake()
        code, reason = await client.closed()
        assert code == 1008
        assert "ws_open" in reason


async def test_a_refused_ws_open_closes_the_client_with_1014() -> None:
    async with Gateway() as gateway:
        gateway.ic.canister.refuse_open = "Client with key x already has an open connection"
        client = await RawClient.connect(gateway.url)
        await client.handshake()
        client.send_open(gateway.identity.principal)
        code, reason = await client.closed()
        assert code == 1014
        assert "already has an open connection" in reason


async def test_calls_to_another_canister_after_open_are_refused() -> None:
    async with Gateway() as gateway:
        client = await opened_client(gateway)
        client.send(client.frame(client.envelope("ws_message", canister_id=b"\x01")))
        code, reason = await client.closed()
        assert code == 1008
        assert "one canister" in reason


async def test_only_allowed_canisters_are_served() -> None:
    async with Gateway(HarnessSettings(allowed_canisters=(b"\x00\x01",))) as gateway:
        client = await RawClient.connect(gateway.url)
        await client.handshake()
        client.send_open(gateway.identity.principal)
        code, reason = await client.closed()
        assert code == 1008
        assert "not served here" in reason


async def test_connection_limit() -> None:
    async with Gateway(HarnessSettings(max_connections=1)) as gateway:
        first = await opened_client(gateway)
        second = await RawClient.connect(gateway.url)
        code, _ = await second.closed()
        assert code == 1013
        first.close()


async def test_a_replica_that_is_down_keeps_clients_until_it_is_back() -> None:
    async with Gateway() as gateway:
        client = await opened_client(gateway)
        gateway.ic.down = True
        gateway.ic.canister.push(client.key, b"while down")
        await asyncio.sleep(0.3)
        gateway.ic.down = False
        message = decode_websocket_message(cbor2.loads(await client.next_frame(within=10))["content"])
        assert message["content"] == b"while down"
        client.close()


async def test_garbage_from_the_replica_is_not_relayed_and_clients_stay() -> None:
    async with Gateway() as gateway:
        client = await opened_client(gateway)
        gateway.ic.garbage = True
        gateway.ic.canister.push(client.key, b"after garbage")
        await asyncio.sleep(0.2)
        assert client.listener.frames.empty()
        gateway.ic.garbage = False
        message = decode_websocket_message(cbor2.loads(await client.next_frame(within=10))["content"])
        assert message["content"] == b"after garbage"
        client.close()


async def test_a_peer_that_stops_answering_pings_is_dropped_and_a_live_one_is_kept() -> None:
    async with Gateway(idle_timeout_s=0.2) as gateway:
        live = await opened_client(gateway)
        dead = await RawClient.connect(gateway.url, answer_pings=False)
        await dead.handshake()
        await asyncio.wait_for(dead.listener.disconnected.wait(), 5)
        await asyncio.sleep(0.5)  # well past idle + reply timeouts: the live client answered its pings
        assert not live.listener.disconnected.is_set()
        gateway.ic.canister.push(live.key, b"still here")
        message = decode_websocket_message(cbor2.loads(await live.next_frame())["content"])
        assert message["content"] == b"still here"
        live.close()
