"""`IcWebSocketClient`: a client of the IC WebSocket protocol over picows, doing what `ic-websocket-js` does.

Session (PROTOCOL.md §4, §9): the gateway sends its handshake; the client signs a `ws_open` call and
sends it; the canister's certified OpenMessage (sequence number 1, the client's own key) opens the
connection. From then on the client signs one `ws_message` call per application message and
receives the canister's messages in order, each verified against the IC's certificate. AckMessages
are answered with a KeepAlive; a CloseMessage closes the socket like the SDK does (4001 for
ClosedByApplication, 4000 for everything else, §4.6).

Three users shape the design:

- users talking to IC WebSocket canisters: `connect`, `open`, `send`, `receive`/`async for`, `close`;
- the gateway's integration tests, which must control every step: `send_ws_open=False`,
  `send_raw`/`send_text`/`send_envelope`/`send_ws_message` (wrong keys, wrong sequence numbers, other
  gateways), `pause_reading` (a slow client), `keep_alive=False`, and the close codes and reasons of
  both sides;
- the relay benchmark's load generator, which runs thousands of clients in one process: frames are
  handled in picows' callback without tasks or per-message futures, `on_message` skips the queue,
  and one `MessageVerifier` can be shared so each batch certificate is checked once for all clients.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from icgw.core import (
    CoreError,
    Ed25519Identity,
    decode_websocket_message,
    principal_from_text,
    sign_envelope,
)
from icgw.ic.agent import IcAgent

from .acks import ACK_LATENCY_ALLOWANCE_MS, AckTracker
from .errors import (
    AckTimeoutError,
    CloseInfo,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    NotOpenError,
    OpenTimeoutError,
    ProtocolError,
    WsClientError,
)
from .messages import (
    ClientKey,
    call_content,
    decode_app_message,
    decode_service_message,
    encode_app_message,
    envelope_frame,
    keep_alive_content,
    parse_handshake,
    parse_incoming_frame,
    sdk_timestamp,
    signed_call_frame,
    ws_message_arg,
    ws_open_arg,
)
from .verify import DEFAULT_MAX_CERTIFICATE_AGE_NS, MessageVerifier

log = logging.getLogger(__name__)

# The SDK's defaults (PROTOCOL.md §8).
DEFAULT_ACK_INTERVAL_MS = 300_000
DEFAULT_OPEN_TIMEOUT_S = 60.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
# How long a close waits for the gateway's answering CLOSE frame before dropping the connection.
DEFAULT_CLOSE_TIMEOUT_S = 5.0
# A certified message is at most the IC's 2 MiB response plus its certificate and witness.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024

# Close codes the SDK uses (PROTOCOL.md §4.6).
CLOSE_NORMAL = 1000
CLOSE_ERROR = 4000
CLOSE_BY_APPLICATION = 4001

_NORMAL_CLOSE_CODES = frozenset({1000, 1001, CLOSE_BY_APPLICATION})
_U64_LIMIT = 1 << 64


class ClientState(enum.Enum):
    HANDSHAKE = "handshake"  # TCP and WebSocket up, waiting for the gateway's handshake
    OPENING = "opening"  # handshake received; ws_open sent (or to be sent by the test), no OpenMessage yet
    OPEN = "open"  # the canister's OpenMessage arrived: application messages may be sent
    CLOSING = "closing"  # a CLOSE frame was sent or received
    CLOSED = "closed"  # the TCP connection is gone


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """An application message from the canister, verified and in order."""

    sequence_num: int
    timestamp: int  # canister time when the message was queued, ns since 1970
    content: bytes  # the application's Candid value
    key: str  # the certified key `<gateway principal>_<nonce>`

    @property
    def app_message(self) -> dict[str, Any] | None:
        """The content decoded as the test canister's `AppMessage {text; timestamp}`, or None.
        Decoded on each access: a load generator that never looks pays nothing."""
        return decode_app_message(self.content)


async def fetch_root_key(ic_url: str) -> bytes:
    """The root key for `ic_url`: the pinned mainnet key for mainnet URLs, else the key the replica
    publishes in `/api/v2/status` (as the SDK does for a local network)."""
    async with IcAgent(ic_url) as agent:
        return await agent.root_key()


class _Listener(WSListener):
    """picows' callbacks, forwarded to the client that owns the connection."""

    def __init__(self, client: IcWebSocketClient) -> None:
        self.client = client

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.client._on_connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.client._on_frame(frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client._on_disconnected()

    def pause_writing(self) -> None:
        self.client._writing_paused = True

    def resume_writing(self) -> None:
        self.client._on_writing_resumed()


class IcWebSocketClient:
    """One IC WebSocket connection. Create it with `await IcWebSocketClient.connect(...)`."""

    def __init__(
        self,
        canister_id: bytes,
        identity: Ed25519Identity,
        verifier: MessageVerifier | None,
        *,
        client_nonce: int | None = None,
        ack_interval_ms: int = DEFAULT_ACK_INTERVAL_MS,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        keep_alive: bool = True,
        on_message: Callable[[ReceivedMessage], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if verifier is not None and verifier.canister_id != canister_id:
            raise ValueError("the verifier checks messages of another canister")
        nonce = secrets.randbits(64) if client_nonce is None else client_nonce
        if not 0 <= nonce < _U64_LIMIT:
            raise ValueError("client_nonce must be a u64")
        self.canister_id = canister_id
        self.identity = identity
        self.principal = identity.principal
        self.client_nonce = nonce
        self.client_key: ClientKey = (self.principal, nonce)
        self.verifier = verifier
        self.keep_alive = keep_alive
        self.gateway_principal: bytes | None = None
        self.state = ClientState.HANDSHAKE
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        self._on_message = on_message
        self._open_timeout_s = open_timeout_s
        self._close_timeout_s = close_timeout_s
        self._transport: WSTransport | None = None
        self._fragments: bytearray | None = None
        # Sequence numbers: the next one expected from the canister, the last one sent to it.
        self._incoming_sequence_num = 1
        self._outgoing_sequence_num = 0
        self._acks = AckTracker(
            (ack_interval_ms + ACK_LATENCY_ALLOWANCE_MS) / 1000, self._on_ack_timeout, self._loop
        )
        self._messages: deque[ReceivedMessage] = deque()
        self._receive_waiter: asyncio.Future[None] | None = None
        self._handshake_waiter: asyncio.Future[bool] = self._loop.create_future()
        self._open_waiter: asyncio.Future[bool] = self._loop.create_future()
        self._closed_waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._open_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # How the connection ended: the CLOSE frames of each side, the canister's CloseMessage reason,
        # and the error that made this client close (None for a close asked by its user).
        self.local_close: CloseInfo | None = None
        self.peer_close: CloseInfo | None = None
        self.close_message_reason: str | None = None
        self.error: BaseException | None = None
        # Counters for tests and benchmarks.
        self.acks_received = 0
        self.last_ack: int | None = None
        self.keep_alives_sent = 0

    # --- connecting ---------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        gateway_url: str,
        canister_id: bytes | str,
        *,
        identity: Ed25519Identity | None = None,
        root_key: bytes | None = None,
        ic_url: str | None = None,
        verify: bool = True,
        max_certificate_age_ns: int | None = DEFAULT_MAX_CERTIFICATE_AGE_NS,
        ack_interval_ms: int = DEFAULT_ACK_INTERVAL_MS,
        verifier: MessageVerifier | None = None,
        client_nonce: int | None = None,
        send_ws_open: bool = True,
        keep_alive: bool = True,
        on_message: Callable[[ReceivedMessage], None] | None = None,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> IcWebSocketClient:
        """Open a WebSocket to the gateway, read its handshake and (unless `send_ws_open=False`) send the
        signed ws_open call. `await client.open()` then waits for the canister's OpenMessage.

        Messages are verified against `root_key` (DER), else the key of `ic_url` (the mainnet key for a
        mainnet URL, else fetched from its /api/v2/status), unless `verify=False`. A `verifier` given
        here is used instead (share one between the clients of a canister). `identity` defaults to a
        fresh Ed25519 identity, `client_nonce` to a random u64. `ack_interval_ms` must equal the
        canister's `send_ack_interval_ms`, as in the SDK.
        """
        canister = principal_from_text(canister_id) if isinstance(canister_id, str) else canister_id
        if verifier is None and verify:
            if root_key is None:
                if ic_url is None:
                    raise ValueError("verifying messages needs root_key or ic_url (or verify=False)")
                root_key = await fetch_root_key(ic_url)
            verifier = MessageVerifier(
                root_key, canister, max_certificate_age_ns=max_certificate_age_ns, clock=clock
            )
        client = cls(
            canister,
            identity if identity is not None else Ed25519Identity.generate(),
            verifier,
            client_nonce=client_nonce,
            ack_interval_ms=ack_interval_ms,
            open_timeout_s=open_timeout_s,
            close_timeout_s=close_timeout_s,
            keep_alive=keep_alive,
            on_message=on_message,
            clock=clock,
        )
        try:
            await ws_connect(
                lambda: _Listener(client),
                gateway_url,
                ssl_context=ssl_context,
                websocket_handshake_timeout=handshake_timeout_s,
                max_frame_size=max_frame_size,
            )
        except (OSError, WSError, TimeoutError) as error:
            raise WsClientError(f"cannot connect to {gateway_url}: {error}") from error
        await client._wait_for_handshake(handshake_timeout_s)
        if send_ws_open:
            client.send_ws_open()
        return client

    async def _wait_for_handshake(self, timeout_s: float) -> None:
        try:
            received = await asyncio.wait_for(asyncio.shield(self._handshake_waiter), timeout_s)
        except TimeoutError:
            error = HandshakeError(f"no handshake from the gateway within {timeout_s} s")
            self._fail(error, CLOSE_ERROR, "Handshake timeout")
            await self.wait_closed()
            raise error from None
        if not received:
            if isinstance(self.error, HandshakeError):
                await self.wait_closed()
                raise self.error
            raise HandshakeError("the connection closed before the gateway's handshake") from self._closed()

    async def open(self) -> None:
        """Wait for the canister's OpenMessage. OpenTimeoutError if it did not come within the open
        timeout (the client then closed with 4000), ConnectionClosed if the connection ended first."""
        if await asyncio.shield(self._open_waiter):
            return
        if isinstance(self.error, OpenTimeoutError):
            raise self.error
        raise self._closed()

    # --- properties ---------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is ClientState.OPEN

    @property
    def closed(self) -> bool:
        return self.state is ClientState.CLOSED

    @property
    def next_incoming_sequence_num(self) -> int:
        """The sequence number the next canister message must carry."""
        return self._incoming_sequence_num

    @property
    def last_outgoing_sequence_num(self) -> int:
        """The sequence number of the last ws_message sent (0 before the first)."""
        return self._outgoing_sequence_num

    @property
    def pending_acks(self) -> list[int]:
        """Sequence numbers sent and not acknowledged by the canister yet."""
        return self._acks.pending

    @property
    def transport(self) -> WSTransport:
        """The picows transport, for tests that need the raw socket."""
        assert self._transport is not None, "not connected"
        return self._transport

    # --- sending ------------------------------------------------------------------------------------

    async def send(self, app_content: bytes) -> int:
        """Send an application message (Candid bytes) as the next `ws_message`; returns its sequence
        number. Waits while the socket's write buffer is above its high-water mark."""
        sequence_num = self.send_nowait(app_content)
        if self._writing_paused:
            await self._drain()
        return sequence_num

    def send_nowait(self, app_content: bytes) -> int:
        """`send` without waiting for the write buffer to drain (for load generators)."""
        if self.state is not ClientState.OPEN:
            if self.state in (ClientState.CLOSING, ClientState.CLOSED):
                raise self._closed()
            raise NotOpenError("Connection is not established yet")
        return self.send_ws_message(app_content)

    async def send_app_message(self, text: str, timestamp: int | None = None) -> int:
        """Send the test canister's `AppMessage {text; timestamp}` (timestamp defaults to now, in ns)."""
        return await self.send(encode_app_message(text, self._clock() if timestamp is None else timestamp))

    def send_ws_open(
        self, *, client_nonce: int | None = None, gateway_principal: bytes | None = None
    ) -> None:
        """Send the signed ws_open call and start the open timeout. The arguments default to this
        client's nonce and the gateway principal of the handshake (tests may name others)."""
        gateway = gateway_principal if gateway_principal is not None else self.gateway_principal
        if gateway is None:
            raise WsClientError("no handshake yet: the gateway principal is unknown")
        arg = ws_open_arg(self.client_nonce if client_nonce is None else client_nonce, gateway)
        self.send_call("ws_open", arg)
        if self._open_timer is None and self.state is ClientState.OPENING:
            self._open_timer = self._loop.call_later(self._open_timeout_s, self._on_open_timeout)

    def send_ws_message(
        self,
        content: bytes,
        *,
        is_service_message: bool = False,
        sequence_num: int | None = None,
        client_key: ClientKey | None = None,
        timestamp: int | None = None,
    ) -> int:
        """Send a `ws_message` call with any content, in any state; returns its sequence number.

        Without `sequence_num` the next one is used and the message waits for the canister's ack, as
        in the SDK; an explicit `sequence_num` (to test the canister's checks) changes no counter.
        """
        if self.state in (ClientState.CLOSING, ClientState.CLOSED):
            raise self._closed()
        tracked = sequence_num is None
        if sequence_num is None:
            self._outgoing_sequence_num += 1
            sequence_num = self._outgoing_sequence_num
        arg = ws_message_arg(
            self.client_key if client_key is None else client_key,
            sequence_num,
            sdk_timestamp(self._clock()) if timestamp is None else timestamp,
            is_service_message,
            content,
        )
        self.send_call("ws_message", arg)
        if tracked:
            try:
                self._acks.add(sequence_num)
            except ProtocolError as error:
                self._fail(error, CLOSE_ERROR, "Message sending failed")
                raise self._closed() from error
        return sequence_num

    def send_call(
        self,
        method_name: str,
        arg: bytes,
        *,
        canister_id: bytes | None = None,
        identity: Ed25519Identity | None = None,
    ) -> None:
        """Sign an IC call to `method_name` and send it in a client frame."""
        signer = self.identity if identity is None else identity
        content = call_content(
            self.canister_id if canister_id is None else canister_id,
            signer.principal,
            method_name,
            arg,
            self._clock(),
        )
        self.send_raw(signed_call_frame(signer, content))

    def send_envelope(
        self, content: Mapping[str, object], *, identity: Ed25519Identity | None = None
    ) -> None:
        """Sign any envelope content (it may lie about its sender, canister or method) and send it."""
        self.send_raw(envelope_frame(sign_envelope(self.identity if identity is None else identity, content)))

    def send_raw(self, data: bytes) -> None:
        """Send `data` as one binary frame, as it is."""
        self.transport.send(WSMsgType.BINARY, data)

    def send_text(self, text: str) -> None:
        """Send a text frame (the protocol allows none: for tests of the gateway's refusal)."""
        self.transport.send(WSMsgType.TEXT, text.encode())

    async def _drain(self) -> None:
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    def _on_writing_resumed(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _send_keep_alive(self) -> None:
        content = keep_alive_content(self._incoming_sequence_num - 1)
        self.send_ws_message(content, is_service_message=True)
        self.keep_alives_sent += 1

    # --- receiving ----------------------------------------------------------------------------------

    async def receive(self) -> ReceivedMessage:
        """The next application message. ConnectionClosed once the connection is closed and every
        message received before has been taken."""
        while True:
            if self._messages:
                return self._messages.popleft()
            if self.state in (ClientState.CLOSING, ClientState.CLOSED):
                raise self._closed()
            if self._receive_waiter is not None:
                raise RuntimeError("another coroutine is already waiting in receive()")
            waiter = self._receive_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._receive_waiter = None

    def __aiter__(self) -> IcWebSocketClient:
        return self

    async def __anext__(self) -> ReceivedMessage:
        """Messages until a normal close; an abnormal close raises ConnectionClosedError."""
        try:
            return await self.receive()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    def pause_reading(self) -> None:
        """Stop reading from the socket: the gateway's messages pile up in its buffers (a slow client)."""
        self.transport.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.underlying_transport.resume_reading()

    # --- closing ------------------------------------------------------------------------------------

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the connection (the SDK's `close()` sends 1000) and wait until it is down."""
        if self.state not in (ClientState.CLOSING, ClientState.CLOSED):
            self._close(code, reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is gone."""
        await asyncio.shield(self._closed_waiter)

    async def __aenter__(self) -> IcWebSocketClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _closed(self) -> ConnectionClosed:
        """The exception that describes how the connection ended, chained from the client's error."""
        first = self.local_close or self.peer_close
        normal = self.error is None and first is not None and first.code in _NORMAL_CLOSE_CODES
        kind = ConnectionClosedOK if normal else ConnectionClosedError
        closed = kind(self.local_close, self.peer_close, self.close_message_reason)
        closed.__cause__ = self.error
        return closed

    def _fail(self, error: BaseException, code: int, reason: str) -> None:
        """Close because of `error`, with the code and reason the SDK uses for it."""
        if self.error is None:
            self.error = error
        log.debug("closing the connection (%d %s): %s", code, reason, error)
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        """Send a CLOSE frame (once) and stop processing; the connection drops when the gateway answers
        with its CLOSE frame, or after the close timeout."""
        if self.state in (ClientState.CLOSING, ClientState.CLOSED):
            return
        self.state = ClientState.CLOSING
        self.local_close = CloseInfo(code, reason)
        self._stop_timers()
        self._wake_waiters()
        transport = self._transport
        if transport is None:
            return
        transport.send_close(WSCloseCode(code), reason.encode()[:123])
        if self.peer_close is not None:
            transport.disconnect()
        else:
            self._close_timer = self._loop.call_later(self._close_timeout_s, transport.disconnect)

    def _stop_timers(self) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        self._acks.clear()

    def _wake_waiters(self) -> None:
        """Tell everyone waiting that the connection is going down."""
        for waiter in (self._handshake_waiter, self._open_waiter):
            if not waiter.done():
                waiter.set_result(False)
        receiver = self._receive_waiter
        if receiver is not None and not receiver.done():
            receiver.set_result(None)

    def _on_open_timeout(self) -> None:
        self._open_timer = None
        if self.state is ClientState.OPENING:
            self._fail(
                OpenTimeoutError("Open timeout expired before receiving the open message"),
                CLOSE_ERROR,
                "Open connection timeout",
            )

    def _on_ack_timeout(self) -> None:
        pending = self._acks.pending
        self._fail(
            AckTimeoutError(f"Ack message timeout. Not received ack for sequence numbers: {pending}"),
            CLOSE_ERROR,
            "Ack message timeout",
        )

    # --- picows callbacks ---------------------------------------------------------------------------

    def _on_connected(self, transport: WSTransport) -> None:
        self._transport = transport

    def _on_disconnected(self) -> None:
        self.state = ClientState.CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._stop_timers()
        self._wake_waiters()
        self._wake_drain()
        if not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    def _on_frame(self, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.BINARY:
            if frame.fin:
                self._on_binary(frame.get_payload_as_bytes())
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
        elif msg_type == WSMsgType.CONTINUATION and self._fragments is not None:
            self._fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                data, self._fragments = bytes(self._fragments), None
                self._on_binary(data)
        elif msg_type == WSMsgType.CLOSE:
            self._on_peer_close(frame.get_close_code().value, frame.get_close_message())
        elif msg_type == WSMsgType.TEXT or msg_type == WSMsgType.CONTINUATION:
            # The SDK cannot CBOR-decode a text frame (§4.4).
            self._fail(ProtocolError("a text frame from the gateway"), CLOSE_ERROR, "Error receiving message")
        # PING is answered by picows; PONG needs nothing.

    def _on_peer_close(self, code: int, message: bytes | None) -> None:
        self.peer_close = CloseInfo(code, (message or b"").decode(errors="replace"))
        transport = self._transport
        assert transport is not None
        if self.state not in (ClientState.CLOSING, ClientState.CLOSED):
            self.state = ClientState.CLOSING
            self._stop_timers()
            self._wake_waiters()
            transport.send_close(WSCloseCode(code) if code else WSCloseCode.OK)  # the close handshake
        transport.disconnect()

    def _on_binary(self, data: bytes) -> None:
        state = self.state
        if state is ClientState.HANDSHAKE:
            self._on_handshake(data)
        elif state is ClientState.OPENING or state is ClientState.OPEN:
            try:
                self._on_canister_message(data)
            except ProtocolError as error:
                self._fail(error, CLOSE_ERROR, "Error receiving message")
        # CLOSING: the SDK stops processing once it closes.

    def _on_handshake(self, data: bytes) -> None:
        try:
            self.gateway_principal = parse_handshake(data)
        except HandshakeError as error:
            self._fail(error, CLOSE_ERROR, "Error receiving message")
            return
        self.state = ClientState.OPENING
        self._handshake_waiter.set_result(True)

    def _on_canister_message(self, data: bytes) -> None:
        """One relayed message, checked in the SDK's order (§4.5): shape, content, certification,
        sequence number, then dispatch."""
        frame = parse_incoming_frame(data)
        try:
            message = decode_websocket_message(frame.content)
        except CoreError as error:
            raise ProtocolError(f"the content is not a WebsocketMessage: {error}") from error
        if self.verifier is not None:
            self.verifier.verify(frame.key, frame.content, frame.cert, frame.tree)
        sequence_num = message["sequence_num"]
        if sequence_num != self._incoming_sequence_num:
            raise ProtocolError(
                "Received message sequence number does not match next expected value. "
                f"Expected: {self._incoming_sequence_num}, received: {sequence_num}"
            )
        self._incoming_sequence_num += 1
        if message["is_service_message"]:
            self._on_service_message(message["content"])
            return
        received = ReceivedMessage(sequence_num, message["timestamp"], message["content"], frame.key)
        if self._on_message is not None:
            try:
                self._on_message(received)
            except Exception as error:
                # The callback runs inside picows' frame handler: an escaping exception would drop the
                # connection with no trace of why. Close like the SDK and keep the error instead.
                log.exception("on_message failed; closing the connection")
                self._fail(error, CLOSE_ERROR, "Error receiving message")
            return
        self._messages.append(received)
        receiver = self._receive_waiter
        if receiver is not None and not receiver.done():
            receiver.set_result(None)

    def _on_service_message(self, content: bytes) -> None:
        try:
            service = decode_service_message(content)
        except ProtocolError as error:
            self._fail(error, CLOSE_ERROR, "Service message error")
            return
        ((kind, body),) = service.items()
        if kind == "OpenMessage":
            key = body["client_key"]
            if (key["client_principal"], key["client_nonce"]) != self.client_key:
                self._fail(ProtocolError("Client key does not match"), CLOSE_ERROR, "Service message error")
                return
            self.state = ClientState.OPEN
            if self._open_timer is not None:
                self._open_timer.cancel()
                self._open_timer = None
            if not self._open_waiter.done():
                self._open_waiter.set_result(True)
        elif kind == "AckMessage":
            self._on_ack(body["last_incoming_sequence_num"])
        elif kind == "CloseMessage":
            ((reason, _),) = body["reason"].items()
            self.close_message_reason = reason
            if reason == "ClosedByApplication":
                self._close(CLOSE_BY_APPLICATION, "ClosedByApplication")
            else:
                self._fail(
                    ProtocolError(f"the canister closed the connection: {reason}"),
                    CLOSE_ERROR,
                    "Received close message from canister",
                )
        else:
            self._fail(
                ProtocolError(f"unexpected service message {kind}"), CLOSE_ERROR, "Service message error"
            )

    def _on_ack(self, last_incoming_sequence_num: int) -> None:
        self.acks_received += 1
        self.last_ack = last_incoming_sequence_num
        try:
            self._acks.ack(last_incoming_sequence_num)
        except AckTimeoutError as error:
            self._fail(error, CLOSE_ERROR, "Ack message timeout")
            return
        except ProtocolError as error:
            self._fail(error, CLOSE_ERROR, "Ack message error")
            return
        if self.keep_alive:
            self._send_keep_alive()
