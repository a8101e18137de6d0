"""Errors of the IC WebSocket client (`icgw.wsclient`).

The client closes the socket the way the `ic-websocket-js` SDK does (PROTOCOL.md §4.6) and keeps the
reason as one of these exceptions: `open()` and `receive()` raise it, chained from the protocol error
that made the client close, so a test can assert both the close code and the cause.
"""

from __future__ import annotations

from dataclasses import dataclass


class WsClientError(Exception):
    """Base class of every error of the IC WebSocket client."""


class HandshakeError(WsClientError):
    """The gateway's first frame is not a valid `GatewayHandshakeMessage`, or none came in time."""


class OpenTimeoutError(WsClientError, TimeoutError):
    """The canister's OpenMessage did not arrive within the open timeout after ws_open was sent."""


class NotOpenError(WsClientError):
    """An application message was sent before the connection was established (no OpenMessage yet)."""


class ProtocolError(WsClientError):
    """A frame from the gateway breaks the protocol: not a ClientIncomingMessage, a wrong sequence
    number, a service message the SDK would refuse, or an ack the SDK would refuse."""


class AckTimeoutError(ProtocolError):
    """No AckMessage came for too long (the SDK's ack timeout, ack interval + 30 s)."""


class VerificationError(ProtocolError):
    """A message is not certified by the IC for this canister: certificate, witness or content hash."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """A WebSocket close: its code and its reason text."""

    code: int
    reason: str


class ConnectionClosed(WsClientError):
    """The connection is closed. `local` is the close frame this client sent (None if it sent none),
    `peer` the one the gateway sent (None if none arrived), `close_message_reason` the reason of the
    canister's CloseMessage if one was received (e.g. "ClosedByApplication")."""

    def __init__(
        self, local: CloseInfo | None, peer: CloseInfo | None, close_message_reason: str | None
    ) -> None:
        self.local = local
        self.peer = peer
        self.close_message_reason = close_message_reason
        first = local or peer
        self.code = first.code if first is not None else 1006
        self.reason = first.reason if first is not None else "connection lost"
        who = "client" if local is not None else "gateway" if peer is not None else "network"
        super().__init__(f"connection closed by the {who}: {self.code} {self.reason}".rstrip())


class ConnectionClosedOK(ConnectionClosed):
    """A normal close: 1000 or 1001, or the canister's CloseMessage(ClosedByApplication) (4001)."""


class ConnectionClosedError(ConnectionClosed):
    """An abnormal close: a protocol or verification error, a gateway error code, a lost connection."""
