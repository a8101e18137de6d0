"""The IC WebSocket CDK (ic-websocket-cdk 0.4.1, Rust and Motoko) as a Python state machine.

This is what a canister built on the CDK does behind its four `ws_*` methods (PROTOCOL.md §2.3, §5.2,
§5.3, §7): it registers clients and the gateways they name, numbers messages both ways, keeps one
outgoing queue per gateway with keys `<gateway>_<nonce:020>`, certifies every queued message in one
hash tree (`certified_data = labeled_hash("websocket", root)`), sends acks on a timer and drops clients
that do not answer them, and expires gateways that have no clients left. Error texts are the CDK's,
byte for byte, because gateways and tests compare them.

`flavor="motoko"` reproduces the Motoko CDK where it differs (§10): message CBOR without the
self-describe tag, witnesses that reveal exactly the returned keys, the service-message decoding
error text (and a trap for bytes that are not Candid at all), and `wipe` without `on_close`.

Canister time is read once per execution (a call or a timer) and stays fixed through it, as on the IC.
The CDK reports outcomes the way the canister does: an `Err(text)` result is a `WsError` (state changes
made before it are kept, as in the CDK), a trap is a `CanisterTrap`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from icgw.core import (
    ANONYMOUS,
    CandidError,
    candid_decode,
    candid_decode_values,
    candid_encode_values,
    encode_websocket_message,
    hash_tree_encode,
    principal_to_text,
)
from icgw.replica.interfaces import Clock, TimerHandle
from icgw.replica.merkle import CertifiedMap, HashTree, labeled_hash

Flavor = Literal["rust", "motoko"]
FLAVORS: tuple[Flavor, ...] = ("rust", "motoko")

LABEL_WEBSOCKET = b"websocket"
DEFAULT_MAX_NUMBER_OF_RETURNED_MESSAGES = 50
DEFAULT_SEND_ACK_INTERVAL_MS = 300_000
COMMUNICATION_LATENCY_BOUND_MS = 30_000
CLIENT_KEEP_ALIVE_TIMEOUT_MS = 2 * COMMUNICATION_LATENCY_BOUND_MS
CLIENT_KEEP_ALIVE_TIMEOUT_NS = CLIENT_KEEP_ALIVE_TIMEOUT_MS * 1_000_000
INITIAL_OUTGOING_MESSAGE_NONCE = 0
INITIAL_CLIENT_SEQUENCE_NUM = 1
INITIAL_CANISTER_SEQUENCE_NUM = 0
MESSAGES_TO_DELETE_COUNT = 5

_NS_PER_MS = 1_000_000
_SERVICE_MESSAGE_TYPES = "(WebsocketServiceMessageContent)"

CloseReason = Literal[
    "WrongSequenceNumber", "InvalidServiceMessage", "KeepAliveTimeout", "ClosedByApplication"
]


class WsError(Exception):
    """An `Err(text)` result of a CDK function; `str(error)` is the CDK's exact text."""


class CanisterTrap(Exception):
    """The canister traps: the call is rejected (IC0503) with this message."""


