"""The canister poller: nonces, end of queue, timeouts, back-off, verification, routing, lifetime."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import pytest
from picows import WSCloseCode

from icgw.core import CertificateError, MessagesBatch, decode_websocket_message
from icgw.gateway.poller import CanisterPoller, FatalPollError, TransientPollError, ws_get_messages_arg

from ..certified import CANISTER, CLIENT, ROOT_KEY, build_reply, contents, empty_reply

OTHER_CLIENT = bytes(28) + b"\x02"


class FakeClient:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[WSCloseCode, str] | None = None

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close_from_gateway(self, code: WSCloseCode, reason: str) -> None:
        self.closed = (code, reason)

    def sequence_numbers(self) -> list[int]:
        import cbor2

        return [decode_websocket_message(cbor2.loads(f)["content"])["sequence_num"] for f in self.frames]


class ScriptedCanister:
    """Answers ws_get_messages from a script; records the nonce and time of each query."""

    def __init__(self, script: list[object]) -> None:
        self.script = deque(script)
        self.queries: list[tuple[int, float]] = []

    async def __call__(self, canister_id: bytes, arg: bytes) -> bytes:
        assert canister_id == CANISTER
        nonce = int.from_bytes(arg[-8:], "little")
        assert arg == ws_get_messages_arg(nonce)
        self.queries.append((nonce, time.monotonic()))
        step = self.script.popleft() if self.script else empty_reply()
        if isinstance(step, BaseException):
            raise step
        if step == "hang":
            await asyncio.sleep(3600)
        if step == "slow":
            await asyncio.sleep(0.2)
            step = empty_reply()
        assert isinstance(step, bytes)
        return step


def verify(batch: MessagesBatch) -> None:
    batch.verify(ROOT_KEY, CANISTER)


def make_poller(
    canister: ScriptedCanister, *, interval: float = 0.05, timeout: float = 1.0, linger: float = 10.0
) -> tuple[CanisterPoller, list[CanisterPoller]]:
    stopped: list[CanisterPoller] = []
    poller = CanisterPoller(
        CANISTER,
        canister,
        verify,
        polling_interval_s=interval,
        poll_timeout_s=timeout,
        linger_s=linger,
        on_stop=stopped.append,
    )
    return poller, stopped


async def until(condition: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def seq_contents(first_seq: int, n: int) -> list[bytes]:
    from icgw.core import encode_websocket_message

    return [encode_websocket_message(CLIENT, 7, first_seq + i, 1, False, b"DIDL\x00\x00") for i in range(n)]


async def test_nonces_follow_the_last_key_and_messages_arrive_in_order() -> None:
    canister = ScriptedCanister(
        [build_reply(seq_contents(1, 3), first_nonce=0), build_reply(seq_contents(4, 2), first_nonce=3)]
    )
    poller, _ = make_poller(canister)
    client = FakeClient()
    poller.clients[(CLIENT, 7)] = client
    poller.start()
    await until(lambda: len(client.frames) == 5)
    await until(lambda: poller.next_nonce == 5)
    assert client.sequence_numbers() == [1, 2, 3, 4, 5]
    assert [nonce for nonce, _ in canister.queries[:3]] == [0, 3, 5]
    await poller.stop()


async def test_an_undrained_queue_is_polled_again_at_once() -> None:
    canister = ScriptedCanister(
        [build_reply(contents(2), is_end_of_queue=False), build_reply(contents(1), first_nonce=2)]
    )
    poller, _ = make_poller(canister, interval=1.0)
    poller.clients[(CLIENT, 7)] = FakeClient()
    poller.start()
    await until(lambda: len(canister.queries) >= 2)
    assert canister.queries[1][1] - canister.queries[0][1] < 0.5
    await poller.stop()


async def test_an_empty_reply_waits_for_the_interval_unless_woken() -> None:
    canister = ScriptedCanister([empty_reply(), empty_reply(), empty_reply()])
    poller, _ = make_poller(canister, interval=0.3)
    poller.clients[(CLIENT, 7)] = FakeClient()
    poller.start()
    await until(lambda: len(canister.queries) >= 2)
    assert canister.queries[1][1] - canister.queries[0][1] >= 0.25
    poller.wake()
    await until(lambda: len(canister.queries) >= 3)
    assert canister.queries[2][1] - canister.queries[1][1] < 0.25
    await poller.stop()


async def test_a_wake_during_a_query_polls_again_when_it_returns() -> None:
    # A client's call relayed while a poll is in flight: its reply was not in that poll's answer, so the
    # next poll must not wait for the interval.
    canister = ScriptedCanister(["slow", empty_reply()])
    poller, _ = make_poller(canister, interval=2.0)
    poller.clients[(CLIENT, 7)] = FakeClient()
    poller.start()
    await until(lambda: len(canister.queries) >= 1)
    poller.wake()
    await until(lambda: len(canister.queries) >= 2, within=1.0)
    assert canister.queries[1][1] - canister.queries[0][1] < 0.5
    await poller.stop()


async def test_a_timed_out_query_is_repeated_at_once_with_the_same_nonce() -> None:
    canister = ScriptedCanister(["hang", build_reply(contents(1))])
    poller, _ = make_poller(canister, interval=1.0, timeout=0.1)
    client = FakeClient()
    poller.clients[(CLIENT, 7)] = client
    poller.start()
    await until(lambda: len(client.frames) == 1)
    assert [nonce for nonce, _ in canister.queries[:2]] == [0, 0]
    await poller.stop()


async def test_transient_failures_back_off_and_keep_the_clients() -> None:
    failure = TransientPollError("connection refused")
    canister = ScriptedCanister([failure, failure, failure, build_reply(contents(1))])
    poller, _ = make_poller(canister, interval=0.02)
    client = FakeClient()
    poller.clients[(CLIENT, 7)] = client
    poller.start()
    await until(lambda: len(client.frames) == 1)
    gaps = [b[1] - a[1] for a, b in zip(canister.queries, canister.queries[1:], strict=False)]
    assert gaps[2] > gaps[0]  # the delay grows
    assert client.closed is None
    await poller.stop()


async def test_a_canister_that_cannot_be_polled_closes_its_clients() -> None:
    canister = ScriptedCanister([FatalPollError("canister not found")])
    poller, stopped = make_poller(canister)
    client = FakeClient()
    poller.clients[(CLIENT, 7)] = client
    poller.start()
    await until(lambda: stopped == [poller])
    assert client.closed is not None
    assert client.closed[0] == WSCloseCode.BAD_GATEWAY
    assert "canister not found" in client.closed[1]


async def test_a_forged_batch_is_never_relayed_and_is_asked_for_again() -> None:
    forged = build_reply(contents(2), tamper=b"\xa0")
    canister = ScriptedCanister([forged, build_reply(contents(2))])
    poller, _ = make_poller(canister, interval=0.01)
    client = FakeClient()
    poller.clients[(CLIENT, 7)] = client
    poller.start()
    await until(lambda: len(client.frames) == 2)
    assert [nonce for nonce, _ in canister.queries[:2]] == [0, 0]
    assert client.sequence_numbers() == [1, 2]
    await poller.stop()


async def test_messages_go_only_to_their_own_client() -> None:
    routes = [(CLIENT, 7), (OTHER_CLIENT, 1), (CLIENT, 8), (CLIENT, 7)]
    canister = ScriptedCanister([build_reply(contents(4), clients=routes)])
    poller, _ = make_poller(canister)
    mine, other = FakeClient(), FakeClient()
    poller.clients[(CLIENT, 7)] = mine
    poller.clients[(OTHER_CLIENT, 1)] = other
    poller.start()
    await until(lambda: len(mine.frames) == 2 and len(other.frames) == 1)
    await poller.stop()


async def test_the_poller_stops_a_while_after_its_last_client_left() -> None:
    canister = ScriptedCanister([])
    poller, stopped = make_poller(canister, interval=0.02, linger=0.2)
    poller.start()
    await until(lambda: stopped == [poller], within=2.0)
    assert len(canister.queries) >= 2  # it kept polling during the linger time


@pytest.mark.parametrize("nonce", [0, 1, 2**64 - 1])
def test_the_query_argument_is_the_candid_record(nonce: int) -> None:
    from icgw.core import candid_decode_values

    assert candid_decode_values("(CanisterWsGetMessagesArguments)", ws_get_messages_arg(nonce)) == [
        {"nonce": nonce}
    ]


def test_verification_failure_raises_certificate_error() -> None:
    from icgw.core import decode_messages_reply

    with pytest.raises(CertificateError):
        verify(decode_messages_reply(build_reply(contents(1), tamper=b"\xa0")))
