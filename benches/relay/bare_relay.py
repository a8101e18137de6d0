"""The machine's physical limit: a picows relay that does no protocol work.

`python -m benches.relay.bare_relay` listens on loopback and prints `{"event": "ready", "port": P}`. Clients
connect to `/client/<index>`; one backend connects to `/backend` and stands for the IC side:

- downstream, the backend sends batches, each one WebSocket message holding many frames for clients
  (`<u32 client index><u32 length><frame>`, repeated), like a `ws_get_messages` reply holds many
  messages; the relay cuts each batch and sends every frame to its client, as the gateway fans out;
- upstream, every frame a client sends is forwarded to the backend as it is, as the gateway relays
  envelopes.

No decoding, no verification, no HTTP: what is left is the cost of moving the same frames through a
Python picows process on this machine, the ceiling any Python gateway on it works under, and the memory
such a process needs per idle connection. When a client reads too slowly the relay stops reading batches
until it catches up (backpressure, not buffering).

`LimitBackend` is the backend's side, used by the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import time
from collections.abc import Iterator

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_connect, ws_create_server

HEADER = struct.Struct("<II")
# icgw's default --idle-timeout: its keep-alive ping interval.
GATEWAY_IDLE_TIMEOUT_S = 30.0
MAX_FRAME_BYTES = 64 * 1024 * 1024


class Relay:
    def __init__(self) -> None:
        self.clients: dict[int, ClientLink] = {}
        self.backend: BackendLink | None = None
        self._paused_clients = 0

    def listener(self, request: WSUpgradeRequest) -> WSListener | None:
        path = request.path.decode() if isinstance(request.path, bytes) else request.path
        if path == "/backend":
            return BackendLink(self)
        prefix = "/client/"
        if path.startswith(prefix) and path[len(prefix) :].isdigit():
            return ClientLink(self, int(path[len(prefix) :]))
        return None

    def client_paused(self) -> None:
        self._paused_clients += 1
        if self._paused_clients == 1 and self.backend is not None and self.backend.transport is not None:
            self.backend.transport.underlying_transport.pause_reading()

    def client_resumed(self) -> None:
        self._paused_clients -= 1
        if self._paused_clients == 0 and self.backend is not None and self.backend.transport is not None:
            self.backend.transport.underlying_transport.resume_reading()


class ClientLink(WSListener):
    def __init__(self, relay: Relay, index: int) -> None:
        self.relay = relay
        self.index = index
        self.transport: WSTransport | None = None
        self.paused = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.relay.clients[self.index] = self

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            backend = self.relay.backend
            if backend is not None and backend.transport is not None:
                backend.transport.send(WSMsgType.BINARY, frame.get_payload_as_memoryview())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.relay.clients.get(self.index) is self:
            del self.relay.clients[self.index]
        if self.paused:
            self.resume_writing()

    def pause_writing(self) -> None:
        self.paused = True
        self.relay.client_paused()

    def resume_writing(self) -> None:
        if self.paused:
            self.paused = False
            self.relay.client_resumed()


class BackendLink(WSListener):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.relay.backend = self

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            data = frame.get_payload_as_memoryview()
            clients = self.relay.clients
            offset, end = 0, len(data)
            while offset < end:
                index, length = HEADER.unpack_from(data, offset)
                offset += HEADER.size
                client = clients.get(index)
                if client is not None and client.transport is not None:
                    client.transport.send(WSMsgType.BINARY, data[offset : offset + length])
                offset += length
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.relay.backend is self:
            self.relay.backend = None


async def serve() -> None:
    relay = Relay()
    # picows as icgw's gateway sets it up on plain TCP (python/icgw/gateway/app.py), so that the difference
    # to a gateway scenario is the protocol work alone.
    server = await ws_create_server(
        relay.listener,
        "127.0.0.1",
        0,
        max_frame_size=MAX_FRAME_BYTES,
        websocket_handshake_timeout=30,
        enable_auto_ping=True,
        auto_ping_idle_timeout=GATEWAY_IDLE_TIMEOUT_S,
        auto_ping_reply_timeout=GATEWAY_IDLE_TIMEOUT_S,
        read_buffer_init_size=2048,
        use_aiofastnet=False,
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.buffer.write(orjson.dumps({"event": "ready", "port": port}) + b"\n")
    sys.stdout.buffer.flush()
    # Runs until the harness stops it (SIGTERM ends the process).
    await asyncio.Event().wait()


# --- the backend's side (in the harness) ---------------------------------------------------------------


def downstream_batches(clients: int, messages: int, frame_bytes: int, batch: int) -> Iterator[bytes]:
    """Every client's `messages` frames in client-major order (as the canister's queue holds them after
    one `send` per client), cut into batches of `batch` frames."""
    payload = b"\xa5" * frame_bytes
    pieces: list[bytes] = []
    for client in range(clients):
        header = HEADER.pack(client, frame_bytes)
        for _ in range(messages):
            pieces.append(header)
            pieces.append(payload)
            if len(pieces) == 2 * batch:
                yield b"".join(pieces)
                pieces = []
    if pieces:
        yield b"".join(pieces)


class LimitBackend(WSListener):
    """The IC side of the bare relay: sends downstream batches, counts upstream frames."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.received = 0
        self.received_bytes = 0
        self.expected = 0
        self.upstream_done: asyncio.Future[None] | None = None
        self.last_ns = 0
        self._writable = asyncio.Event()
        self._writable.set()

    @classmethod
    async def connect(cls, url: str) -> LimitBackend:
        _, listener = await ws_connect(cls, f"{url}/backend", max_frame_size=MAX_FRAME_BYTES)
        assert isinstance(listener, LimitBackend)
        return listener

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        self.received += 1
        self.received_bytes += frame.payload_size
        if self.received == self.expected and self.upstream_done is not None:
            self.last_ns = time.time_ns()
            if not self.upstream_done.done():
                self.upstream_done.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def expect_upstream(self, frames: int) -> asyncio.Future[None]:
        self.received = self.received_bytes = 0
        self.expected = frames
        self.upstream_done = asyncio.get_running_loop().create_future()
        if frames == 0:
            self.upstream_done.set_result(None)
        return self.upstream_done

    async def send_downstream(self, batches: Iterator[bytes]) -> None:
        transport = self.transport
        assert transport is not None
        for batch in batches:
            if not self._writable.is_set():
                await self._writable.wait()
            transport.send(WSMsgType.BINARY, batch)
            await asyncio.sleep(0)

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.disconnect()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
