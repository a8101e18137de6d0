"""One poller per canister: fetch certified messages with `ws_get_messages`, verify them, fan them out.

Timing (PROTOCOL.md §5.4, improved): poll again at once while the canister says its queue is not drained
or while messages keep coming; otherwise wait for the next tick of the polling interval, or less when a
client's call was just relayed (the reply to it is likely queued already). Transient failures back off with
jitter and keep every client; a batch whose certificate does not verify is never relayed.

A canister's queue for this gateway can start again from nonce 0 while the poller is further on: the
canister was reinstalled, or the replica lost its state. Polling on from the old nonce would then hide
every new message until the new nonces caught up. The poller notices when a client's ws_open was accepted
but the queue is drained without its OpenMessage, checks the last message it relayed (see
`_queue_restarted`) and, if the queue did start again, polls from 0.
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
        # The last batch relayed: it holds the message at `_next_nonce - 1`, for `_queue_restarted`.
        self._last_batch: MessagesBatch | None = None
        # Clients whose ws_open the IC accepted and whose first message has not come yet, with the
        # number of the first poll that started after the acceptance.
        self._awaiting_first_message: dict[tuple[bytes, int], int] = {}
        self._polls_started = 0
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

    def open_accepted(self, client_key: tuple[bytes, int]) -> None:
        """The IC accepted this client's ws_open: the canister queues its OpenMessage, so a poll that
        drains the queue without it means the queue started again below the poller's nonce."""
        self._awaiting_first_message.setdefault(client_key, self._polls_started)
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
                # Cleared before the query, not before the sleep: a wake that arrives while the query is
                # in flight (a call relayed meanwhile, whose reply this answer cannot hold) must cut the
                # next sleep short instead of being forgotten.
                self._wake.clear()
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _poll_once(self, span: TraceSpan = NOOP_SPAN) -> float:
        """One query and its fan-out; returns how long to wait before the next one (0: at once)."""
        if span.is_recording():
            span.set_attribute("icgw.poll.nonce", self._next_nonce)
        poll_number = self._polls_started
        self._polls_started += 1
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
            if self._first_message_overdue(poll_number):
                return await self._check_queue_restart(poll_number, span)
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
        self._last_batch = batch
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
        awaiting = self._awaiting_first_message
        for principal, nonce, frame in batch.routed_frames():
            key = (principal, nonce)
            client = clients.get(key)
            if client is not None:
                client.deliver(frame)
            if awaiting:
                awaiting.pop(key, None)

    # --- a queue that started again ----------------------------------------------------------------

    def _first_message_overdue(self, poll_number: int) -> bool:
        """Whether this drained poll started after some client's ws_open was accepted, without its
        first message coming. Only a poller past nonce 0 can have missed it."""
        awaiting = self._awaiting_first_message
        return (
            bool(awaiting)
            and self._next_nonce > 0
            and any(first_poll <= poll_number for first_poll in awaiting.values())
        )

    async def _check_queue_restart(self, poll_number: int, span: TraceSpan) -> float:
        restarted = await self._queue_restarted()
        if span.is_recording():
            span.set_attribute("icgw.poll.queue_restarted", str(restarted).lower())
        if restarted is None:  # the IC could not tell us now; the next drained poll asks again
            return self._interval
        if not restarted:
            # The OpenMessages are still to come (their calls were accepted but not executed yet).
            for key, first_poll in list(self._awaiting_first_message.items()):
                if first_poll <= poll_number:
                    del self._awaiting_first_message[key]
            return self._interval
        log.warning(
            "canister %s started its message queue for this gateway again (reinstalled, or the replica "
            "lost its state): polling from nonce 0 instead of %d",
            self.canister_text,
            self._next_nonce,
        )
        self._metrics.nonce_gap()
        self._next_nonce = 0
        self._last_batch = None
        self._awaiting_first_message.clear()  # the poll from 0 brings their OpenMessages
        return 0.0

    async def _queue_restarted(self) -> bool | None:
        """Whether the canister's queue for this gateway started again from nonce 0; None if unknown.

        Asks for the last message relayed, at `_next_nonce - 1`. A queue that went on still holds it, or,
        if the canister trimmed it, holds newer messages (the CDK trims only when it queues a new one). A
        queue that started again holds nothing that far, or another message under that nonce.
        """
        last = self._last_batch
        nonce = self._next_nonce - 1
        try:
            reply = await asyncio.wait_for(
                self._query(self.canister_id, ws_get_messages_arg(nonce)), self._timeout
            )
            probe = decode_messages_reply(reply)
            if len(probe) == 0:
                return True
            self._verify(probe)
        except (TimeoutError, TransientPollError, FatalPollError, CoreError) as error:
            log.info("canister %s: cannot check its queue now: %s", self.canister_text, error)
            return None
        if last is None or probe.first_nonce != nonce:
            return False
        return probe.messages[0][3] != last.messages[-1][3]

    def _backoff(self, reason: str) -> float:
        self._failures += 1
        delay = min(MAX_BACKOFF_S, self._interval * (2 ** min(self._failures, 10)))
        delay = random.uniform(delay / 2, delay)
        log.warning("canister %s: %s; retrying in %.2fs", self.canister_text, reason, delay)
        return delay

    def _close_all(self, code: WSCloseCode, reason: str) -> None:
        for client in list(self.clients.values()):
            client.close_from_gateway(code, reason)