@dataclass(frozen=True, slots=True)
class WsInitParams:
    """The CDK's init parameters (the test canister takes them as its init and `wipe` arguments)."""

    max_number_of_returned_messages: int = DEFAULT_MAX_NUMBER_OF_RETURNED_MESSAGES
    send_ack_interval_ms: int = DEFAULT_SEND_ACK_INTERVAL_MS

    def check_validity(self) -> None:
        # The keep-alive check runs CLIENT_KEEP_ALIVE_TIMEOUT_MS after each ack tick and must be over
        # before the next tick, hence the CDK's rule (and its trap text).
        if self.send_ack_interval_ms <= CLIENT_KEEP_ALIVE_TIMEOUT_MS:
            raise CanisterTrap("send_ack_interval_ms must be greater than CLIENT_KEEP_ALIVE_TIMEOUT_MS")

    @property
    def send_ack_interval_ns(self) -> int:
        return self.send_ack_interval_ms * _NS_PER_MS


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One connection of a client: its principal and the random nonce the SDK chose for it."""

    client_principal: bytes
    client_nonce: int

    def __str__(self) -> str:
        # How the CDK renders a key in its error texts.
        return f"{principal_to_text(self.client_principal)}_{self.client_nonce}"

    def to_candid(self) -> dict[str, Any]:
        return {"client_principal": self.client_principal, "client_nonce": self.client_nonce}

    @classmethod
    def from_candid(cls, value: dict[str, Any]) -> ClientKey:
        return cls(bytes(value["client_principal"]), int(value["client_nonce"]))


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """The `WebsocketMessage` a client sends in `ws_message` (its `timestamp` is ignored by the CDK)."""

    client_key: ClientKey
    sequence_num: int
    timestamp: int
    is_service_message: bool
    content: bytes

    @classmethod
    def from_candid(cls, value: dict[str, Any]) -> IncomingMessage:
        return cls(
            client_key=ClientKey.from_candid(value["client_key"]),
            sequence_num=int(value["sequence_num"]),
            timestamp=int(value["timestamp"]),
            is_service_message=bool(value["is_service_message"]),
            content=bytes(value["content"]),
        )

    def to_candid(self) -> dict[str, Any]:
        return {
            "client_key": self.client_key.to_candid(),
            "sequence_num": self.sequence_num,
            "timestamp": self.timestamp,
            "is_service_message": self.is_service_message,
            "content": self.content,
        }


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message waiting in a gateway's queue: what `ws_get_messages` returns, plus its time."""

    client_key: ClientKey
    key: str
    content: bytes  # the CBOR WebsocketMessage, certified under `key`
    timestamp_ns: int

    def to_candid(self) -> dict[str, Any]:
        return {"client_key": self.client_key.to_candid(), "key": self.key, "content": self.content}


class WsHandlers(Protocol):
    """The application callbacks (`on_open`, `on_message`, `on_close`)."""

    def on_open(self, client_principal: bytes) -> None: ...

    def on_message(self, client_principal: bytes, message: bytes) -> None: ...

    def on_close(self, client_principal: bytes) -> None: ...


class CertificateSource(Protocol):
    def __call__(self) -> bytes | None:
        """The data certificate, or None outside a query (where `ic0.data_certificate` has none)."""
        ...


@dataclass(slots=True)
class _RegisteredClient:
    gateway: bytes
    last_keep_alive_ns: int
    expected_incoming_seq: int = INITIAL_CLIENT_SEQUENCE_NUM
    outgoing_seq: int = INITIAL_CANISTER_SEQUENCE_NUM


class GatewayQueue:
    """A registered gateway: its client count, message nonce and queue of outgoing messages.

    Messages are appended with consecutive nonces and only ever removed from the front, so the queue
    always holds the nonces `[next_nonce - len, next_nonce)` and a nonce maps to an index directly.
    """

    __slots__ = ("_head", "_messages", "clients_count", "key_prefix", "next_nonce", "principal")

    def __init__(self, principal: bytes) -> None:
        self.principal = principal
        self.key_prefix = principal_to_text(principal) + "_"
        self.next_nonce = INITIAL_OUTGOING_MESSAGE_NONCE
        self.clients_count = 0
        self._messages: list[QueuedMessage] = []
        self._head = 0  # messages before it were trimmed; compacted when it grows

    def key_for(self, nonce: int) -> str:
        return f"{self.key_prefix}{nonce:020d}"

    def __len__(self) -> int:
        return len(self._messages) - self._head

    def __iter__(self) -> Iterator[QueuedMessage]:
        return iter(self._messages[self._head :])

    @property
    def first_nonce(self) -> int:
        return self.next_nonce - len(self)

    def oldest(self) -> QueuedMessage | None:
        return self._messages[self._head] if self._head < len(self._messages) else None

    def append(self, message: QueuedMessage) -> None:
        self._messages.append(message)

    def pop_oldest(self) -> QueuedMessage:
        message = self._messages[self._head]
        self._head += 1
        if self._head > 64 and self._head * 2 > len(self._messages):
            del self._messages[: self._head]
            self._head = 0
        return message

    def messages_from(self, nonce: int, max_count: int) -> tuple[list[QueuedMessage], bool]:
        """The messages with a key at or after `<gateway>_<nonce:020>`, at most `max_count` of them,
        and whether they reach the end of the queue."""
        length = len(self)
        start = min(max(nonce - self.first_nonce, 0), length)
        if length - start > max_count:
            end, is_end_of_queue = start + max_count, False
        else:
            end, is_end_of_queue = length, True
        return self._messages[self._head + start : self._head + end], is_end_of_queue


