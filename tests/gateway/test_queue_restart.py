"""The poller notices a canister whose message queue for this gateway started again from nonce 0.

That happens when the canister is reinstalled or the replica loses its state while the gateway keeps
polling: the poller is at nonce N, the new queue starts at 0. The sign is a client whose ws_open the IC
accepted but whose OpenMessage is not in a drained queue; the check is the last message relayed.
"""

from __future__ import annotations

import time

from icgw.core import encode_websocket_message
from icgw.gateway.observer import GatewayObserver
from icgw.gateway.poller import CanisterPoller, TransientPollError

from ..certified import CANISTER, CLIENT, build_reply, empty_reply
from .test_poller import FakeClient, until, verify

OLD_CLIENT = (CLIENT, 7)
NEW_CLIENT = (bytes(28) + b"\x02", 9)


class QueueCanister:
    """A CDK queue for one gateway: message i has nonce i. `restart()` empties it, as a reinstall does."""

    def __init__(self) -> None:
        self.queue: list[tuple[tuple[bytes, int], bytes]] = []
        self.seq: dict[tuple[bytes, int], int] = {}
        self.queried: list[int] = []
        self.failures: list[BaseException] = []

    def push(self, client: tuple[bytes, int], text: bytes = b"DIDL\x00\x00") -> None:
        seq = self.seq[client] = self.seq.get(client, 0) + 1
        # The timestamp makes the same message text queued again a different message, as on the IC.
        content = encode_websocket_message(client[0], client[1], seq, time.time_ns(), False, text)
        self.queue.append((client, content))

    def restart(self) -> None:
        self.queue, self.seq = [], {}

    async def __call__(self, canister_id: bytes, arg: bytes) -> bytes:
        nonce = int.from_bytes(arg[-8:], "little")
        self.queried.append(nonce)
        if self.failures:
            raise self.failures.pop(0)
        tail = self.queue[nonce:]
        if not tail:
            return empty_reply()
        return build_reply(
            [content for _, content in tail], first_nonce=nonce, clients=[client for client, _ in tail]
        )


class Counts(GatewayObserver):
    def __init__(self) -> None:
        self.nonce_gaps = 0

    def nonce_gap(self) -> None:
        self.nonce_gaps += 1


def start_poller(canister: QueueCanister) -> tuple[CanisterPoller, Counts, FakeClient]:
    counts = Counts()
    poller = CanisterPoller(
        CANISTER,
        canister,
        verify,
        polling_interval_s=0.01,
        poll_timeout_s=1.0,
        linger_s=10.0,
        on_stop=lambda _: None,
        observer=counts,
    )
    old = FakeClient()
    poller.clients[OLD_CLIENT] = old
    for _ in range(3):
        canister.push(OLD_CLIENT)
    poller.start()
    return poller, counts, old


def open_new_client(poller: CanisterPoller) -> FakeClient:
    new = FakeClient()
    poller.clients[NEW_CLIENT] = new
    poller.open_accepted(NEW_CLIENT)
    return new


async def test_a_restarted_queue_is_polled_from_zero() -> None:
    canister = QueueCanister()
    poller, counts, old = start_poller(canister)
    await until(lambda: poller.next_nonce == 3)

    canister.restart()
    canister.push(NEW_CLIENT)  # the new client's OpenMessage, at nonce 0
    new = open_new_client(poller)
    await until(lambda: len(new.frames) == 1)
    assert new.sequence_numbers() == [1]
    assert poller.next_nonce == 1
    assert counts.nonce_gaps == 1
    assert old.sequence_numbers() == [1, 2, 3]  # nothing again, nothing new
    assert canister.queried[canister.queried.index(2) + 1] == 0  # checked the last message, then from 0
    await poller.stop()


async def test_a_restarted_queue_that_reached_the_old_nonce_is_told_apart_by_its_content() -> None:
    canister = QueueCanister()
    poller, counts, old = start_poller(canister)
    await until(lambda: poller.next_nonce == 3)

    canister.restart()
    for _ in range(3):  # nonces 0, 1, 2 again, other messages
        canister.push(NEW_CLIENT)
    new = open_new_client(poller)
    await until(lambda: len(new.frames) == 3)
    assert new.sequence_numbers() == [1, 2, 3]
    assert old.sequence_numbers() == [1, 2, 3]
    assert counts.nonce_gaps == 1
    await poller.stop()


async def test_an_open_message_that_comes_late_does_not_restart_a_live_queue() -> None:
    """The IC accepted the ws_open but had not run it when the queue was drained: the last message is
    still there, so the poller keeps its nonce and the OpenMessage arrives in order."""
    canister = QueueCanister()
    poller, counts, _ = start_poller(canister)
    await until(lambda: poller.next_nonce == 3)

    new = open_new_client(poller)
    await until(lambda: 2 in canister.queried)  # the check
    queries_after_the_check = len(canister.queried)
    await until(lambda: len(canister.queried) > queries_after_the_check + 3)
    assert 0 not in canister.queried[1:]
    canister.push(NEW_CLIENT)
    await until(lambda: len(new.frames) == 1)
    assert poller.next_nonce == 4
    assert counts.nonce_gaps == 0
    assert canister.queried.count(2) == 1  # checked once, not on every drained poll
    await poller.stop()


async def test_the_check_waits_for_an_ic_that_can_answer() -> None:
    canister = QueueCanister()
    poller, counts, _ = start_poller(canister)
    await until(lambda: poller.next_nonce == 3)

    canister.restart()
    canister.push(NEW_CLIENT)
    canister.failures = [TransientPollError("503")] * 1  # the poll from 3 fails; the next drained one checks
    new = open_new_client(poller)
    await until(lambda: len(new.frames) == 1)
    assert counts.nonce_gaps == 1
    await poller.stop()


async def test_clients_that_get_their_first_message_need_no_check() -> None:
    canister = QueueCanister()
    poller, _, _ = start_poller(canister)
    await until(lambda: poller.next_nonce == 3)
    canister.push(NEW_CLIENT)
    new = open_new_client(poller)
    await until(lambda: len(new.frames) == 1)
    polls = len(canister.queried)
    await until(lambda: len(canister.queried) > polls + 5)
    assert 2 not in canister.queried
    await poller.stop()
