"""A Python client of the IC WebSocket protocol: what `ic-websocket-js` does, over picows.

Example (the test canister answers every message with its text + " ping")::

    client = await connect("ws://127.0.0.1:8080", canister_id, ic_url="http://127.0.0.1:4943")
    await client.open()
    await client.send_app_message("hello")
    async for message in client:
        print(message.sequence_num, message.app_message)
"""

from .acks import AckTracker
from .client import (
    CLOSE_BY_APPLICATION,
    CLOSE_ERROR,
    CLOSE_NORMAL,
    ClientState,
    IcWebSocketClient,
    ReceivedMessage,
    fetch_root_key,
)
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
    VerificationError,
    WsClientError,
)
from .messages import decode_app_message, encode_app_message
from .verify import DEFAULT_MAX_CERTIFICATE_AGE_NS, MessageVerifier

connect = IcWebSocketClient.connect

__all__ = [
    "CLOSE_BY_APPLICATION",
    "CLOSE_ERROR",
    "CLOSE_NORMAL",
    "DEFAULT_MAX_CERTIFICATE_AGE_NS",
    "AckTimeoutError",
    "AckTracker",
    "ClientState",
    "CloseInfo",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeError",
    "IcWebSocketClient",
    "MessageVerifier",
    "NotOpenError",
    "OpenTimeoutError",
    "ProtocolError",
    "ReceivedMessage",
    "VerificationError",
    "WsClientError",
    "connect",
    "decode_app_message",
    "encode_app_message",
    "fetch_root_key",
]
