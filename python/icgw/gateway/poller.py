"""One poller per canister: fetch certified messages with `ws_get_messages`, verify them, fan them out.

Timing (PROTOCOL.md §5.4, improved): poll again at once while the canister says its queue is not drained
or while messages keep coming; otherwise wait for the next tick of the polling interval, or less when a
client's call was just relayed (the reply to it is likely queued already). Transient failures back off with
jitter and keep every client; a batch whose certificate does not verify is never relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from picows import WSCloseCode

from icgw.core import CertificateError, CoreError, MessagesBatch, decode_messages_reply, principal_to_text
from icgw.gateway.observer import GatewayObserver
from icgw.observability.tracing import NOOP_SPAN, TraceSpan, poll_span

log = logging.getLogger(__name__)

# `ws_get_messages(record { nonce : nat64 })`: a fixed Candid prefix and the nonce in little-endian.
_GET_MESSAGES_ARG_PREFIX = bytes.fromhex("4449444c016c01ef9999fe09780100")
MAX_BACKOFF_S = 5.0


def ws_get_messages_arg(nonce: int) -> bytes:
    return _GET_MESSAGES_ARG_PREFIX + nonce.to_bytes(8, "little")


class PollerClient(Protocol):
    """What a poller needs from a connected client session."""

    def deliver(self, frame: bytes) -> None: ...

    def close_from_gateway(self, code: WSCloseCode, reason: str) -> None: ...


class FatalPollError(Exception):
    """The canister cannot be polled at all (it does not exist, has no such method, answers garbage)."""


class TransientPollError(Exception):
    """The IC could not answer this time (transport error, 5xx, overload); try again later."""


class MessagesQuery(Protocol):
    async def __call__(self, canister_id: bytes, arg: bytes) -> bytes:
        """Run the signed `ws_get_messages` query; return its Candid reply.

        Raises TransientPollError or FatalPollError; timeouts are the poller's business.
        """
        ...


class BatchVerifier(Protocol):
    def __call__(self, batch: MessagesBatch) -> None:
        """Raise CertificateError unless the batch's certificate and witness prove every message."""
        ...


class CanisterPoller:
    """Polls one canister for as long as it has clients (and a short while after the last one left)."""

    def __init__(
        self,
        canister_id: bytes,
        query: MessagesQuery,
        verify: BatchVerifier,
        *,
        polling_interval_s: float,
        poll_timeout_s: float,
        linger_s: float,
        on_stop: Callable[[CanisterPoller], None],
        observer: GatewayObserver | None = None,
    ) -> None:
        self.canister_id = canister_id
        # Computed once: logs and every poll span name the canister by its text form.
        self.canister_text = principal_to_text(canister_id)
        self.clients: dict[tuple[bytes, int], PollerClient] = {}
        self._query = query
        self._verify = verify
        self._interval = polling_interval_s
        self._timeout = poll_timeout_s
        self._linger = linger_s
        self._on_stop = on_stop
        self._metrics = observer or GatewayObserver()
        self._wake = asyncio.Event()
        self._next_nonce = 0
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    def wake(self) -> None:
        """Poll soon: a client call was just relayed, so its effects are probably queued."""
        self._wake.set()

    @property
    def next_nonce(self) -> int:
        return self._next_nonce

    # --- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        idle_since: float | None = None
        iteration = 0
        try:
            while not self._stopping:
                started = time.monotonic()
                # One span per poll (sampled), none per message: the fan-out stays free of tracing work.
                with poll_span(self.canister_text, iteration) as span:
                    delay = await self._poll_once(span)
                iteration += 1
                if self.clients:
                    idle_since = None
                else:
                    idle_since = idle_since or started
                    if started - idle_since >= self._linger:
                        break
                if delay > 0 and not self._stopping:
                    await self._sleep(delay - (time.monotonic() - started))
        except Exception:
            log.exception("poller for canister %s failed", self.canister_text)
            self._close_all(WSCloseCode.INTERNAL_ERROR, "the gateway's poller for this canister failed")
        finally:
            self._on_stop(self)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _poll_once(self, span: TraceSpan = NOOP_SPAN) -> float:
        """One query and its fan-out; returns how long to wait before the next one (0: at once)."""
        if span.is_recording():
            span.set_attribute("icgw.poll.nonce", self._next_nonce)
        arg = ws_get_messages_arg(self._next_nonce)
        started = time.perf_counter()
        try:
            reply = await asyncio.wait_for(self._query(self.canister_id, arg), self._timeout)
        except TimeoutError:
            self._record_poll(span, "timeout", started)
            log.warning("ws_get_messages on %s timed out; polling again", self.canister_text)
            return 0.0
        except TransientPollError as error:
            self._record_poll(span, "error", started)
            return self._backoff(f"ws_get_messages failed: {error}")
        except FatalPollError as error:
            self._record_poll(span, "error", started)
            log.error("canister %s cannot be polled: %s", self.canister_text, error)
            self._close_all(WSCloseCode.BAD_GATEWAY, f"the canister cannot be polled: {error}"[:120])
            self._stopping = True
            return 0.0
        try:
            batch = decode_messages_reply(reply)
        except CoreError as error:  # MessagesError, CandidError: not a usable reply
            self._record_poll(span, "error", started)
            return self._backoff(f"unusable ws_get_messages reply: {error}")
        if len(batch) == 0:
            self._failures = 0
            self._record_poll(span, "empty", started)
            return self._interval
        try:
            self._verify(batch)
        except CertificateError as error:
            self._metrics.certificate_failure()
            self._record_poll(span, "error", started)
            if span.is_recording():
                span.set_attribute("icgw.poll.certificate_error", str(error))
            return self._backoff(f"a batch failed verification and was not relayed: {error}")
        self._failures = 0
        first, last = batch.first_nonce, batch.last_nonce
        if first is None or last is None:  # unreachable: the batch is not empty
            return self._interval
        self._check_continuity(first)
        self._fan_out(batch)
        self._next_nonce = last + 1
        self._record_poll(span, "messages", started)
        if span.is_recording():
            span.set_attribute("icgw.poll.messages", len(batch))
        # More may be queued already (not drained, or a burst in progress): ask again at once.
        return 0.0

    def _record_poll(self, span: TraceSpan, outcome: str, started: float) -> None:
        self._metrics.poll(outcome, time.perf_counter() - started)
        span.set_attribute("icgw.poll.outcome", outcome)

    def _check_continuity(self, first_nonce: int) -> None:
        if self._next_nonce != 0 and first_nonce != self._next_nonce:
            # The canister dropped messages we never saw (or was reinstalled). Clients detect the gap in
            # their sequence numbers; the poller resynchronises instead of giving up on every client.
            log.warning(
                "canister %s skipped from nonce %d to %d",
                self.canister_text,
                self._next_nonce,
                first_nonce,
            )
            self._metrics.nonce_gap()

    def _fan_out(self, batch: MessagesBatch) -> None:
        clients = self.clients
        for principal, nonce, frame in batch.routed_frames():
            client = clients.get((principal, nonce))
            if client is not None:
                client.deliver(frame)

    def _backoff(self, reason: str) -> float:
        self._failures += 1
        delay = min(MAX_BACKOFF_S, self._interval * (2 ** min(self._failures, 10)))
        delay = random.uniform(delay / 2, delay)
        log.warning("canister %s: %s; retrying in %.2fs", self.canister_text, reason, delay)
        return delay

    def _close_all(self, code: WSCloseCode, reason: str) -> None:
        for client in list(self.clients.values()):
            client.close_from_gateway(code, reason)
