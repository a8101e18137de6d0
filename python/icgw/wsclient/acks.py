"""The SDK's bookkeeping of acknowledgements (PROTOCOL.md §7.3, `ic-websocket-js` AckMessagesQueue).

Every `ws_message` the client hands to the gateway (application data and keep-alives alike) waits
for the canister's AckMessage. One timer of `ack interval + 30 s` starts with the first message and is
restarted by every AckMessage; when it runs out the SDK gives the connection up, even with nothing
pending: once the client has sent or been acked anything, an AckMessage must arrive at least that
often. Keeping the same rule lets the client detect a gateway that stopped relaying.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .errors import AckTimeoutError, ProtocolError

# The SDK allows an ack this much later than the canister's ack interval (COMMUNICATION_LATENCY_BOUND_MS).
ACK_LATENCY_ALLOWANCE_MS = 30_000


class AckTracker:
    """Sequence numbers sent and not yet acknowledged, and the ack deadline.

    `on_timeout` is called (once per expiry) when no AckMessage came within `expiration_s`.
    """

    def __init__(
        self, expiration_s: float, on_timeout: Callable[[], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.expiration_s = expiration_s
        self._on_timeout = on_timeout
        self._loop = loop
        # (sequence number, loop time it was sent), in sending order.
        self._pending: deque[tuple[int, float]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> list[int]:
        """The sequence numbers still waiting for an ack, oldest first."""
        return [seq for seq, _ in self._pending]

    def add(self, sequence_num: int) -> None:
        """Record a sent message. Sequence numbers must increase, as in the SDK."""
        if self._pending and sequence_num <= self._pending[-1][0]:
            raise ProtocolError(
                f"Ack queue: sequence number {sequence_num} is not greater than {self._pending[-1][0]}"
            )
        self._pending.append((sequence_num, self._loop.time()))
        if self._timer is None:
            self._restart_timer()

    def ack(self, last_incoming_sequence_num: int) -> None:
        """Apply an AckMessage. ProtocolError if it acknowledges a message never sent, or if a message
        older than the expiration is still unacknowledged after it."""
        pending = self._pending
        if pending and last_incoming_sequence_num > pending[-1][0]:
            raise ProtocolError(
                f"Ack message error: ack for {last_incoming_sequence_num}, "
                f"but the last message sent is {pending[-1][0]}"
            )
        while pending and pending[0][0] <= last_incoming_sequence_num:
            pending.popleft()
        if pending and self._loop.time() - pending[0][1] > self.expiration_s:
            raise AckTimeoutError(
                f"Ack message timeout. Not received ack for sequence numbers: {self.pending}"
            )
        self._restart_timer()

    def clear(self) -> None:
        """Forget everything and stop the timer (the connection is closed)."""
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self.expiration_s, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._on_timeout()
