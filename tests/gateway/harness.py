"""A gateway hub on a real picows socket in front of a scripted IC, and raw WebSocket clients.

The scripted IC behaves like a CDK canister just enough to drive sessions: a relayed `ws_open` queues the
OpenMessage, the canister can push messages, and `ws_get_messages` answers with replies certified by a
known BLS key (`tests/certified.py`). Clients are plain picows clients, so every byte they send is chosen by
the test.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

from icgw.core import (
    Ed25519Identity,
    MessagesBatch,
    candid_decode_values,
    candid_encode_values,
    cbor_decode,
    cbor_encode,
    encode_websocket_message,
    sign_envelope,
)
from icgw.gateway.hub import Hub
from icgw.gateway.observer import GatewayObserver
from icgw.gateway.poller import ws_get_messages_arg
from icgw.gateway.session import ClientSession

from ..certified import CANISTER, ROOT_KEY, build_reply, empty_reply

OPEN_MESSAGE_PREFIX = b"open:"


@dataclass(frozen=True)
class HarnessSettings:
    max_connections: int = 1000
    max_client_messages_per_second: float = 1000.0
    open_timeout_s: float = 5.0
    send_buffer_high_water: int = 1 << 20
    polling_interval_ms: int = 20
    poll_timeout_ms: int = 2000
    allowed_canisters: tuple[bytes, ...] | None = None


@dataclass
class ScriptedCanister:
    """A CDK-like canister for one gateway: a queue of (client key, content), nonces from 0."""

    queue: list[tuple[tuple[bytes, int], bytes]] = field(default_factory=list)
    seq: dict[tuple[bytes, int], int] = field(default_factory=dict)
    relayed: list[tuple[str, bytes]] = field(default_factory=list)
    closed: list[tuple[bytes, int]] = field(default_factory=list)
    refuse_open: str | None = None

    def push(self, key: tuple[bytes, int], content: bytes) -> None:
        seq = self.seq.get(key, 0) + 1
        self.seq[key] = seq
        self.queue.append(
            (key, encode_websocket_message(key[0], key[1], seq, time.time_ns(), False, content))
        )

    def reply(self, nonce: int, max_messages: int = 50) -> bytes:
        batch = self.queue[nonce : nonce + max_messages]
        if not batch:
            return empty_reply()
        return build_reply(
            [content for _, content in batch],
            first_nonce=nonce,
            clients=[key for key, _ in batch],
            is_end_of_queue=nonce + len(batch) == len(self.queue),
        )


class ScriptedIc:
    """An IcBackend over a ScriptedCanister, with switches for the failure modes of a real IC."""

    def __init__(self) -> None:
        self.canister = ScriptedCanister()
        self.query_delay_s = 0.0
        self.down = False
        self.garbage = False
        self.call_delay_s = 0.0

    async def submit_call(self, canister_id: bytes, envelope: bytes) -> None:
        if self.call_delay_s:
            await asyncio.sleep(self.call_delay_s)
        content = cbor_decode(envelope)["content"]  # type: ignore[index]
        method = content["method_name"]
        self.canister.relayed.append((method, envelope))
        if method == "ws_open":
            if self.canister.refuse_open:
                raise RuntimeError(self.canister.refuse_open)
            (args,) = candid_decode_values("(CanisterWsOpenArguments)", content["arg"])
            assert isinstance(args, dict)
            self.canister.push((content["sender"], args["client_nonce"]), OPEN_MESSAGE_PREFIX)

    async def query_messages(self, canister_id: bytes, arg: bytes) -> bytes:
        from icgw.gateway.poller import TransientPollError

        if self.query_delay_s:
            await asyncio.sleep(self.query_delay_s)
        if self.down:
            raise TransientPollError("connection refused")
        if self.garbage:
            return b"DIDL garbage"
        nonce = int.from_bytes(arg[-8:], "little")
        assert arg == ws_get_messages_arg(nonce)
        return self.canister.reply(nonce)

    async def call_ws_close(self, canister_id: bytes, arg: bytes) -> bytes:
        (args,) = candid_decode_values("(CanisterWsCloseArguments)", arg)
        assert isinstance(args, dict)
        key = args["client_key"]
        self.canister.closed.append((key["client_principal"], key["client_nonce"]))
        return candid_encode_values("(CanisterWsCloseResult)", [{"Ok": None}])

    def verify_batch(self, canister_id: bytes, batch: MessagesBatch) -> None:
        batch.verify(ROOT_KEY, canister_id)


class RecordingObserver(GatewayObserver):
    def __init__(self) -> None:
        self.closed: list[str] = []
        self.slow_clients = 0
        self.relay_failures: list[str] = []

    def connection_closed(self, reason: str) -> None:
        self.closed.append(reason)

    def slow_client_close(self) -> None:
        self.slow_clients += 1

    def relay_failed(self, reason: str) -> None:
        self.relay_failures.append(reason)


class Gateway:
    """A Hub on a real listening socket."""

    def __init__(self, settings: HarnessSettings | None = None, *, idle_timeout_s: float = 0) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.identity = Ed25519Identity.generate()
        self.ic = ScriptedIc()
        self.observer = RecordingObserver()
        self.hub = Hub(settings or HarnessSettings(), self.identity.principal, self.ic, self.observer)
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Gateway:
        hub = self.hub
        self._server = await ws_create_server(
            lambda request: ClientSession(hub, ""),
            "127.0.0.1",
            0,
            max_frame_size=64 * 1024,
            # The same keep-alive settings GatewayRuntime derives from --idle-timeout.
            enable_auto_ping=self.idle_timeout_s > 0,
            auto_ping_idle_timeout=self.idle_timeout_s or 20,
            auto_ping_reply_timeout=self.idle_timeout_s or 20,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.hub.stop_accepting()
        self.hub.close_sessions(self.hub.sessions, WSCloseCode.GOING_AWAY, "test over")
        await self.hub.wait_sessions_closed(2.0)
        await self.hub.drain(2.0)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/"


class ClientListener(WSListener):
    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""
        self.disconnected = asyncio.Event()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            self.close_reason = frame.get_close_message().decode() if frame.get_close_message() else ""
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.BINARY:
            self.frames.put_nowait(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected.set()


class RawClient:
    """A WebSocket client that speaks the protocol only as far as each test wants."""

    def __init__(self, transport: WSTransport, listener: ClientListener) -> None:
        self.transport = transport
        self.listener = listener
        self.identity = Ed25519Identity.generate()
        self.client_nonce = int.from_bytes(os.urandom(8), "little")
        self.seq = 0

    @classmethod
    async def connect(cls, url: str, *, answer_pings: bool = True) -> RawClient:
        transport, listener = await ws_connect(ClientListener, url, enable_auto_pong=answer_pings)
        assert isinstance(listener, ClientListener)
        return cls(transport, listener)

    @property
    def key(self) -> tuple[bytes, int]:
        return (self.identity.principal, self.client_nonce)

    async def next_frame(self, within: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.listener.frames.get(), within)

    async def handshake(self) -> bytes:
        frame = cbor_decode(await self.next_frame())
        assert isinstance(frame, dict)
        principal = frame["gateway_principal"]
        assert isinstance(principal, bytes)
        return principal

    def envelope(self, method: str, **overrides: object) -> bytes:
        content: dict[str, object] = {
            "request_type": "call",
            "canister_id": CANISTER,
            "method_name": method,
            "arg": b"DIDL\x00\x00",
            "sender": self.identity.principal,
            "ingress_expiry": time.time_ns() + 240 * 10**9,
            "nonce": os.urandom(16),
        }
        content.update(overrides)
        return sign_envelope(self.identity, content)

    def frame(self, envelope: bytes) -> bytes:
        return cbor_encode({"envelope": cbor_decode(envelope)})

    def send(self, data: bytes) -> None:
        self.transport.send(WSMsgType.BINARY, data)

    def send_open(self, gateway_principal: bytes, **overrides: object) -> None:
        arg = candid_encode_values(
            "(CanisterWsOpenArguments)",
            [{"client_nonce": self.client_nonce, "gateway_principal": gateway_principal}],
        )
        overrides.setdefault("arg", arg)
        self.send(self.frame(self.envelope("ws_open", **overrides)))

    def send_message(self, content: bytes) -> int:
        self.seq += 1
        message = {
            "client_key": {"client_principal": self.identity.principal, "client_nonce": self.client_nonce},
            "sequence_num": self.seq,
            "timestamp": time.time_ns(),
            "is_service_message": False,
            "content": content,
        }
        arg = candid_encode_values("(CanisterWsMessageArguments, opt AppMessage)", [{"msg": message}, None])
        self.send(self.frame(self.envelope("ws_message", arg=arg)))
        return self.seq

    async def closed(self, within: float = 5.0) -> tuple[int | None, str]:
        await asyncio.wait_for(self.listener.disconnected.wait(), within)
        return self.listener.close_code, self.listener.close_reason

    def close(self) -> None:
        self.transport.send_close(WSCloseCode.OK)
        self.transport.disconnect()


def relayed_methods(ic: ScriptedIc) -> list[str]:
    return [method for method, _ in ic.canister.relayed]
