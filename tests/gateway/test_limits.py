"""The per-client token bucket."""

from __future__ import annotations

import pytest

from icgw.gateway.limits import TokenBucket


def test_bursts_up_to_the_limit_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    start = bucket._updated
    assert all(bucket.take(start) for _ in range(5))
    assert not bucket.take(start)
    assert bucket.take(start + 0.11)  # one token back after 1/rate seconds
    assert not bucket.take(start + 0.11)


def test_refill_never_exceeds_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=3)
    later = bucket._updated + 60
    assert [bucket.take(later) for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_nonsense_limits_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate, burst)
