"""The ordered relay: per-client FIFO, one envelope in flight, failures reported, bounded."""

from __future__ import annotations

import asyncio

import pytest

from icgw.gateway.relay import OrderedRelay, RelayFull


class RecordingIc:
    """Accepts envelopes after a delay that varies, so a relay that overlapped calls would reorder them."""

    def __init__(self, fail: set[bytes] | None = None) -> None:
        self.received: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail = fail or set()

    async def __call__(self, canister_id: bytes, envelope: bytes) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001 * (len(self.received) % 3))
            self.received.append(envelope)
            if envelope in self.fail:
                raise RuntimeError(f"rejected {envelope!r}")
        finally:
            self.in_flight -= 1


def make_relay(ic: RecordingIc, *, max_pending: int = 100) -> tuple[OrderedRelay, list[str], list[str]]:
    done: list[str] = []
    errors: list[str] = []
    relay = OrderedRelay(
        b"canister",
        ic,
        max_pending=max_pending,
        on_done=lambda method, nbytes, seconds: done.append(method),
        on_error=lambda method, error: errors.append(f"{method}: {error}"),
    )
    return relay, done, errors


async def wait_until_idle(relay: OrderedRelay) -> None:
    for _ in range(1000):
        if len(relay) == 0:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the relay never drained")


async def test_envelopes_reach_the_ic_in_arrival_order_one_at_a_time() -> None:
    ic = RecordingIc()
    relay, done, errors = make_relay(ic)
    envelopes = [f"envelope-{i}".encode() for i in range(50)]
    for envelope in envelopes:
        relay.push("ws_message", envelope)
    await wait_until_idle(relay)
    assert ic.received == envelopes
    assert ic.max_in_flight == 1
    assert done == ["ws_message"] * 50
    assert errors == []


async def test_a_rejected_envelope_is_reported_and_the_rest_still_go() -> None:
    ic = RecordingIc(fail={b"b"})
    relay, done, errors = make_relay(ic)
    for envelope in (b"a", b"b", b"c"):
        relay.push("ws_message", envelope)
    await wait_until_idle(relay)
    assert ic.received == [b"a", b"b", b"c"]
    assert errors == ["ws_message: rejected b'b'"]
    assert len(done) == 2


async def test_a_client_too_far_ahead_is_refused() -> None:
    relay, _, _ = make_relay(RecordingIc(), max_pending=3)
    for envelope in (b"1", b"2", b"3"):
        relay.push("ws_message", envelope)
    with pytest.raises(RelayFull, match="more than 3"):
        relay.push("ws_message", b"4")
    await wait_until_idle(relay)


async def test_close_drops_what_was_not_submitted() -> None:
    ic = RecordingIc()
    relay, _, _ = make_relay(ic)
    for envelope in (b"1", b"2", b"3"):
        relay.push("ws_message", envelope)
    relay.close()
    relay.push("ws_message", b"4")
    await asyncio.sleep(0.01)
    assert ic.received in ([], [b"1"])


async def test_an_idle_relay_holds_no_task() -> None:
    ic = RecordingIc()
    relay, _, _ = make_relay(ic)
    relay.push("ws_open", b"open")
    await wait_until_idle(relay)
    await asyncio.sleep(0)
    assert relay._task is None
