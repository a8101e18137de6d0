"""Canister clock: frozen (manual) time for tests, wall-clock time with self-firing timers otherwise."""

from __future__ import annotations

import asyncio
import time

import pytest

from icgw.replica.clock import NS_PER_MS, NS_PER_S, CanisterClock, ManualClock, RealClock

START = 1_700_000_000 * NS_PER_S


def test_manual_time_stands_still_until_advanced() -> None:
    clock = ManualClock(START)
    assert clock.now_ns() == START
    time.sleep(0.002)
    assert clock.now_ns() == START
    clock.advance(5)
    clock.advance_ms(2)
    assert clock.now_ns() == START + 5 + 2 * NS_PER_MS


def test_time_cannot_go_backwards() -> None:
    clock = ManualClock(START)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="negative"):
        CanisterClock(offset_ns=-1)
    with pytest.raises(ValueError, match="manual"):
        CanisterClock(start_ns=START)


def test_timers_fire_in_due_order_ties_in_creation_order_at_the_current_time() -> None:
    clock = ManualClock(START)
    fired: list[tuple[str, int]] = []
    clock.call_later(300, lambda: fired.append(("c", clock.now_ns())))
    clock.call_later(100, lambda: fired.append(("a", clock.now_ns())))
    clock.call_later(300, lambda: fired.append(("d", clock.now_ns())))
    clock.call_later(200, lambda: fired.append(("b", clock.now_ns())))
    clock.advance(99)
    assert fired == []
    clock.advance(1)
    assert fired == [("a", START + 100)]
    # A timer whose deadline passed runs at the time the clock reached, as in an IC round after it.
    clock.advance(1_000)
    assert fired[1:] == [("b", START + 1_100), ("c", START + 1_100), ("d", START + 1_100)]
    assert clock.pending_timers() == 0


def test_timers_set_by_callbacks_fire_in_the_same_sweep_when_already_due() -> None:
    clock = ManualClock(START)
    ticks: list[int] = []
    due = [START + 10]

    def tick() -> None:
        # An interval timer that keeps its phase, as the CDK's ack timer does.
        ticks.append(clock.now_ns())
        due[0] += 10
        clock.call_later(due[0] - clock.now_ns(), tick)

    clock.call_later(10, tick)
    clock.advance(35)
    assert ticks == [START + 35] * 3
    assert clock.next_due_ns() == START + 40
    clock.advance(5)
    assert ticks[-1] == START + 40


def test_cancelled_timers_do_not_fire() -> None:
    clock = ManualClock(START)
    fired: list[str] = []
    timer = clock.call_later(10, lambda: fired.append("cancelled"))
    clock.call_later(20, lambda: fired.append("kept"))
    timer.cancel()
    assert clock.pending_timers() == 1
    assert clock.next_due_ns() == START + 20
    clock.advance(100)
    assert fired == ["kept"]


def test_a_failing_timer_does_not_stop_the_others_and_its_error_surfaces() -> None:
    clock = ManualClock(START)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    clock.call_later(1, boom)
    clock.call_later(2, lambda: fired.append("after"))
    with pytest.raises(RuntimeError, match="boom"):
        clock.advance(10)
    assert fired == ["after"]
    assert clock.now_ns() == START + 10


def test_close_drops_every_timer() -> None:
    clock = ManualClock(START)
    fired: list[int] = []
    clock.call_later(1, lambda: fired.append(1))
    clock.close()
    clock.advance(10)
    assert fired == []
    assert clock.next_due_ns() is None


def test_real_clock_follows_the_wall_clock_plus_its_offset() -> None:
    clock = RealClock(offset_ns=5 * NS_PER_S)
    before = time.time_ns()
    now = clock.now_ns()
    after = time.time_ns()
    assert before + 5 * NS_PER_S <= now <= after + 5 * NS_PER_S
    clock.advance(NS_PER_S)
    assert clock.now_ns() >= after + 6 * NS_PER_S
    assert clock.offset_ns == 6 * NS_PER_S


def test_real_clock_is_monotonic() -> None:
    clock = RealClock()
    readings = [clock.now_ns() for _ in range(1_000)]
    assert readings == sorted(readings)


async def test_real_clock_timers_fire_by_themselves_in_due_order() -> None:
    clock = RealClock()
    fired: list[tuple[str, int]] = []
    done = asyncio.Event()
    clock.call_later(30 * NS_PER_MS, lambda: (fired.append(("late", clock.now_ns())), done.set()))
    start = clock.now_ns()
    clock.call_later(10 * NS_PER_MS, lambda: fired.append(("early", clock.now_ns())))
    await asyncio.wait_for(done.wait(), timeout=2)
    assert [name for name, _ in fired] == ["early", "late"]
    assert fired[0][1] >= start + 10 * NS_PER_MS
    assert fired[1][1] >= start + 30 * NS_PER_MS - NS_PER_MS  # armed just before `start` was read
    clock.close()


async def test_real_clock_advance_fires_what_fell_due_without_waiting() -> None:
    clock = RealClock()
    fired: list[int] = []
    clock.call_later(3_600 * NS_PER_S, lambda: fired.append(clock.now_ns()))
    clock.advance(3_600 * NS_PER_S)
    assert len(fired) == 1
    assert fired[0] >= time.time_ns() + 3_599 * NS_PER_S
    clock.close()


async def test_real_clock_rearms_for_an_earlier_timer_and_skips_cancelled_ones() -> None:
    clock = RealClock()
    fired: list[str] = []
    done = asyncio.Event()
    late = clock.call_later(10 * NS_PER_S, lambda: fired.append("late"))
    clock.call_later(5 * NS_PER_MS, lambda: (fired.append("early"), done.set()))
    await asyncio.wait_for(done.wait(), timeout=2)
    late.cancel()
    assert fired == ["early"]
    assert clock.pending_timers() == 0
    clock.close()


async def test_timers_set_before_a_loop_runs_are_armed_on_bind() -> None:
    clock = RealClock()
    fired = asyncio.Event()
    # No running loop in this synchronous helper: the timer waits to be armed.
    await asyncio.get_running_loop().run_in_executor(None, clock.call_later, NS_PER_MS, fired.set)
    clock.bind_loop(asyncio.get_running_loop())
    await asyncio.wait_for(fired.wait(), timeout=2)
    clock.close()


async def test_real_clock_advance_rearms_the_wakeup_for_the_new_time() -> None:
    clock = RealClock()
    fired = asyncio.Event()
    clock.call_later(10 * NS_PER_S, fired.set)  # armed ten seconds of wall time away
    clock.advance(10 * NS_PER_S - 20 * NS_PER_MS)  # now only 20 ms of canister time remain
    assert not fired.is_set()
    await asyncio.wait_for(fired.wait(), timeout=1)
    clock.close()
