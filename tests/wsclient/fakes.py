"""A scripted gateway on loopback and a canister that numbers and certifies messages like the CDK.

The fake gateway speaks only what the test tells it to: it sends a handshake (or anything else) on
accept, records every frame and CLOSE the client sends, and relays the certified frames the test hands
it. The fake canister builds those frames with a known BLS key (`tests/certified.py`), so the client's
verification runs on real certificates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from icgw.core import (
    candid_encode_values,
    decode_messages_reply,
    encode_handshake,
    encode_websocket_message,
    principal_from_text,
)

from ..certified import CANISTER, GATEWAY_TEXT, build_reply

GATEWAY = principal_from_text(GATEWAY_TEXT)
HANDSHAKE = encode_handshake(GATEWAY)


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


class FakeConnection(WSListener):
    """The gateway's end of one client connection."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.transport: WSTransport | None = None
        self.frames: asyncio.Queue[bytes | str] = asyncio.Queue()
        self.close_received: Close | None = None
        self.disconnected = asyncio.Event()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.gateway.handshake is not None:
            transport.send(WSMsgType.BINARY, self.gateway.handshake)
        self.gateway.connections.put_nowait(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_received = Close(
                frame.get_close_code().value, (frame.get_close_message() or b"").decode()
            )
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.BINARY:
            self.frames.put_nowait(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.TEXT:
            self.frames.put_nowait(frame.get_payload_as_utf8_text())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected.set()

    async def next_frame(self, within: float = 5.0) -> bytes | str:
        return await asyncio.wait_for(self.frames.get(), within)

    async def next_binary(self, within: float = 5.0) -> bytes:
        frame = await self.next_frame(within)
        assert isinstance(frame, bytes), f"expected a binary frame, got text {frame!r}"
        return frame

    def send(self, *frames: bytes) -> None:
        assert self.transport is not None
        for frame in frames:
            self.transport.send(WSMsgType.BINARY, frame)

    def send_fragmented(self, frame: bytes, pieces: int) -> None:
        """One message split over a BINARY frame and CONTINUATION frames."""
        assert self.transport is not None
        size = -(-len(frame) // pieces)
        chunks = [frame[i : i + size] for i in range(0, len(frame), size)]
        for index, chunk in enumerate(chunks):
            msg_type = WSMsgType.BINARY if index == 0 else WSMsgType.CONTINUATION
            self.transport.send(msg_type, chunk, fin=index == len(chunks) - 1)

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, text.encode())

    def close(self, code: int, reason: str) -> None:
        assert self.transport is not None
        self.transport.send_close(WSCloseCode(code), reason.encode())

    async def closed_by_client(self, within: float = 5.0) -> Close:
        """The CLOSE frame the client sent, once the connection is down."""
        await asyncio.wait_for(self.disconnected.wait(), within)
        assert self.close_received is not None, "the client dropped the connection without a CLOSE frame"
        return self.close_received


class FakeGateway:
    def __init__(self, handshake: bytes | None = HANDSHAKE) -> None:
        self.handshake = handshake
        self.connections: asyncio.Queue[FakeConnection] = asyncio.Queue()
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeGateway:
        self._server = await ws_create_server(lambda request: FakeConnection(self), "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def accepted(self, within: float = 5.0) -> FakeConnection:
        return await asyncio.wait_for(self.connections.get(), within)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# --- the canister's side --------------------------------------------------------------------------


def service_content(message: dict[str, object]) -> bytes:
    return candid_encode_values("(WebsocketServiceMessageContent)", [message])


class FakeCanister:
    """Certified frames for one client, with the CDK's sequence numbers and the gateway's key nonces."""

    def __init__(self, client_key: tuple[bytes, int], canister: bytes = CANISTER) -> None:
        self.client_key = client_key
        self.canister = canister
        self.sequence_num = 0
        self.nonce = 0

    def content(self, is_service: bool, payload: bytes, *, sequence_num: int | None = None) -> bytes:
        """A WebsocketMessage; the next sequence number unless one is given (that one is not counted)."""
        if sequence_num is None:
            self.sequence_num += 1
            sequence_num = self.sequence_num
        principal, nonce = self.client_key
        return encode_websocket_message(principal, nonce, sequence_num, time.time_ns(), is_service, payload)

    def open_content(self, client_key: tuple[bytes, int] | None = None) -> bytes:
        principal, nonce = client_key or self.client_key
        key = {"client_principal": principal, "client_nonce": nonce}
        return self.content(True, service_content({"OpenMessage": {"client_key": key}}))

    def ack_content(self, last_incoming_sequence_num: int) -> bytes:
        ack = {"AckMessage": {"last_incoming_sequence_num": last_incoming_sequence_num}}
        return self.content(True, service_content(ack))

    def close_content(self, reason: str) -> bytes:
        return self.content(True, service_content({"CloseMessage": {"reason": {reason: None}}}))

    @staticmethod
    def keep_alive(last_incoming_sequence_num: int) -> bytes:
        """A client's KeepAliveMessage content (a canister never sends one)."""
        message = {"KeepAliveMessage": {"last_incoming_sequence_num": last_incoming_sequence_num}}
        return service_content(message)

    def app_content(self, payload: bytes) -> bytes:
        return self.content(False, payload)

    def frames(self, *contents: bytes, **build: object) -> list[bytes]:
        """One ws_get_messages batch (shared cert and tree) relayed as frames, as the gateway does."""
        reply = build_reply(
            list(contents),
            first_nonce=self.nonce,
            clients=[self.client_key] * len(contents),
            canister=build.pop("canister", self.canister),  # type: ignore[arg-type]
            **build,  # type: ignore[arg-type]
        )
        self.nonce += len(contents)
        return decode_messages_reply(reply).frames()
