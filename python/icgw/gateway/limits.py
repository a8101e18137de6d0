"""Per-client admission limits that keep one client from costing the others."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows `rate` events per second on average with bursts of up to `burst` events.

    Refilled lazily on each `take`, so an idle client costs nothing.
    """

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._updated = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Spend one token; False when the client is over its rate."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
