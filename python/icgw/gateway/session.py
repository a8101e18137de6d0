"""One client's WebSocket session: the handshake, the ws_open check, the ordered relay, delivery.

States (PROTOCOL.md §4.7, hardened):
  AWAITING_OPEN  handshake sent; the first frame must be a `ws_open` call naming this gateway
  OPENING        route registered and ws_open relayed; frames that arrive now are queued, not dropped
  OPEN           the first canister message was delivered
  CLOSED         route removed; `ws_close` scheduled if the canister knows the client

Close codes sent to clients (documented in the README):
  1001 the gateway is shutting down          1003 text frames (only binary CBOR is spoken)
  1007 a frame that is not a valid envelope  1008 a valid envelope the gateway must not relay
  1009 a frame over the size limit (picows)  1011 an internal error
  1013 slow consumer, flooding, or too many connections (try again later)
  1014 the IC refused the connection (ws_open rejected, unknown canister)
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from icgw.core import CandidError, FrameError, candid_decode_values, decode_client_frame, principal_to_text
from icgw.gateway.limits import TokenBucket
from icgw.gateway.relay import OrderedRelay, RelayFull
from icgw.observability.tracing import TraceSpan, connection_span, tracing_enabled

if TYPE_CHECKING:
    from icgw.gateway.hub import Hub

log = logging.getLogger(__name__)

ClientKey = tuple[bytes, int]

# Room picows needs in front of a frame for the WebSocket header (2 to 14 bytes).
_HEADER_ROOM = 14


class SessionState(enum.Enum):
    AWAITING_OPEN = "awaiting_open"
    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


class ConnectionTrace:
    """The span of one connection, open from its admission to its disconnection.

    A session lives in picows callbacks, not in one coroutine, and the callbacks of every connection share
    the loop's context. The span's context manager makes its span current where it is entered, so it is
    entered and left in a private copy of the context: no other connection's work ever runs under it.
    """

    __slots__ = ("_context", "_manager", "span")

    def __init__(self, peer: str) -> None:
        self._manager = connection_span(peer)
        self._context = contextvars.copy_context()
        self.span: TraceSpan = self._context.run(self._manager.__enter__)

    def registered(self, canister_id: bytes) -> None:
        if self.span.is_recording():
            self.span.set_attribute("icgw.canister_id", principal_to_text(canister_id))

    def end(self, close_reason: str) -> None:
        if self.span.is_recording():
            self.span.set_attribute("icgw.close_reason", close_reason)
        self._context.run(self._manager.__exit__, None, None, None)


class ClientSession(WSListener):
    """A picows listener: every callback runs on the event loop and never blocks."""

    # Slots, not a __dict__: one session per connection, and idle connections are most of them.
    __slots__ = (
        "_close_reason",
        "_closing",
        "_limiter",
        "_open_timer",
        "_trace",
        "canister_id",
        "client_key",
        "hub",
        "peer",
        "relay",
        "state",
        "transport",
    )

    def __init__(self, hub: Hub, peer: str) -> None:
        self.hub = hub
        self.peer = peer
        self.state = SessionState.AWAITING_OPEN
        self.canister_id = b""
        self.client_key: ClientKey | None = None
        self.transport: WSTransport | None = None
        self.relay: OrderedRelay | None = None
        self._limiter = TokenBucket(
            hub.config.max_client_messages_per_second, hub.config.max_client_messages_per_second
        )
        self._open_timer: asyncio.TimerHandle | None = None
        self._close_reason = "client_close"
        self._closing = False
        self._trace: ConnectionTrace | None = None  # only while tracing is on

    # --- picows callbacks --------------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        peer = transport.underlying_transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self.hub.admit(self):
            self.close_from_gateway(WSCloseCode.TRY_AGAIN_LATER, "the gateway is at its connection limit")
            return
        if tracing_enabled():
            self._trace = ConnectionTrace(self.peer)
        transport.send(WSMsgType.BINARY, self.hub.handshake)
        self._open_timer = asyncio.get_running_loop().call_later(
            self.hub.config.open_timeout_s, self._open_timed_out
        )

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.BINARY:
            if not frame.fin:
                self._reject(WSCloseCode.UNSUPPORTED_DATA, "fragmented messages are not supported")
            else:
                self._on_binary(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.CLOSE:
            self._close_reason = "client_close"
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif msg_type == WSMsgType.TEXT:
            self._reject(WSCloseCode.UNSUPPORTED_DATA, "text frames are not supported: send binary CBOR")
        elif msg_type == WSMsgType.CONTINUATION:
            self._reject(WSCloseCode.UNSUPPORTED_DATA, "fragmented messages are not supported")
        # PING is answered by picows (auto pong); PONG only proves the peer is alive.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        previous = self.state
        self.state = SessionState.CLOSED
        if self.relay is not None:
            self.relay.close()
        self.hub.release(
            self, self._close_reason, registered=previous in (SessionState.OPENING, SessionState.OPEN)
        )
        if self._trace is not None:
            self._trace.end(self._close_reason)
            self._trace = None

    # --- frames from the client ------------------------------------------------------------------

    def _on_binary(self, data: bytes) -> None:
        if self._closing or self.state is SessionState.CLOSED:
            return
        if not self._limiter.take():
            self._close_reason = "rate_limited"
            self.close_from_gateway(WSCloseCode.TRY_AGAIN_LATER, "too many messages: slow down")
            return
        try:
            frame = decode_client_frame(data)
        except FrameError as error:
            self._reject(WSCloseCode.INVALID_TEXT, f"invalid frame: {error}")
            return
        if frame.request_type != "call":
            self._reject(WSCloseCode.POLICY_VIOLATION, "only call envelopes can be relayed")
            return
        if self.state is SessionState.AWAITING_OPEN:
            self._on_open_request(
                frame.canister_id, frame.sender, frame.method_name, frame.arg, frame.envelope
            )
        else:
            self._on_message_request(frame.canister_id, frame.sender, frame.method_name, frame.envelope)

    def _on_open_request(
        self, canister_id: bytes, sender: bytes, method: str, arg: bytes, envelope: bytes
    ) -> None:
        if method != "ws_open":
            self._reject(WSCloseCode.POLICY_VIOLATION, f"the first call must be ws_open, not {method!r}")
            return
        try:
            (args,) = candid_decode_values("(CanisterWsOpenArguments)", arg)
        except (CandidError, ValueError) as error:
            self._reject(WSCloseCode.INVALID_TEXT, f"ws_open arguments do not decode: {error}")
            return
        assert isinstance(args, dict)
        gateway_principal = args["gateway_principal"]
        if gateway_principal != self.hub.principal:
            named = principal_to_text(gateway_principal)
            self._reject(
                WSCloseCode.POLICY_VIOLATION, f"ws_open names gateway {named}, not {self.hub.principal_text}"
            )
            return
        if not self.hub.canister_allowed(canister_id):
            self._reject(
                WSCloseCode.POLICY_VIOLATION, f"canister {principal_to_text(canister_id)} is not served here"
            )
            return
        client_key: ClientKey = (sender, int(args["client_nonce"]))
        if not self.hub.register(self, canister_id, client_key):
            self._reject(WSCloseCode.POLICY_VIOLATION, "this client key is already connected")
            return
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        self.canister_id = canister_id
        self.client_key = client_key
        self.state = SessionState.OPENING
        if self._trace is not None:
            self._trace.registered(canister_id)
        self.relay = self.hub.new_relay(self)
        self._push(method, envelope)

    def _on_message_request(self, canister_id: bytes, sender: bytes, method: str, envelope: bytes) -> None:
        assert self.client_key is not None
        if canister_id != self.canister_id:
            self._reject(WSCloseCode.POLICY_VIOLATION, "all calls of a connection must go to one canister")
        elif sender != self.client_key[0]:
            self._reject(WSCloseCode.POLICY_VIOLATION, "all calls of a connection must come from one sender")
        elif method != "ws_message":
            self._reject(WSCloseCode.POLICY_VIOLATION, f"only ws_message can follow ws_open, not {method!r}")
        else:
            self._push(method, envelope)

    def _push(self, method: str, envelope: bytes) -> None:
        assert self.relay is not None
        try:
            self.relay.push(method, envelope)
        except RelayFull as error:
            self._close_reason = "rate_limited"
            self.close_from_gateway(WSCloseCode.TRY_AGAIN_LATER, str(error))

    # --- frames to the client ----------------------------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        """Send one certified canister message; a client that cannot keep up is closed, never waited for."""
        transport = self.transport
        if transport is None or self._closing or self.state is SessionState.CLOSED:
            return
        if transport.underlying_transport.get_write_buffer_size() > self.hub.config.send_buffer_high_water:
            self._close_reason = "slow_client"
            self.hub.metrics.slow_client_close()
            self.close_from_gateway(
                WSCloseCode.TRY_AGAIN_LATER, "the client does not read its messages fast enough"
            )
            return
        # picows copies a frame of up to 8 KiB into the connection's own write buffer, which then keeps
        # that size for the connection's life (8 KiB of RSS per idle client after one message). A frame
        # sent from a bytearray with room for the header in front is written from there instead.
        buffer = bytearray(_HEADER_ROOM)
        buffer += frame
        transport.send_reuse_external_bytearray(WSMsgType.BINARY, buffer, _HEADER_ROOM)
        self.state = SessionState.OPEN
        self.hub.metrics.delivered(len(frame))

    # --- closing -------------------------------------------------------------------------------------

    def close_from_gateway(self, code: WSCloseCode, reason: str) -> None:
        """Close with a code and reason; the rest of the cleanup happens in on_ws_disconnected."""
        transport = self.transport
        if transport is None or self._closing or transport.is_close_frame_sent:
            return
        self._closing = True
        if self._close_reason == "client_close":
            self._close_reason = _REASON_BY_CODE.get(code, "server_error")
        transport.send_close(code, reason.encode()[:123])
        transport.disconnect()

    def relay_failed(self, method: str, error: BaseException) -> None:
        """The IC refused an envelope. A refused ws_open ends the session; later refusals are only counted."""
        if method == "ws_open" and self.state is SessionState.OPENING:
            self._close_reason = "canister_refused"
            self.close_from_gateway(WSCloseCode.BAD_GATEWAY, f"the IC refused ws_open: {error}")

    def _open_timed_out(self) -> None:
        self._open_timer = None
        if self.state is SessionState.AWAITING_OPEN:
            self._close_reason = "open_timeout"
            self.close_from_gateway(WSCloseCode.POLICY_VIOLATION, "no ws_open call arrived in time")

    def _reject(self, code: WSCloseCode, reason: str) -> None:
        log.info("closing client %s: %s", self.peer, reason)
        self._close_reason = "protocol_error"
        self.close_from_gateway(code, reason)


_REASON_BY_CODE = {
    WSCloseCode.GOING_AWAY: "shutdown",
    WSCloseCode.TRY_AGAIN_LATER: "slow_client",
    WSCloseCode.BAD_GATEWAY: "canister_refused",
    WSCloseCode.INTERNAL_ERROR: "server_error",
}
