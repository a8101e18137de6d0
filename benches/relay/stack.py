"""What a scenario runs against: the replica and the gateway under test, load generators, and the
harness's own conversations with the canister (pushing messages, reading the upstream report).

Every scenario gets a fresh stack in a folder of its own, so no state, connection or memory carries over
from one scenario to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benches.relay.canister import UPSTREAM_REPORT_TYPES
from benches.relay.control import GeneratorProcess, Message, all_expect
from benches.relay.procs import GatewayInfo, ReplicaInfo, start_gateway, start_replica
from benches.relay.settings import Settings
from icgw.core import ANONYMOUS, candid_decode_values, candid_encode_values, cbor_encode, principal_from_text
from icgw.ic.agent import IcAgent
from icgw.wsclient.messages import ingress_expiry

# How many `send` calls the harness keeps in flight while it pushes downstream messages.
PUSH_CONCURRENCY = 64


@dataclass
class IcStack:
    replica: ReplicaInfo
    gateway: GatewayInfo
    workdir: Path

    @property
    def canister_id(self) -> bytes:
        return principal_from_text(self.replica.canister_id)

    def check_alive(self) -> None:
        self.replica.managed.check_alive()
        self.gateway.managed.check_alive()

    def generator_job(self, settings: Settings) -> dict[str, Any]:
        return {
            "gateway_url": self.gateway.url,
            "canister_id": self.replica.canister_id,
            "root_key": self.replica.root_key.hex(),
            "verify": settings.verify,
        }


def replica_args(settings: Settings) -> list[str]:
    return [
        "--max-returned-messages",
        str(settings.max_returned_messages),
        "--query-delay-ms",
        str(settings.query_delay_ms),
        "--call-delay-ms",
        str(settings.call_delay_ms),
    ]


@contextlib.asynccontextmanager
async def ic_stack(settings: Settings, workdir: Path) -> AsyncIterator[IcStack]:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local folder, once
    replica = await start_replica(workdir, replica_args(settings))
    try:
        gateway = await start_gateway(
            settings.gateway_cmd, workdir, ic_url=replica.url, polling_ms=settings.polling_interval_ms
        )
        try:
            yield IcStack(replica, gateway, workdir)
        finally:
            await gateway.managed.stop()
    finally:
        await replica.managed.stop()


class GeneratorPool:
    """Load generator processes that share a scenario's clients between them."""

    def __init__(self, generators: list[GeneratorProcess]) -> None:
        self.generators = generators

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, count: int, job: Message, workdir: Path, deadline_s: float
    ) -> AsyncIterator[GeneratorPool]:
        generators: list[GeneratorProcess] = []
        try:
            for index in range(count):
                generators.append(
                    await GeneratorProcess.start(
                        index,
                        {
                            **job,
                            "index": index,
                            "deadline_s": deadline_s,
                            "raw_base_index": index * 1_000_000,
                        },
                        workdir,
                    )
                )
            yield cls(generators)
        finally:
            await asyncio.gather(*(g.stop() for g in generators))

    def shares(self, total: int) -> list[int]:
        """`total` split as evenly as possible, one share per generator."""
        n = len(self.generators)
        return [total // n + (1 if i < total % n else 0) for i in range(n)]

    async def each(
        self, command: str, per_generator: Sequence[dict[str, Any]], reply: str, wait_s: float
    ) -> list[Message]:
        for generator, fields in zip(self.generators, per_generator, strict=True):
            generator.send(command, **fields)
        return await all_expect(self.generators, reply, wait_s)

    async def all(self, command: str, reply: str, wait_s: float, **fields: Any) -> list[Message]:
        return await self.each(command, [fields] * len(self.generators), reply, wait_s)

    async def open(self, total: int, window: int, wait_s: float, **fields: Any) -> list[Message]:
        """Open `total` clients over the generators, `window` opens in flight in all."""
        shares = self.shares(total)
        windows = self.shares(max(window, len(self.generators)))
        return await self.each(
            fields.pop("command", "open"),
            [{"count": c, "window": max(1, w), **fields} for c, w in zip(shares, windows, strict=True)],
            "opened",
            wait_s,
        )

    def send(self, command: str, **fields: Any) -> None:
        for generator in self.generators:
            generator.send(command, **fields)

    def cpu_seconds(self) -> float:
        return sum(g.managed.cpu_seconds() for g in self.generators)


# --- the harness talking to the canister ---------------------------------------------------------------


def _anonymous_call(canister_id: bytes, method: str, arg: bytes) -> bytes:
    now = time.time_ns()
    content = {
        "request_type": "call",
        "sender": ANONYMOUS,
        "canister_id": canister_id,
        "method_name": method,
        "arg": arg,
        "ingress_expiry": ingress_expiry(now),
        "nonce": os.urandom(16),
    }
    return cbor_encode({"content": content})


async def push_messages(
    ic_url: str, canister_text: str, principals: Sequence[bytes], blobs: Sequence[bytes]
) -> float:
    """Make the canister send `blobs` to every client, one `send(principal, vec blob)` call per client.

    The calls go to the asynchronous v2 endpoint as the anonymous principal, so pushing costs the harness
    no signature and no certificate check (the messages arriving prove the calls ran). Returns the
    seconds it took to hand every call to the replica.
    """
    canister_id = principal_from_text(canister_text)
    url = f"{ic_url}/api/v2/canister/{canister_text}/call"
    semaphore = asyncio.Semaphore(PUSH_CONCURRENCY)
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=PUSH_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(principal: bytes) -> None:
            arg = candid_encode_values("(principal, vec blob)", [principal, list(blobs)])
            envelope = _anonymous_call(canister_id, "send", arg)
            async with (
                semaphore,
                http.post(url, data=envelope, headers={"content-type": "application/cbor"}) as response,
            ):
                body = await response.read()
                if response.status != 202:
                    raise RuntimeError(f"send to the canister: HTTP {response.status} {body[:200]!r}")

        await asyncio.gather(*(one(p) for p in principals))
    return time.perf_counter() - started


# Counters icgw exports that explain a scenario's outcome (other gateways' metrics are not read).
DIAGNOSTIC_METRICS = (
    "icgw_relay_errors_total",
    "icgw_slow_client_closes_total",
    "icgw_connections_closed_total",
    "icgw_certificate_failures_total",
    "icgw_polls_total",
)


async def gateway_counters(metrics_url: str) -> dict[str, float]:
    """The gateway's non-zero diagnostic counters from its Prometheus endpoint, by series (none for a
    gateway that does not export icgw's metrics)."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(metrics_url, timeout=aiohttp.ClientTimeout(5)) as r,
        ):
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    counters: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(DIAGNOSTIC_METRICS):
            series, _, value = line.rpartition(" ")
            if float(value):  # zeros say nothing and there are many
                counters[series] = float(value)
    return counters


async def upstream_report(agent: IcAgent, canister_text: str) -> dict[str, int]:
    reply = await agent.query(
        None, principal_from_text(canister_text), "upstream_report", candid_encode_values("()", [])
    )
    (report,) = candid_decode_values(UPSTREAM_REPORT_TYPES, reply)
    assert isinstance(report, dict)
    return {key: int(value) for key, value in report.items()}