def empty_messages_result() -> dict[str, Any]:
    """What `ws_get_messages` returns when there is nothing to return (never an `Err`)."""
    return {"messages": [], "cert": b"", "tree": b"", "is_end_of_queue": True}


def encode_service_message(content: dict[str, Any]) -> bytes:
    """Candid of a `WebsocketServiceMessageContent` given as a one-key dict (`{"AckMessage": {...}}`)."""
    return candid_encode_values(_SERVICE_MESSAGE_TYPES, [content])


def decode_service_message(data: bytes) -> dict[str, Any]:
    """The `WebsocketServiceMessageContent` in `data` as a one-key dict; CandidError if it is not one."""
    (value,) = candid_decode_values(_SERVICE_MESSAGE_TYPES, data)
    if not isinstance(value, dict):
        raise CandidError("a service message decodes to a variant")
    return value


def _noop() -> None:
    return None


class WebSocketCdk:
    """The CDK state of one canister: `ws_*` methods, the library API, timers and the certified tree.

    `handlers` receive the application callbacks; `on_certified_data_changed` is told every time the
    CDK sets new certified data (the replica re-certifies in its next round).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        handlers: WsHandlers,
        params: WsInitParams | None = None,
        flavor: Flavor = "rust",
        on_certified_data_changed: Callable[[], None] = _noop,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown CDK flavor {flavor!r}: expected one of {', '.join(FLAVORS)}")
        self.flavor: Flavor = flavor
        self._clock = clock
        self._handlers = handlers
        self._on_certified_data_changed = on_certified_data_changed
        self._params = WsInitParams()
        self._clients: dict[ClientKey, _RegisteredClient] = {}
        self._current_keys: dict[bytes, ClientKey] = {}
        # Insertion-ordered set: clients that were sent an ack and are checked for keep-alives.
        self._waiting_for_keep_alive: dict[ClientKey, None] = {}
        self._gateways: dict[bytes, GatewayQueue] = {}
        self._gateways_to_remove: dict[bytes, int] = {}
        self._cert_tree = CertifiedMap()
        # The canister's certified data starts empty; the CDK sets it on every change of the tree.
        # Computing it is deferred until someone reads it, so a burst of sends hashes the top once.
        self._certified_data = b""
        self._certified_data_stale = False
        self._ack_timer: TimerHandle | None = None
        self._keep_alive_timer: TimerHandle | None = None
        self._execution_now: int | None = None
        self.init(params or WsInitParams())

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def params(self) -> WsInitParams:
        return self._params

    def init(self, params: WsInitParams) -> None:
        """Apply init parameters and (re)start the ack timer; traps on invalid parameters."""
        params.check_validity()
        self._cancel_timers()
        self._params = params
        with self._execution() as now:
            self._schedule_ack_tick(now + params.send_ack_interval_ns)

    def wipe(self) -> None:
        """Forget every client, gateway and message (test canisters call this, then `init`).

        The Rust CDK removes each client first (so `on_close` runs for each); the Motoko test canister
        re-creates its state without that. Certified data keeps its last value, as in the CDK.
        """
        with self._execution():
            if self.flavor == "rust":
                for key in list(self._clients):
                    self._remove_client(key, None)
            self.certified_data  # noqa: B018 - materialise the value the canister keeps certifying
            self._clients.clear()
            self._current_keys.clear()
            self._waiting_for_keep_alive.clear()
            self._gateways.clear()
            self._gateways_to_remove.clear()
            self._cert_tree = CertifiedMap()

    def shutdown(self) -> None:
        """Stop the timers (the canister is being removed)."""
        self._cancel_timers()

    # --- the ws_* methods -------------------------------------------------------------------------

    def ws_open(self, caller: bytes, client_nonce: int, gateway_principal: bytes) -> None:
        with self._execution() as now:
            if caller == ANONYMOUS:
                raise WsError("Anonymous principal is not allowed")
            key = ClientKey(caller, client_nonce)
            if key in self._clients:
                raise WsError(f"Client with key {key} already has an open connection")
            previous = self._current_keys.get(caller)
            if previous is not None:
                # A reconnection with a new nonce silently replaces the old connection.
                self._remove_client(previous, None)
            self._add_client(key, gateway_principal, now)
            self._send_service_message(key, {"OpenMessage": {"client_key": key.to_candid()}})
            self._handlers.on_open(caller)

    def ws_message(self, caller: bytes, message: IncomingMessage) -> None:
        with self._execution() as now:
            key = self._current_key(caller)
            if message.client_key != key:
                principal = principal_to_text(message.client_key.client_principal)
                raise WsError(
                    f"Client with principal {principal} has a different key than the one used in the message"
                )
            client = self._clients[key]
            expected = client.expected_incoming_seq
            if message.sequence_num != expected:
                self._remove_client(key, "WrongSequenceNumber")
                raise WsError(f"Expected incoming sequence number {expected} but got {message.sequence_num}")
            # Counted before the content is looked at: a message that fails below still used its number.
            client.expected_incoming_seq += 1
            if message.is_service_message:
                self._handle_service_message(client, message.content, now)
            else:
                self._handlers.on_message(caller, message.content)

    def ws_close(self, caller: bytes, client_key: ClientKey) -> None:
        with self._execution():
            if caller not in self._gateways:
                raise WsError(f"Gateway with principal {principal_to_text(caller)} is not registered")
            client = self._clients.get(client_key)
            if client is None:
                raise WsError(f"Client with key {client_key} doesn't have an open connection")
            if client.gateway != caller:
                gateway = principal_to_text(caller)
                raise WsError(f"Client with key {client_key} was not registered to gateway {gateway}")
            self._remove_client(client_key, None)

    def ws_get_messages(
        self, caller: bytes, nonce: int, data_certificate: CertificateSource
    ) -> dict[str, Any]:
        """The `Ok` value of `ws_get_messages`: up to `max_number_of_returned_messages` messages of the
        caller's queue from `nonce` on, with the certificate and a witness for their keys."""
        gateway = self._gateways.get(caller)
        if gateway is None:
            return empty_messages_result()
        messages, is_end_of_queue = gateway.messages_from(nonce, self._params.max_number_of_returned_messages)
        if not messages:
            return empty_messages_result()
        cert = data_certificate()
        if cert is None:
            # ic0.data_certificate is only available in (non-replicated) queries.
            raise CanisterTrap(
                "could not get the data certificate: ws_get_messages must be called as a query"
            )
        witness = self._witness([m.key.encode() for m in messages])
        return {
            "messages": [m.to_candid() for m in messages],
            "cert": cert,
            "tree": hash_tree_encode(("labeled", LABEL_WEBSOCKET, witness)),
            "is_end_of_queue": is_end_of_queue,
        }

    # --- the library API for applications ---------------------------------------------------------

    def send(self, client_principal: bytes, message: bytes) -> None:
        """Queue an application message (Candid bytes) for the client's current connection."""
        with self._execution():
            self._send(self._current_key(client_principal), message, is_service_message=False)

    def close(self, client_principal: bytes, *, call_on_close: bool = True) -> None:
        """Close the client's connection: it is sent `CloseMessage{ClosedByApplication}` and removed.

        `call_on_close=False` is the Motoko module-level `close`, which skips the callback.
        """
        with self._execution():
            key = self._current_key(client_principal)
            self._remove_client(key, "ClosedByApplication", call_on_close=call_on_close)

    # --- state, for the canister and for tests ----------------------------------------------------

    @property
    def certified_data(self) -> bytes:
        if self._certified_data_stale:
            self._certified_data = labeled_hash(LABEL_WEBSOCKET, self._cert_tree.root_hash())
            self._certified_data_stale = False
        return self._certified_data

    def client_key(self, client_principal: bytes) -> ClientKey | None:
        return self._current_keys.get(client_principal)

    def is_gateway_registered(self, gateway_principal: bytes) -> bool:
        return gateway_principal in self._gateways

    def gateway_queue(self, gateway_principal: bytes) -> list[QueuedMessage]:
        gateway = self._gateways.get(gateway_principal)
        return [] if gateway is None else list(gateway)

    def certified_keys(self) -> list[str]:
        return [label.decode() for label in self._cert_tree]

    # --- internals --------------------------------------------------------------------------------

    @contextmanager
    def _execution(self) -> Iterator[int]:
        """Fix canister time for one execution; nested entries (an app calling `send` from a
        callback) share it."""
        if self._execution_now is not None:
            yield self._execution_now
            return
        self._execution_now = self._clock.now_ns()
        try:
            yield self._execution_now
        finally:
            self._execution_now = None

    def _now(self) -> int:
        return self._clock.now_ns() if self._execution_now is None else self._execution_now

    def _current_key(self, client_principal: bytes) -> ClientKey:
        key = self._current_keys.get(client_principal)
        if key is None:
            principal = principal_to_text(client_principal)
            raise WsError(f"Client with principal {principal} doesn't have an open connection")
        return key

    def _add_client(self, key: ClientKey, gateway_principal: bytes, now: int) -> None:
        self._current_keys[key.client_principal] = key
        self._clients[key] = _RegisteredClient(gateway=gateway_principal, last_keep_alive_ns=now)
        gateway = self._gateways.get(gateway_principal)
        if gateway is None:
            gateway = self._gateways[gateway_principal] = GatewayQueue(gateway_principal)
        gateway.clients_count += 1
        self._gateways_to_remove.pop(gateway_principal, None)

    def _remove_client(
        self, key: ClientKey, reason: CloseReason | None, *, call_on_close: bool = True
    ) -> None:
        if reason is not None:
            # Queued (and certified) before the client goes, so the SDK learns why it was dropped.
            self._send_service_message(key, {"CloseMessage": {"reason": {reason: None}}})
        self._waiting_for_keep_alive.pop(key, None)
        self._current_keys.pop(key.client_principal, None)
        client = self._clients.pop(key, None)
        if client is None:
            return
        gateway = self._gateways.get(client.gateway)
        if gateway is not None:
            gateway.clients_count = max(gateway.clients_count - 1, 0)
            if gateway.clients_count == 0:
                # Its queue stays pollable until a keep-alive check finds it idle for a whole interval.
                self._gateways_to_remove[client.gateway] = self._now()
        if call_on_close:
            self._handlers.on_close(key.client_principal)

    def _send_service_message(self, key: ClientKey, content: dict[str, Any]) -> None:
        self._send(key, encode_service_message(content), is_service_message=True)

    def _send(self, key: ClientKey, content: bytes, *, is_service_message: bool) -> None:
        client = self._clients.get(key)
        if client is None:
            raise WsError(f"Client with key {key} doesn't have an open connection")
        gateway = self._gateways[client.gateway]
        now = self._now()
        message_key = gateway.key_for(gateway.next_nonce)
        gateway.next_nonce += 1
        client.outgoing_seq += 1
        cbor = encode_websocket_message(
            key.client_principal,
            key.client_nonce,
            client.outgoing_seq,
            now,
            is_service_message,
            content,
            self_describe=self.flavor == "rust",
        )
        self._trim_queue(gateway, now)
        self._cert_tree.set(message_key.encode(), hashlib.sha256(cbor).digest())
        gateway.append(QueuedMessage(key, message_key, cbor, now))
        self._certified_data_changed()

    def _trim_queue(self, gateway: GatewayQueue, now: int) -> None:
        """Drop up to MESSAGES_TO_DELETE_COUNT messages older than the ack interval from the front."""
        max_age = self._params.send_ack_interval_ns
        for _ in range(MESSAGES_TO_DELETE_COUNT):
            oldest = gateway.oldest()
            if oldest is None or now - oldest.timestamp_ns <= max_age:
                break
            gateway.pop_oldest()
            self._cert_tree.delete(oldest.key.encode())

    def _handle_service_message(self, client: _RegisteredClient, content: bytes, now: int) -> None:
        try:
            message = decode_service_message(content)
        except CandidError as error:
            if self.flavor == "rust":
                raise WsError(f"Error decoding service message content: {error}") from error
            # Motoko's from_candid gives null for Candid of another type, and traps on non-Candid.
            try:
                candid_decode(content)
            except CandidError:
                raise CanisterTrap(f"Candid decoding of the service message failed: {error}") from error
            raise WsError("Error decoding service message content: unknown") from error
        if "KeepAliveMessage" not in message:
            raise WsError("Invalid service message")
        # The value it carries (the last sequence number the client processed) is not used.
        client.last_keep_alive_ns = now

    def _witness(self, keys: list[bytes]) -> HashTree:
        if self.flavor == "rust":
            # RbTree::value_range: the returned keys form one contiguous range of the tree.
            return self._cert_tree.witness_range(keys[0], keys[-1])
        return self._cert_tree.witness(keys)

    def _certified_data_changed(self) -> None:
        self._certified_data_stale = True
        self._on_certified_data_changed()

    # --- timers -----------------------------------------------------------------------------------

    def _cancel_timers(self) -> None:
        for timer in (self._ack_timer, self._keep_alive_timer):
            if timer is not None:
                timer.cancel()
        self._ack_timer = self._keep_alive_timer = None

    def _schedule_ack_tick(self, due_ns: int) -> None:
        # An interval timer keeps its phase: the next tick is due one interval after this one was due,
        # however late this one ran.
        delay = due_ns - self._clock.now_ns()
        self._ack_timer = self._clock.call_later(delay, lambda: self._on_ack_tick(due_ns))

    def _on_ack_tick(self, due_ns: int) -> None:
        self._schedule_ack_tick(due_ns + self._params.send_ack_interval_ns)
        with self._execution():
            for key in list(self._clients):
                client = self._clients.get(key)
                if client is None:
                    continue
                ack = {"AckMessage": {"last_incoming_sequence_num": client.expected_incoming_seq - 1}}
                self._send_service_message(key, ack)
                self._waiting_for_keep_alive[key] = None
            self._keep_alive_timer = self._clock.call_later(
                CLIENT_KEEP_ALIVE_TIMEOUT_NS, self._on_keep_alive_check
            )

    def _on_keep_alive_check(self) -> None:
        with self._execution() as now:
            self._remove_expired_gateways(now)
            for key in list(self._waiting_for_keep_alive):
                client = self._clients.get(key)
                if client is not None and now - client.last_keep_alive_ns > CLIENT_KEEP_ALIVE_TIMEOUT_NS:
                    self._remove_client(key, "KeepAliveTimeout")

    def _remove_expired_gateways(self, now: int) -> None:
        max_idle = self._params.send_ack_interval_ns
        expired = [g for g, since in self._gateways_to_remove.items() if now - since > max_idle]
        for principal in expired:
            del self._gateways_to_remove[principal]
            gateway = self._gateways.pop(principal, None)
            if gateway is None:
                continue
            for message in gateway:
                self._cert_tree.delete(message.key.encode())
            if len(gateway):
                self._certified_data_changed()
