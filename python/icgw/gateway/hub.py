"""The hub: the gateway's shared state and the one place sessions, pollers and the IC meet.

It routes each registered client key to its session through the canister's poller, creates and retires
pollers, builds each session's ordered relay, and calls `ws_close` for clients that leave. Sessions and
pollers never talk to the IC directly: they go through the `IcBackend`, which tests can replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from picows import WSCloseCode

from icgw.core import MessagesBatch, candid_encode_values, encode_handshake, principal_to_text
from icgw.gateway.observer import GatewayObserver
from icgw.gateway.poller import CanisterPoller
from icgw.gateway.relay import OrderedRelay
from icgw.ic.errors import IcError

if TYPE_CHECKING:
    from icgw.gateway.session import ClientKey, ClientSession

log = logging.getLogger(__name__)

# How many envelopes one client may have waiting for the IC before it is told to slow down.
MAX_PENDING_ENVELOPES = 256
# How many ws_close calls may be in flight at once; the rest wait their turn.
MAX_CONCURRENT_WS_CLOSE = 64


class HubSettings(Protocol):
    """The configuration values the hub and its sessions read (a GatewayConfig satisfies this)."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_client_messages_per_second(self) -> float: ...
    @property
    def open_timeout_s(self) -> float: ...
    @property
    def send_buffer_high_water(self) -> int: ...
    @property
    def polling_interval_ms(self) -> int: ...
    @property
    def poll_timeout_ms(self) -> int: ...
    @property
    def allowed_canisters(self) -> tuple[bytes, ...] | None: ...


class IcBackend(Protocol):
    """The gateway's three conversations with the IC."""

    async def submit_call(self, canister_id: bytes, envelope: bytes) -> None:
        """Relay a client's signed envelope; raise when the IC refuses or rejects it."""
        ...

    async def query_messages(self, canister_id: bytes, arg: bytes) -> bytes:
        """`ws_get_messages` as the gateway; raise TransientPollError or FatalPollError."""
        ...

    async def call_ws_close(self, canister_id: bytes, arg: bytes) -> bytes:
        """`ws_close` as the gateway; returns the Candid reply."""
        ...

    def verify_batch(self, canister_id: bytes, batch: MessagesBatch) -> None:
        """Raise CertificateError unless the batch is certified by the IC for this canister."""
        ...


def relay_error_kind(error: BaseException) -> str:
    """The metric label of a failed relay: the IC said no, could not be reached, or did not answer in time."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, IcError) and error.retryable:
        return "ic_unavailable"
    return "rejected"


class Hub:
    def __init__(
        self, settings: HubSettings, principal: bytes, backend: IcBackend, observer: GatewayObserver
    ) -> None:
        self.config = settings
        self.principal = principal
        self.principal_text = principal_to_text(principal)
        self.handshake = encode_handshake(principal)
        self.backend = backend
        self.metrics = observer
        self.sessions: set[ClientSession] = set()
        self.pollers: dict[bytes, CanisterPoller] = {}
        self._ws_close_slots = asyncio.Semaphore(MAX_CONCURRENT_WS_CLOSE)
        self._background: set[asyncio.Task[None]] = set()
        self.accepting = True
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()

    # --- connections -------------------------------------------------------------------------------

    def admit(self, session: ClientSession) -> bool:
        if not self.accepting or len(self.sessions) >= self.config.max_connections:
            return False
        self.sessions.add(session)
        self._no_sessions.clear()
        self.metrics.connection_opened()
        return True

    def canister_allowed(self, canister_id: bytes) -> bool:
        allowed = self.config.allowed_canisters
        return allowed is None or canister_id in allowed

    def register(self, session: ClientSession, canister_id: bytes, client_key: ClientKey) -> bool:
        """Route `client_key` to `session` before its ws_open is relayed, so the OpenMessage finds it."""
        poller = self.pollers.get(canister_id)
        if poller is None:
            poller = CanisterPoller(
                canister_id,
                self.backend.query_messages,
                lambda batch: self.backend.verify_batch(canister_id, batch),
                polling_interval_s=self.config.polling_interval_ms / 1000,
                poll_timeout_s=self.config.poll_timeout_ms / 1000,
                linger_s=max(1.0, 10 * self.config.polling_interval_ms / 1000),
                on_stop=self._poller_stopped,
                observer=self.metrics,
            )
            self.pollers[canister_id] = poller
            self.metrics.active_pollers(len(self.pollers))
            poller.start()
            log.info("started polling canister %s", principal_to_text(canister_id))
        if client_key in poller.clients:
            return False
        poller.clients[client_key] = session
        return True

    def new_relay(self, session: ClientSession) -> OrderedRelay:
        canister_id = session.canister_id
        metrics = self.metrics

        def done(method: str, nbytes: int, seconds: float) -> None:
            metrics.relayed(method, nbytes, seconds)
            poller = self.pollers.get(canister_id)
            if poller is not None:
                if method == "ws_open" and session.client_key is not None:
                    poller.open_accepted(session.client_key)
                else:
                    poller.wake()

        def failed(method: str, error: BaseException) -> None:
            metrics.relay_failed(relay_error_kind(error))
            log.info("the IC refused %s from %s: %s", method, session.peer, error)
            session.relay_failed(method, error)

        return OrderedRelay(
            canister_id,
            self.backend.submit_call,
            max_pending=MAX_PENDING_ENVELOPES,
            on_done=done,
            on_error=failed,
        )

    def release(self, session: ClientSession, reason: str, *, registered: bool) -> None:
        """Forget a disconnected session; tell the canister about it if the canister knew the client."""
        if session in self.sessions:
            self.sessions.discard(session)
            self.metrics.connection_closed(reason)
            if not self.sessions:
                self._no_sessions.set()
        key = session.client_key
        if key is None:
            return
        poller = self.pollers.get(session.canister_id)
        if poller is not None and poller.clients.get(key) is session:
            del poller.clients[key]
        if registered:
            self._spawn(self._ws_close(session.canister_id, key))

    # --- background work ---------------------------------------------------------------------------

    async def _ws_close(self, canister_id: bytes, key: ClientKey) -> None:
        arg = candid_encode_values(
            "(CanisterWsCloseArguments)",
            [{"client_key": {"client_principal": key[0], "client_nonce": key[1]}}],
        )
        async with self._ws_close_slots:
            try:
                await self.backend.call_ws_close(canister_id, arg)
            except Exception as error:
                # Expected when the canister already removed the client (e.g. it sent a CloseMessage).
                self.metrics.ws_close("failed")
                log.info("ws_close for %s_%d failed: %s", principal_to_text(key[0]), key[1], error)
            else:
                self.metrics.ws_close("ok")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _poller_stopped(self, poller: CanisterPoller) -> None:
        if self.pollers.get(poller.canister_id) is poller:
            del self.pollers[poller.canister_id]
            self.metrics.active_pollers(len(self.pollers))
            log.info("stopped polling canister %s", principal_to_text(poller.canister_id))

    # --- shutdown ----------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def close_sessions(self, sessions: Iterable[ClientSession], code: WSCloseCode, reason: str) -> None:
        for session in list(sessions):
            session.close_from_gateway(code, reason)

    async def wait_sessions_closed(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_sessions.wait(), timeout_s)

    async def drain(self, timeout_s: float) -> None:
        """Wait for ws_close calls and pollers to finish, at most `timeout_s`."""
        pending = [*self._background]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        for poller in list(self.pollers.values()):
            await poller.stop()
