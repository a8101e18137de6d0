"""Arrival phases, as the reference's Artillery load test defines them (`gateway_load_tests.yml`).

Kept free of locust imports (locust monkey-patches the process when imported), so the harness and the
tests can use them.
"""

from __future__ import annotations

# (duration s, arrivals per second) of each phase: the reference's, and a short form for CI (about 20 s).
PHASES: dict[str, tuple[tuple[int, int], ...]] = {
    "artillery": ((5, 1), (30, 5), (5, 1)),
    "short": ((2, 1), (10, 5), (2, 1)),
}


def total_arrivals(phases: str) -> int:
    return sum(duration * rate for duration, rate in PHASES[phases])


def phases_duration_s(phases: str) -> int:
    return sum(duration for duration, _ in PHASES[phases])


def target(phases: str, elapsed_s: float) -> tuple[int, int] | None:
    """(users that should have arrived by the end of the current phase, its arrival rate), or None once
    every phase is over. Users never leave, so the user count is the number of arrivals."""
    arrived, phase_end = 0, 0
    for duration, rate in PHASES[phases]:
        phase_end += duration
        if elapsed_s < phase_end:
            return arrived + rate * duration, rate
        arrived += rate * duration
    return None
