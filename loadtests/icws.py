"""A blocking IC WebSocket client for locust users: websocket-client sockets, which gevent patches.

locust runs users as gevent greenlets, so asyncio clients (picows, `icgw.wsclient`) cannot run inside them
(PYTHON-RUST-ECOSYSTEM.md §5). This client speaks the same protocol with blocking calls on a socket gevent
makes cooperative; the wire format (handshake, signed `ws_open`/`ws_message` envelopes, certified canister
messages) and the checks (certificate, witness, sequence numbers) are `icgw.wsclient`'s, reused from its
I/O-free modules, so it behaves towards a gateway exactly like the SDK and the asyncio client.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

import websocket

from icgw.core import CoreError, Ed25519Identity, decode_websocket_message, principal_from_text
from icgw.ic.root_key import root_key_from_status
from icgw.wsclient.errors import ProtocolError
from icgw.wsclient.messages import (
    call_content,
    decode_app_message,
    decode_service_message,
    encode_app_message,
    keep_alive_content,
    parse_handshake,
    parse_incoming_frame,
    sdk_timestamp,
    signed_call_frame,
    ws_message_arg,
    ws_open_arg,
)
from icgw.wsclient.verify import MessageVerifier

STATUS_TIMEOUT_S = 10.0


def fetch_root_key(ic_url: str) -> bytes:
    """The root key a local replica publishes in /api/v2/status (blocking, gevent-friendly)."""
    with urllib.request.urlopen(f"{ic_url.rstrip('/')}/api/v2/status", timeout=STATUS_TIMEOUT_S) as response:
        return root_key_from_status(response.read())


@dataclass(frozen=True, slots=True)
class AppMessage:
    """An application message from the test canister: its text, and the canister's send time."""

    sequence_num: int
    text: str
    canister_timestamp_ns: int
    frame_bytes: int


class IcWebSocketSession:
    """One connection: `open()`, then `send_text`/`receive` application messages, then `close()`."""

    def __init__(
        self, gateway_url: str, canister_id: str, verifier: MessageVerifier | None, timeout_s: float
    ) -> None:
        self.gateway_url = gateway_url
        self.canister_id = principal_from_text(canister_id)
        self.verifier = verifier
        self.timeout_s = timeout_s
        self.identity = Ed25519Identity.generate()
        self.client_nonce = int.from_bytes(Ed25519Identity.generate().principal[:8], "big")
        self.client_key = (self.identity.principal, self.client_nonce)
        self._ws: websocket.WebSocket | None = None
        self._incoming_sequence_num = 1
        self._outgoing_sequence_num = 0

    # --- connection -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, read the gateway's handshake, send ws_open, and wait for the OpenMessage."""
        self._ws = websocket.create_connection(self.gateway_url, timeout=self.timeout_s)
        gateway_principal = parse_handshake(self._recv_bytes())
        self._send_call("ws_open", ws_open_arg(self.client_nonce, gateway_principal))
        while True:
            content, _ = self._next_message()
            if content is not None:
                raise ProtocolError("an application message arrived before the OpenMessage")
            if self._opened:
                return

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close(status=1000)
            self._ws = None

    # --- application messages -------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send the test canister's `AppMessage {text; timestamp = now}` as the next ws_message."""
        now = time.time_ns()
        self._send_ws_message(encode_app_message(text, now), is_service_message=False)

    def receive(self) -> AppMessage:
        """The next application message (service messages are handled on the way)."""
        while True:
            content, frame_bytes = self._next_message()
            if content is None:
                continue
            sequence_num, timestamp, app_content = content
            message = decode_app_message(app_content)
            if message is None:
                raise ProtocolError("the canister sent something that is not an AppMessage")
            return AppMessage(sequence_num, message["text"], timestamp, frame_bytes)

    # --- the protocol ---------------------------------------------------------------------------------

    _opened = False

    def _recv_bytes(self) -> bytes:
        assert self._ws is not None
        opcode, data = self._ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            raise ProtocolError(
                f"the gateway closed the connection ({code}: {data[2:].decode(errors='replace')})"
            )
        if opcode != websocket.ABNF.OPCODE_BINARY:
            raise ProtocolError(f"a frame with opcode {opcode} from the gateway; only binary is spoken")
        return bytes(data)

    def _next_message(self) -> tuple[tuple[int, int, bytes] | None, int]:
        """One canister message, checked as the SDK checks it: (sequence number, timestamp, content) of an
        application message, or None for a service message (which is handled here)."""
        data = self._recv_bytes()
        frame = parse_incoming_frame(data)
        try:
            message = decode_websocket_message(frame.content)
        except CoreError as error:
            raise ProtocolError(f"the content is not a WebsocketMessage: {error}") from error
        if self.verifier is not None:
            self.verifier.verify(frame.key, frame.content, frame.cert, frame.tree)
        if message["sequence_num"] != self._incoming_sequence_num:
            raise ProtocolError(
                f"sequence number {message['sequence_num']}, expected {self._incoming_sequence_num}"
            )
        self._incoming_sequence_num += 1
        if not message["is_service_message"]:
            return (message["sequence_num"], message["timestamp"], message["content"]), len(data)
        ((kind, body),) = decode_service_message(message["content"]).items()
        if kind == "OpenMessage":
            key = body["client_key"]
            if (key["client_principal"], key["client_nonce"]) != self.client_key:
                raise ProtocolError("the OpenMessage is for another client")
            self._opened = True
        elif kind == "AckMessage":
            content = keep_alive_content(self._incoming_sequence_num - 1)
            self._send_ws_message(content, is_service_message=True)
        elif kind == "CloseMessage":
            raise ProtocolError(f"the canister closed the connection: {body['reason']}")
        return None, len(data)

    def _send_ws_message(self, content: bytes, *, is_service_message: bool) -> None:
        self._outgoing_sequence_num += 1
        now = time.time_ns()
        arg = ws_message_arg(
            self.client_key, self._outgoing_sequence_num, sdk_timestamp(now), is_service_message, content
        )
        self._send_call("ws_message", arg)

    def _send_call(self, method: str, arg: bytes) -> None:
        assert self._ws is not None
        content = call_content(self.canister_id, self.identity.principal, method, arg, time.time_ns())
        self._ws.send_binary(signed_call_frame(self.identity, content))
