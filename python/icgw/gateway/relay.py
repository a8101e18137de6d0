"""The per-client ordered relay: client envelopes go to the IC one at a time, in arrival order.

The CDK rejects a `ws_message` whose sequence number is not the next one and then closes the client, so
order matters more than parallelism for one client. Each client gets a FIFO drained by at most one task;
clients are independent of each other, so the gateway as a whole keeps many calls in flight. The drain task
exists only while the FIFO has work, which keeps an idle connection down to a deque and a few fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)


class RelayFull(Exception):
    """The client has more envelopes waiting than the gateway is willing to hold for it."""


class CallSubmitter(Protocol):
    async def __call__(self, canister_id: bytes, envelope: bytes) -> None:
        """Hand one signed envelope to the IC; raise if the IC did not accept or answer it."""
        ...


class OrderedRelay:
    """A FIFO of one client's envelopes for one canister, submitted strictly one after another."""

    __slots__ = (
        "_canister_id",
        "_closed",
        "_max_pending",
        "_on_done",
        "_on_error",
        "_pending",
        "_submit",
        "_task",
    )

    def __init__(
        self,
        canister_id: bytes,
        submit: CallSubmitter,
        *,
        max_pending: int,
        on_done: Callable[[str, int, float], None],
        on_error: Callable[[str, BaseException], Awaitable[None] | None],
    ) -> None:
        self._canister_id = canister_id
        self._submit = submit
        self._max_pending = max_pending
        self._on_done = on_done
        self._on_error = on_error
        # Made on the first push and dropped when drained: an idle client holds no queue (a deque is
        # over 600 bytes, most of an idle connection's Python state).
        self._pending: deque[tuple[str, bytes, float]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending) if self._pending is not None else 0

    def push(self, method_name: str, envelope: bytes) -> None:
        """Queue one envelope; raises `RelayFull` when the client is too far ahead of the IC."""
        if self._closed:
            return
        if self._pending is None:
            self._pending = deque()
        elif len(self._pending) >= self._max_pending:
            raise RelayFull(f"more than {self._max_pending} envelopes are waiting for the IC")
        self._pending.append((method_name, envelope, time.perf_counter()))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def close(self) -> None:
        """Drop whatever has not been submitted yet; an envelope already on its way completes."""
        self._closed = True
        self._pending = None

    async def _drain(self) -> None:
        try:
            while self._pending and not self._closed:
                method_name, envelope, queued_at = self._pending[0]
                try:
                    await self._submit(self._canister_id, envelope)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # each failure is reported; the next envelope still goes
                    outcome = self._on_error(method_name, error)
                    if outcome is not None:
                        await outcome
                else:
                    self._on_done(method_name, len(envelope), time.perf_counter() - queued_at)
                if self._pending:
                    self._pending.popleft()
        finally:
            self._task = None
            if not self._pending:
                self._pending = None
