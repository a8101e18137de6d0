"""Canister time for the emulator: wall-clock time plus an offset, or a frozen time that tests move.

The CDK's behaviour is defined in terms of canister time and timers (the ack tick every
`send_ack_interval_ms`, the keep-alive check 60 s later). A running emulator follows the wall clock and
its timers fire by themselves on the asyncio loop; an admin endpoint can still jump time forward with
`advance`. Tests freeze time (`ManualClock`) and move it only with `advance`, so every timer fires
deterministically.

Timers fire the way the IC runs them: a timer whose deadline has passed runs at the *current* canister
time (a round at or after the deadline), never back-dated to its deadline. This matters to the CDK:
the ack tick after `advance(T + 1 ms)` sees messages older than `T` and trims them, exactly as on
PocketIC. Timers fire in deadline order, ties in the order they were set; a timer set by a callback
with a deadline already passed fires in the same sweep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(order=True, slots=True)
class Timer:
    """A pending one-shot timer; `cancel()` makes it a no-op."""

    due_ns: int
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class CanisterClock:
    """Canister time with timers.

    Real-time mode (default): `now_ns()` is the wall clock plus `offset_ns`, and the next due timer is
    armed on the running asyncio loop with `call_at`, so timers fire by themselves. Manual mode
    (`manual=True`): time stands still at `start_ns` (default: the wall clock at creation) until
    `advance` moves it. In both modes `advance(ns)` moves time forward and fires what fell due.

    Canister time never goes backwards, even if the wall clock does.
    """

    def __init__(self, *, manual: bool = False, start_ns: int | None = None, offset_ns: int = 0) -> None:
        if offset_ns < 0:
            raise ValueError("the clock offset cannot be negative")
        if not manual and start_ns is not None:
            raise ValueError("start_ns is only meaningful for a manual clock")
        self.manual = manual
        # In manual mode the "wall clock" is frozen at the start time; the offset then carries all the
        # time that `advance` added, so both modes compute now = base + offset.
        self._frozen_base_ns = time.time_ns() if start_ns is None else start_ns
        self.offset_ns = offset_ns
        self._last_now_ns = 0
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_due_ns: int | None = None
        self._firing = False

    # --- time -------------------------------------------------------------------------------------

    def now_ns(self) -> int:
        base = self._frozen_base_ns if self.manual else time.time_ns()
        now = max(base + self.offset_ns, self._last_now_ns)
        self._last_now_ns = now
        return now

    def advance(self, delta_ns: int) -> None:
        """Move time forward by `delta_ns` and fire every timer that is now due, at the new time."""
        if delta_ns < 0:
            raise ValueError("time cannot go backwards")
        self.offset_ns += delta_ns
        # A loop wake-up armed before the jump is now too late: re-arm it from the new time.
        self._disarm()
        self.run_due_timers(raise_errors=True)

    def advance_ms(self, delta_ms: int) -> None:
        self.advance(delta_ms * NS_PER_MS)

    # --- timers -----------------------------------------------------------------------------------

    def call_later(self, delay_ns: int, callback: Callable[[], None]) -> Timer:
        """Run `callback` once, `delay_ns` from now (a negative delay means as soon as possible)."""
        timer = Timer(self.now_ns() + max(delay_ns, 0), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        self._arm()
        return timer

    def pending_timers(self) -> int:
        """How many timers are set and not cancelled (for tests and diagnostics)."""
        return sum(1 for t in self._timers if not t.cancelled)

    def next_due_ns(self) -> int | None:
        self._drop_cancelled_head()
        return self._timers[0].due_ns if self._timers else None

    def run_due_timers(self, *, raise_errors: bool = False) -> int:
        """Fire every timer whose deadline has passed, in deadline order; returns how many fired.

        With `raise_errors`, the first exception from a callback propagates once the sweep is over
        (the remaining due timers still fire); otherwise it is logged, as a trapping timer on the IC
        does not stop the canister.
        """
        if self._firing:
            # A callback that advances the clock: the sweep already running picks up what fell due.
            return 0
        self._firing = True
        fired = 0
        first_error: BaseException | None = None
        try:
            while True:
                self._drop_cancelled_head()
                if not self._timers or self._timers[0].due_ns > self.now_ns():
                    break
                timer = heapq.heappop(self._timers)
                fired += 1
                try:
                    timer.callback()
                except Exception as exc:
                    if raise_errors and first_error is None:
                        first_error = exc
                    else:
                        logger.exception("canister timer callback failed")
        finally:
            self._firing = False
            self._arm()
        if first_error is not None:
            raise first_error
        return fired

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm real-time timers on `loop` (by default the loop running when a timer is set)."""
        self._loop = loop
        self._disarm()
        self._arm()

    def close(self) -> None:
        """Cancel every timer and the loop wake-up (when an emulator shuts down)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._disarm()

    # --- internals --------------------------------------------------------------------------------

    def _drop_cancelled_head(self) -> None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)

    def _disarm(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup = None
        self._wakeup_due_ns = None

    def _arm(self) -> None:
        """Make sure the loop wakes up for the earliest pending timer (real-time mode only)."""
        if self.manual or self._firing:
            return
        due = self.next_due_ns()
        if due is None:
            self._disarm()
            return
        if self._wakeup is not None and self._wakeup_due_ns is not None and self._wakeup_due_ns <= due:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                # No loop yet (set up before the server starts): armed by the next call made on a loop.
                return
            self._loop = loop
        self._disarm()
        delay_s = max(due - self.now_ns(), 0) / NS_PER_S
        self._wakeup = loop.call_at(loop.time() + delay_s, self._on_wakeup)
        self._wakeup_due_ns = due

    def _on_wakeup(self) -> None:
        self._wakeup = None
        self._wakeup_due_ns = None
        # The loop's monotonic clock and the wall clock drift apart slightly: if we woke up a little
        # early, `_arm` (called at the end of the sweep) simply schedules another wake-up.
        self.run_due_timers()


class ManualClock(CanisterClock):
    """Time stands still until `advance` is called; for tests."""

    def __init__(self, start_ns: int | None = None) -> None:
        super().__init__(manual=True, start_ns=start_ns)


class RealClock(CanisterClock):
    """Wall-clock time plus an offset that `advance` moves forward; timers fire on the asyncio loop."""

    def __init__(self, offset_ns: int = 0) -> None:
        super().__init__(manual=False, offset_ns=offset_ns)
