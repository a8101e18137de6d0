"""Fault injection: a seeded share of IC API requests fails the way an overloaded or flaky replica does.

Faults apply to the IC API (`POST /api/...`) only, never to `/api/v2/status` or the emulator's own
endpoints, and they hit a request before it is processed: a faulted call is not executed. The
generator is seeded, so a given seed and request order always fault the same requests.

- `5xx`: answered at once with 503 Service Unavailable (agents retry it).
- `timeout`: never answered; the connection is closed after a hold time (the client's own timeout
  normally fires first).
- `drop`: the connection is closed at once without an answer.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Literal

from icgw.replica.config import FaultConfig
from icgw.replica.http_server import HttpResponse

Fault = Literal["5xx", "timeout", "drop"]


@dataclass(slots=True)
class FaultCounts:
    """How many faults of each kind were injected (for tests and logs)."""

    by_kind: dict[Fault, int] = field(default_factory=lambda: {"5xx": 0, "timeout": 0, "drop": 0})

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


class FaultInjector:
    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self.counts = FaultCounts()

    def draw(self) -> Fault | None:
        """Decide the fate of the next API request (one draw per request, in arrival order)."""
        c = self._config
        if not c.enabled:
            return None
        r = self._rng.random()
        fault: Fault | None = None
        if r < c.fraction_5xx:
            fault = "5xx"
        elif r < c.fraction_5xx + c.fraction_timeout:
            fault = "timeout"
        elif r < c.fraction_5xx + c.fraction_timeout + c.fraction_drop:
            fault = "drop"
        if fault is not None:
            self.counts.by_kind[fault] += 1
        return fault

    def respond(self, fault: Fault) -> HttpResponse | asyncio.Future[HttpResponse]:
        """The answer a faulted request gets (a future that resolves late for a timeout)."""
        if fault == "5xx":
            return HttpResponse.text(503, "fault injected: the replica is unavailable\n")
        if fault == "drop":
            return HttpResponse.dropped()
        loop = asyncio.get_running_loop()
        held: asyncio.Future[HttpResponse] = loop.create_future()
        loop.call_later(
            self._config.timeout_hold_ms / 1000,
            lambda: None if held.done() else held.set_result(HttpResponse.dropped()),
        )
        return held
