"""AckTracker: the SDK's ack queue rules and its single restartable timer."""

from __future__ import annotations

import asyncio

import pytest

from icgw.wsclient import AckTimeoutError, AckTracker, ProtocolError


def tracker(expiration_s: float = 10.0) -> tuple[AckTracker, list[int]]:
    expired: list[int] = []
    loop = asyncio.get_running_loop()
    return AckTracker(expiration_s, lambda: expired.append(1), loop), expired


async def test_ack_removes_every_entry_up_to_the_acked_number() -> None:
    acks, _ = tracker()
    for seq in (1, 2, 3):
        acks.add(seq)
    acks.ack(2)
    assert acks.pending == [3]
    acks.ack(1)  # older than what is pending: nothing to remove, not an error
    assert acks.pending == [3]
    acks.clear()


async def test_sequence_numbers_must_increase() -> None:
    acks, _ = tracker()
    acks.add(2)
    with pytest.raises(ProtocolError):
        acks.add(2)
    acks.clear()


async def test_ack_beyond_the_last_sent_message_is_an_error() -> None:
    acks, _ = tracker()
    acks.add(1)
    with pytest.raises(ProtocolError, match="Ack message error"):
        acks.ack(2)
    acks.clear()


async def test_any_ack_is_accepted_with_nothing_pending() -> None:
    acks, _ = tracker()
    acks.ack(42)
    assert acks.pending == []
    acks.clear()


async def test_timer_fires_without_acks_even_with_nothing_pending() -> None:
    acks, expired = tracker(0.05)
    acks.ack(0)  # an ack starts the timer
    await asyncio.sleep(0.15)
    assert expired == [1]


async def test_each_ack_restarts_the_timer() -> None:
    acks, expired = tracker(0.2)
    acks.add(1)
    for _ in range(4):
        await asyncio.sleep(0.1)
        acks.ack(1)
    assert expired == []
    acks.clear()
    await asyncio.sleep(0.3)
    assert expired == []  # cleared: no timer left


async def test_no_timer_before_anything_is_sent_or_acked() -> None:
    _, expired = tracker(0.05)
    await asyncio.sleep(0.1)
    assert expired == []


async def test_ack_leaving_an_expired_entry_times_out() -> None:
    acks, _ = tracker(0.05)
    acks.add(1)
    acks.add(2)
    await asyncio.sleep(0.1)
    with pytest.raises(AckTimeoutError, match=r"sequence numbers: \[2\]"):
        acks.ack(1)
    acks.clear()
