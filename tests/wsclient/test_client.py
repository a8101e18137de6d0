"""IcWebSocketClient against a scripted gateway on loopback: the SDK's session, checks and close codes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from icgw.core import (
    Ed25519Identity,
    candid_decode_values,
    cbor_decode,
    cbor_encode,
    decode_client_frame,
    encode_handshake,
    verify_envelope,
)
from icgw.wsclient import (
    CLOSE_BY_APPLICATION,
    ClientState,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    IcWebSocketClient,
    MessageVerifier,
    NotOpenError,
    OpenTimeoutError,
    ProtocolError,
    ReceivedMessage,
    VerificationError,
    encode_app_message,
)

from ..certified import CANISTER, GATEWAY_TEXT, ROOT_KEY
from .fakes import GATEWAY, FakeCanister, FakeConnection, FakeGateway

pytestmark = pytest.mark.timeout(30)

NS_PER_MINUTE = 60 * 10**9


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gateway = await FakeGateway().start()
    yield gateway
    await gateway.stop()


async def connect(gateway: FakeGateway, **options: object) -> tuple[IcWebSocketClient, FakeConnection]:
    options.setdefault("root_key", ROOT_KEY)
    client = await IcWebSocketClient.connect(gateway.url, CANISTER, **options)  # type: ignore[arg-type]
    return client, await gateway.accepted()


async def opened(
    gateway: FakeGateway, **options: object
) -> tuple[IcWebSocketClient, FakeConnection, FakeCanister]:
    """A client past the OpenMessage, and the canister that talks to it."""
    client, conn = await connect(gateway, **options)
    await conn.next_binary()  # ws_open
    canister = FakeCanister(client.client_key)
    conn.send(*canister.frames(canister.open_content()))
    await asyncio.wait_for(client.open(), 5)
    return client, conn, canister


def ws_message_args(frame: bytes) -> dict[str, object]:
    decoded = decode_client_frame(frame)
    assert decoded.method_name == "ws_message"
    args, second = candid_decode_values("(CanisterWsMessageArguments, opt null)", decoded.arg)
    assert second is None
    assert isinstance(args, dict)
    message = args["msg"]
    assert isinstance(message, dict)
    return message


# --- opening -------------------------------------------------------------------------------------------


async def test_ws_open_is_the_sdks_signed_call(gateway: FakeGateway) -> None:
    identity = Ed25519Identity.generate()
    before = time.time_ns()
    client, conn = await connect(gateway, identity=identity, client_nonce=385892949151814926)
    frame = await conn.next_binary()
    assert frame.startswith(b"\xd9\xd9\xf7")  # tagged like @dfinity/agent's Cbor.encode
    decoded = decode_client_frame(frame)
    assert decoded.request_type == "call"
    assert decoded.method_name == "ws_open"
    assert decoded.canister_id == CANISTER
    assert decoded.sender == identity.principal
    assert decoded.nonce is not None
    assert len(decoded.nonce) == 16
    verify_envelope(decoded.envelope, time.time_ns())
    (args,) = candid_decode_values("(CanisterWsOpenArguments)", decoded.arg)
    assert args == {"client_nonce": 385892949151814926, "gateway_principal": GATEWAY}
    # now + 5 min - 60 s drift, rounded down to the minute.
    assert decoded.ingress_expiry % NS_PER_MINUTE == 0
    assert before + 3 * NS_PER_MINUTE < decoded.ingress_expiry <= time.time_ns() + 4 * NS_PER_MINUTE
    assert client.gateway_principal == GATEWAY
    assert client.state is ClientState.OPENING
    await client.close()


async def test_open_resolves_on_the_verified_open_message(gateway: FakeGateway) -> None:
    client, _, _ = await opened(gateway)
    assert client.is_open
    assert client.next_incoming_sequence_num == 2
    await client.close()


async def test_open_message_for_another_client_key_closes_with_service_message_error(
    gateway: FakeGateway,
) -> None:
    client, conn = await connect(gateway)
    await conn.next_binary()
    canister = FakeCanister(client.client_key)
    conn.send(*canister.frames(canister.open_content((client.principal, client.client_nonce + 1))))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.open()
    assert isinstance(closed.value.__cause__, ProtocolError)
    assert "Client key does not match" in str(closed.value.__cause__)
    assert (await conn.closed_by_client()).__dict__ == {"code": 4000, "reason": "Service message error"}


async def test_send_before_open_is_refused(gateway: FakeGateway) -> None:
    client, conn = await connect(gateway)
    with pytest.raises(NotOpenError, match="Connection is not established yet"):
        await client.send(encode_app_message("too early", 1))
    await conn.next_binary()  # ws_open only
    assert conn.frames.empty()
    await client.close()


async def test_open_timeout_closes_with_4000(gateway: FakeGateway) -> None:
    client, conn = await connect(gateway, open_timeout_s=0.2)
    with pytest.raises(OpenTimeoutError):
        await client.open()
    close = await conn.closed_by_client()
    assert (close.code, close.reason) == (4000, "Open connection timeout")


async def test_no_ws_open_without_asking(gateway: FakeGateway) -> None:
    client, conn = await connect(gateway, send_ws_open=False)
    with pytest.raises(asyncio.TimeoutError):
        await conn.next_frame(within=0.2)
    client.send_ws_open(gateway_principal=bytes(29))
    (args,) = candid_decode_values(
        "(CanisterWsOpenArguments)", decode_client_frame(await conn.next_binary()).arg
    )
    assert args["gateway_principal"] == bytes(29)  # type: ignore[index]
    await client.close()


@pytest.mark.parametrize(
    "handshake",
    [
        cbor_encode({"gateway_principal": "sqdfl-mr4km-2hfjy-gajqo-xqvh7-hf4mf-nra4i-3it6l-neaw4-soolw-tae"}),
        cbor_encode({"gateway_principal": b""}),
        cbor_encode({"gateway": GATEWAY}),
        cbor_encode([GATEWAY]),
        b"\xff not cbor",
    ],
    ids=["text-principal", "empty-bytes", "missing-field", "not-a-map", "not-cbor"],
)
async def test_invalid_handshake_is_refused(handshake: bytes) -> None:
    gateway = await FakeGateway(handshake=handshake).start()
    try:
        with pytest.raises(HandshakeError, match="GatewayHandshakeMessage"):
            await IcWebSocketClient.connect(gateway.url, CANISTER, root_key=ROOT_KEY)
        conn = await gateway.accepted()
        close = await conn.closed_by_client()
        assert (close.code, close.reason) == (4000, "Error receiving message")
        assert conn.frames.empty()  # no ws_open after a bad handshake
    finally:
        await gateway.stop()


async def test_no_handshake_times_out() -> None:
    gateway = await FakeGateway(handshake=None).start()
    try:
        with pytest.raises(HandshakeError, match="no handshake"):
            await IcWebSocketClient.connect(
                gateway.url, CANISTER, root_key=ROOT_KEY, handshake_timeout_s=0.2, close_timeout_s=0.2
            )
    finally:
        await gateway.stop()


async def test_gateway_close_before_open_is_reported(gateway: FakeGateway) -> None:
    client, conn = await connect(gateway)
    conn.close(1008, "ws_open names another gateway")
    with pytest.raises(ConnectionClosedError) as closed:
        await client.open()
    assert closed.value.peer is not None
    assert (closed.value.peer.code, closed.value.peer.reason) == (1008, "ws_open names another gateway")
    assert closed.value.local is None
    await client.wait_closed()
    assert client.closed


# --- messages in both directions ---------------------------------------------------------------------


async def test_application_messages_arrive_in_order(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    payloads = [encode_app_message(f"m{i}", i) for i in range(5)]
    conn.send(*canister.frames(*(canister.app_content(p) for p in payloads[:2])))
    conn.send(*canister.frames(*(canister.app_content(p) for p in payloads[2:])))
    received = [await asyncio.wait_for(client.receive(), 5) for _ in payloads]
    assert [m.sequence_num for m in received] == [2, 3, 4, 5, 6]
    assert [m.content for m in received] == payloads
    assert [m.app_message for m in received] == [{"text": f"m{i}", "timestamp": i} for i in range(5)]
    assert [m.key for m in received] == [f"{GATEWAY_TEXT}_{nonce:020d}" for nonce in range(1, 6)]
    await client.close()


async def test_fragmented_messages_are_reassembled(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    payload = encode_app_message("in pieces", 1)
    (frame,) = canister.frames(canister.app_content(payload))
    conn.send_fragmented(frame, 3)
    assert (await asyncio.wait_for(client.receive(), 5)).content == payload
    await client.close()


async def test_send_is_the_sdks_ws_message(gateway: FakeGateway) -> None:
    client, conn, _ = await opened(gateway)
    assert await client.send_app_message("hi", 42) == 1
    assert await client.send(b"DIDL\x00\x00") == 2
    first, second = ws_message_args(await conn.next_binary()), ws_message_args(await conn.next_binary())
    assert first["client_key"] == {"client_principal": client.principal, "client_nonce": client.client_nonce}
    assert (first["sequence_num"], first["is_service_message"]) == (1, False)
    assert first["content"] == encode_app_message("hi", 42)
    assert isinstance(first["timestamp"], int)
    assert first["timestamp"] % 1_000_000 == 0
    assert abs(first["timestamp"] - time.time_ns()) < 10 * 10**9
    assert (second["sequence_num"], second["content"]) == (2, b"DIDL\x00\x00")
    assert client.pending_acks == [1, 2]
    await client.close()


async def test_wrong_sequence_number_closes_with_4000(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    canister.sequence_num += 1  # the canister skips sequence number 2
    conn.send(*canister.frames(canister.app_content(b"DIDL\x00\x00")))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.receive()
    assert "Expected: 2, received: 3" in str(closed.value.__cause__)
    close = await conn.closed_by_client()
    assert (close.code, close.reason) == (4000, "Error receiving message")


async def test_text_frame_from_the_gateway_closes_with_4000(gateway: FakeGateway) -> None:
    client, conn, _ = await opened(gateway)
    conn.send_text("hello")
    with pytest.raises(ConnectionClosedError):
        await client.receive()
    assert (await conn.closed_by_client()).code == 4000


async def test_frame_that_is_not_a_client_incoming_message_closes(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    (frame,) = canister.frames(canister.app_content(b"DIDL\x00\x00"))
    fields = cbor_decode(frame)
    assert isinstance(fields, dict)
    conn.send(cbor_encode({**fields, "cert": b""}))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.receive()
    assert "not a ClientIncomingMessage" in str(closed.value.__cause__)
    assert (await conn.closed_by_client()).reason == "Error receiving message"


async def test_on_message_callback_replaces_the_queue(gateway: FakeGateway) -> None:
    seen: list[ReceivedMessage] = []
    client, conn, canister = await opened(gateway, on_message=seen.append)
    conn.send(*canister.frames(canister.app_content(b"DIDL\x00\x00"), canister.app_content(b"DIDL\x00\x01")))
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    assert [m.sequence_num for m in seen] == [2, 3]
    await client.close()


async def test_failing_on_message_callback_closes_and_is_kept(gateway: FakeGateway) -> None:
    def explode(message: ReceivedMessage) -> None:
        raise LookupError("application bug")

    client, conn, canister = await opened(gateway, on_message=explode)
    conn.send(*canister.frames(canister.app_content(b"DIDL\x00\x00")))
    close = await conn.closed_by_client()
    assert (close.code, close.reason) == (4000, "Error receiving message")
    assert isinstance(client.error, LookupError)


async def test_pause_reading_holds_messages_back(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    client.pause_reading()
    conn.send(*canister.frames(canister.app_content(b"DIDL\x00\x00")))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.receive(), 0.3)
    client.resume_reading()
    assert (await asyncio.wait_for(client.receive(), 5)).sequence_num == 2
    await client.close()


# --- certification -----------------------------------------------------------------------------------


async def test_tampered_content_is_rejected(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    genuine = canister.app_content(encode_app_message("genuine", 1))
    forged = canister.app_content(encode_app_message("forged", 1))
    canister.sequence_num -= 1
    conn.send(*canister.frames(genuine, tamper=forged))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.receive()
    assert isinstance(closed.value.__cause__, VerificationError)
    close = await conn.closed_by_client()
    assert (close.code, close.reason) == (4000, "Error receiving message")


async def test_message_certified_for_another_canister_is_rejected(gateway: FakeGateway) -> None:
    client, conn = await connect(gateway)
    await conn.next_binary()
    canister = FakeCanister(client.client_key, canister=bytes.fromhex("00000000000000020101"))
    conn.send(*canister.frames(canister.open_content()))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.open()
    assert "Could not find certified data for this canister" in str(closed.value.__cause__)


async def test_message_under_another_root_key_is_rejected(gateway: FakeGateway) -> None:
    from icgw.core import bls_der_public_key, bls_public_key

    other_root = bls_der_public_key(bls_public_key(bytes(31) + b"\x07"))
    client, conn = await connect(gateway, root_key=other_root)
    await conn.next_binary()
    canister = FakeCanister(client.client_key)
    conn.send(*canister.frames(canister.open_content()))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.open()
    assert isinstance(closed.value.__cause__, VerificationError)


async def test_stale_certificate_is_rejected(gateway: FakeGateway) -> None:
    client, conn = await connect(gateway)
    await conn.next_binary()
    canister = FakeCanister(client.client_key)
    conn.send(*canister.frames(canister.open_content(), time_ns=time.time_ns() - 6 * NS_PER_MINUTE))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.open()
    assert isinstance(closed.value.__cause__, VerificationError)


async def test_verify_false_accepts_what_it_cannot_check(gateway: FakeGateway) -> None:
    client, conn = await connect(gateway, verify=False, root_key=None)
    await conn.next_binary()
    canister = FakeCanister(client.client_key, canister=bytes.fromhex("00000000000000020101"))
    conn.send(*canister.frames(canister.open_content()))
    await asyncio.wait_for(client.open(), 5)
    await client.close()


async def test_a_batch_certificate_is_checked_once(gateway: FakeGateway) -> None:
    verifier = MessageVerifier(ROOT_KEY, CANISTER)
    client, conn, canister = await opened(gateway, verifier=verifier)
    conn.send(*canister.frames(*(canister.app_content(b"DIDL\x00\x00") for _ in range(10))))
    for _ in range(10):
        await asyncio.wait_for(client.receive(), 5)
    assert verifier.messages_checked == 11
    assert verifier.certificate_checks == 2  # the open batch and the batch of ten
    await client.close()


# --- service messages --------------------------------------------------------------------------------


async def test_ack_is_answered_with_a_keep_alive(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    await client.send(b"DIDL\x00\x00")
    await conn.next_binary()
    conn.send(*canister.frames(canister.ack_content(1)))  # sequence number 2
    keep_alive = ws_message_args(await conn.next_binary())
    assert (keep_alive["sequence_num"], keep_alive["is_service_message"]) == (2, True)
    (content,) = candid_decode_values("(WebsocketServiceMessageContent)", keep_alive["content"])  # type: ignore[arg-type]
    assert content == {"KeepAliveMessage": {"last_incoming_sequence_num": 2}}
    assert (client.acks_received, client.last_ack, client.keep_alives_sent) == (1, 1, 1)
    assert client.pending_acks == [2]  # the keep-alive waits for the next ack
    await client.close()


async def test_keep_alive_can_be_switched_off(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway, keep_alive=False)
    conn.send(*canister.frames(canister.ack_content(0)))
    with pytest.raises(asyncio.TimeoutError):
        await conn.next_frame(within=0.3)
    assert client.acks_received == 1
    await client.close()


async def test_ack_of_a_message_never_sent_closes_with_ack_message_error(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    await client.send(b"DIDL\x00\x00")
    await conn.next_binary()
    conn.send(*canister.frames(canister.ack_content(5)))
    with pytest.raises(ConnectionClosedError):
        await client.receive()
    close = await conn.closed_by_client()
    assert (close.code, close.reason) == (4000, "Ack message error")


async def test_close_message_closed_by_application_is_a_normal_close(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    conn.send(
        *canister.frames(canister.app_content(b"DIDL\x00\x00"), canister.close_content("ClosedByApplication"))
    )
    received = [message async for message in client]  # ends without an error
    assert [m.sequence_num for m in received] == [2]
    assert client.close_message_reason == "ClosedByApplication"
    close = await conn.closed_by_client()
    assert (close.code, close.reason) == (CLOSE_BY_APPLICATION, "ClosedByApplication")
    with pytest.raises(ConnectionClosedOK) as closed:
        await client.receive()
    assert closed.value.code == 4001


async def test_close_message_keep_alive_timeout_is_an_error(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    conn.send(*canister.frames(canister.close_content("KeepAliveTimeout")))
    with pytest.raises(ConnectionClosedError) as closed:
        await client.receive()
    assert closed.value.close_message_reason == "KeepAliveTimeout"
    close = await conn.closed_by_client()
    assert (close.code, close.reason) == (4000, "Received close message from canister")


async def test_keep_alive_message_from_the_canister_is_a_service_message_error(gateway: FakeGateway) -> None:
    client, conn, canister = await opened(gateway)
    keep_alive = canister.content(True, FakeCanister.keep_alive(0))
    conn.send(*canister.frames(keep_alive))
    with pytest.raises(ConnectionClosedError):
        await client.receive()
    assert (await conn.closed_by_client()).reason == "Service message error"


# --- closing and low-level hooks ---------------------------------------------------------------------


async def test_close_by_client_sends_1000(gateway: FakeGateway) -> None:
    client, conn, _ = await opened(gateway)
    await client.close()
    assert client.closed
    assert (await conn.closed_by_client()).code == 1000
    with pytest.raises(ConnectionClosedOK):
        await client.receive()
    assert [m async for m in client] == []


async def test_explicit_sequence_numbers_and_keys_change_no_counter(gateway: FakeGateway) -> None:
    client, conn, _ = await opened(gateway)
    other_key = (bytes(29), 1)
    assert client.send_ws_message(b"DIDL\x00\x00", sequence_num=7, client_key=other_key) == 7
    message = ws_message_args(await conn.next_binary())
    assert message["sequence_num"] == 7
    assert message["client_key"] == {"client_principal": bytes(29), "client_nonce": 1}
    assert client.last_outgoing_sequence_num == 0
    assert client.pending_acks == []
    await client.close()


async def test_raw_text_and_envelope_hooks(gateway: FakeGateway) -> None:
    client, conn, _ = await opened(gateway)
    client.send_raw(b"\x01\x02")
    client.send_text("not cbor")
    impostor = Ed25519Identity.generate()
    client.send_call("ws_close", b"DIDL\x00\x00", identity=impostor)
    assert await conn.next_frame() == b"\x01\x02"
    assert await conn.next_frame() == "not cbor"
    decoded = decode_client_frame(await conn.next_binary())
    assert (decoded.method_name, decoded.sender) == ("ws_close", impostor.principal)
    await client.close()


async def test_handshake_for_another_gateway_is_kept() -> None:
    other = bytes(range(29))
    gateway = await FakeGateway(handshake=encode_handshake(other)).start()
    try:
        client = await IcWebSocketClient.connect(gateway.url, CANISTER, root_key=ROOT_KEY)
        assert client.gateway_principal == other
        await client.close()
    finally:
        await gateway.stop()
