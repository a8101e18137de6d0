"""Summaries of latency samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ms(samples_ns: Iterable[int]) -> dict[str, float | int]:
    """count, p50, p90, p99 and max of nanosecond samples, in milliseconds (NaN when there are none)."""
    values = sorted(samples_ns)
    summary: dict[str, float | int] = {"count": len(values)}
    for p in PERCENTILES:
        summary[f"p{p}_ms"] = percentile(values, p) / 1e6
    summary["max_ms"] = values[-1] / 1e6 if values else math.nan
    return summary
