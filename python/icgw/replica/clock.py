"""Canister time for the emulator: the real clock by default, or a manual one that tests drive.

The CDK's behaviour is defined in terms of canister time and timers (the ack tick every
`send_ack_interval_ms`, the keep-alive check 60 s later), so tests need to move time forward and fire
timers deterministically, while a running emulator simply follows the wall clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Timer:
    due_ns: int
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time moves only when `advance` is called; timers fire in due order, ties in creation order."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._now_ns = time.time_ns() if start_ns is None else start_ns
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def now_ns(self) -> int:
        return self._now_ns

    def call_later(self, delay_ns: int, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self._now_ns + max(delay_ns, 0), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, delta_ns: int) -> None:
        """Move time forward by `delta_ns`, firing every timer that falls due on the way, at its due time."""
        if delta_ns < 0:
            raise ValueError("time cannot go backwards")
        target = self._now_ns + delta_ns
        while self._timers and self._timers[0].due_ns <= target:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now_ns = max(self._now_ns, timer.due_ns)
            timer.callback()
        self._now_ns = target

    def advance_ms(self, delta_ms: int) -> None:
        self.advance(delta_ms * 1_000_000)


class RealClock:
    """Wall-clock time; timers run on the asyncio event loop that is current when they are set."""

    def __init__(self, offset_ns: int = 0) -> None:
        # The offset lets an admin endpoint move a running emulator's time forward.
        self.offset_ns = offset_ns

    def now_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    def call_later(self, delay_ns: int, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(delay_ns, 0) / 1e9, callback)
