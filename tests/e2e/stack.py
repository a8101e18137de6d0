"""Async helpers for end-to-end tests: `python -m icgw.replica` and `python -m icgw` as processes, clients of
`icgw.wsclient` in the test's event loop, and the gateway's `/metrics` read over HTTP.

The process helpers of `processes.py` block while they start and stop processes; here they run in a worker
thread, so the clients in the test's loop keep answering the gateway (its shutdown waits for their CLOSE
frames) while a process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from icgw.core import Ed25519Identity, candid_decode_values, candid_encode_values, principal_from_text
from icgw.ic.agent import IcAgent
from icgw.wsclient import IcWebSocketClient, ReceivedMessage, encode_app_message

from .processes import GatewayProcess, ReplicaProcess, gateway, replica

T = TypeVar("T")
_RESULT = "(variant { Ok : null; Err : text })"
_METRICS_LINE = re.compile(r"metrics and health endpoint listening on (\S+):(\d+)")


@contextlib.asynccontextmanager
async def off_loop(manager: AbstractContextManager[T]) -> AsyncIterator[T]:
    """Enter and leave a blocking context manager in a worker thread."""
    value = await asyncio.to_thread(manager.__enter__)
    try:
        yield value
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


def start_replica(*args: str) -> contextlib.AbstractAsyncContextManager[ReplicaProcess]:
    return off_loop(replica(*args))


def start_gateway(ic_url: str, workdir: Path, *args: str) -> contextlib.AbstractAsyncContextManager[Gateway]:
    @contextlib.contextmanager
    def started() -> Iterator[Gateway]:
        with gateway(ic_url, workdir, "--polling-interval", "10", *args) as process:
            yield Gateway(process, ic_url)

    return off_loop(started())


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Metrics:
    """One scrape of `/metrics`: sample values by name and labels."""

    samples: Samples

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str) -> float:
        """The sum over every label value of one counter."""
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


@dataclass
class Gateway:
    process: GatewayProcess
    ic_url: str
    clients: list[IcWebSocketClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def metrics_url(self) -> str:
        for line in self.process.output:
            match = _METRICS_LINE.search(line)
            if match:
                return f"http://{match.group(1)}:{match.group(2)}/metrics"
        raise AssertionError(
            "the gateway did not log its metrics address:\n" + "\n".join(self.process.output)
        )

    async def metrics(self) -> Metrics:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(self.metrics_url) as response,
        ):
            assert response.status == 200
            text = await response.text()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return Metrics(samples)

    async def connect(self, canister: bytes | str, **options: Any) -> IcWebSocketClient:
        options.setdefault("ic_url", self.ic_url)
        client = await IcWebSocketClient.connect(self.url, canister, **options)
        self.clients.append(client)
        return client

    async def open_client(self, canister: bytes | str, **options: Any) -> IcWebSocketClient:
        """A client past its OpenMessage and the test canister's "ping" (sequence numbers 1 and 2)."""
        client = await self.connect(canister, **options)
        await asyncio.wait_for(client.open(), 20)
        ping = await asyncio.wait_for(client.receive(), 20)
        assert ping.app_message is not None
        assert (ping.sequence_num, ping.app_message["text"]) == (2, "ping")
        return client

    async def close_clients(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients))


async def ping_pong(client: IcWebSocketClient, rounds: int, label: str = "hello", within: float = 20) -> None:
    """`rounds` messages, each answered by the test canister with its text + " ping", in order."""
    first = client.next_incoming_sequence_num
    for round_ in range(rounds):
        await client.send_app_message(f"{label} {round_}")
        reply = await asyncio.wait_for(client.receive(), within)
        assert reply.app_message is not None
        assert reply.app_message["text"] == f"{label} {round_} ping"
        assert reply.sequence_num == first + round_


async def burst(client: IcWebSocketClient, count: int, label: str = "burst", within: float = 30) -> None:
    """`count` messages sent at once, without waiting; their answers must come back complete, in order."""
    first = client.next_incoming_sequence_num
    for index in range(count):
        client.send_nowait(encode_app_message(f"{label} {index}", 0))
    replies = [await asyncio.wait_for(client.receive(), within) for _ in range(count)]
    assert [reply.sequence_num for reply in replies] == list(range(first, first + count))
    texts = [reply.app_message["text"] if reply.app_message else None for reply in replies]
    assert texts == [f"{label} {index} ping" for index in range(count)]


class CanisterApp:
    """The test canister's own methods (`send`, `close`), called as an ordinary IC user."""

    def __init__(self, ic_url: str, canister: bytes | str) -> None:
        self.ic_url = ic_url
        self.canister = principal_from_text(canister) if isinstance(canister, str) else canister

    async def send(self, client: bytes, messages: list[bytes]) -> object:
        async with IcAgent(self.ic_url) as agent:
            reply = await agent.call(
                Ed25519Identity.generate(),
                self.canister,
                "send",
                candid_encode_values("(principal, vec blob)", [client, messages]),
            )
        (result,) = candid_decode_values(_RESULT, reply)
        return result


async def receive_all(client: IcWebSocketClient, count: int, within: float = 30) -> list[ReceivedMessage]:
    return [await asyncio.wait_for(client.receive(), within) for _ in range(count)]


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 20) -> None:
    """Wait until `condition()` is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return
        assert time.monotonic() < deadline, "the condition did not become true in time"
        await asyncio.sleep(0.05)
