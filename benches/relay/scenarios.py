"""The scenarios: each starts its own stack, drives the generators, and returns its figures.

CPU figures are process CPU time (user + system, from /proc) spent in the measured window, divided by
the messages of that window; rates are messages over the wall time from the first push or send to the
last arrival. Every process's share is reported, so a reader can see which one limited the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benches.relay.bare_relay import LimitBackend, downstream_batches
from benches.relay.canister import UPSTREAM_PREFIX
from benches.relay.control import all_expect
from benches.relay.procs import Managed, ProcessFailed, bench_env, log_tail, start_process
from benches.relay.profile import Recording
from benches.relay.settings import Settings
from benches.relay.stack import (
    GeneratorPool,
    IcStack,
    gateway_counters,
    ic_stack,
    push_messages,
    upstream_report,
)
from benches.relay.stats import summarize_ms
from icgw.core import Ed25519Identity
from icgw.ic.agent import IcAgent
from icgw.wsclient import encode_app_message
from icgw.wsclient.messages import call_content, sdk_timestamp, signed_call_frame, ws_message_arg

Figures = dict[str, Any]

# Waits that are not part of a measurement.
SETTLE_S = 1.0
# Upstream: no new arrival at the canister for this long means the missing envelopes are lost.
STALL_S = 5.0
WARMUP_CONNECTIONS = 100


def _per_message_us(cpu_s: float, messages: int) -> float:
    return cpu_s / messages * 1e6 if messages else math.nan


def _merge_errors(messages: list[dict[str, Any]], key: str) -> dict[str, int]:
    merged: dict[str, int] = {}
    for message in messages:
        for name, count in message.get(key, {}).items():
            merged[name] = merged.get(name, 0) + count
    return merged


def _opened(replies: list[dict[str, Any]]) -> Figures:
    latencies = [ns for reply in replies for ns in reply["open_latencies_ns"]]
    return {
        "opened": sum(r["opened"] for r in replies),
        "failed": sum(r["failed"] for r in replies),
        "elapsed_s": max(r["elapsed_s"] for r in replies),
        "latency": summarize_ms(latencies),
        "errors": _merge_errors(replies, "errors"),
    }


def app_message(text: str, payload_bytes: int, timestamp: int) -> bytes:
    """The test canister's AppMessage whose text is `text` padded to `payload_bytes` characters."""
    return encode_app_message(text + " " + "x" * max(0, payload_bytes - len(text) - 1), timestamp)


def envelope_frame_bytes(payload_bytes: int) -> int:
    """The size of a client's ws_message frame carrying one upstream message (signed like the SDK)."""
    identity = Ed25519Identity.generate()
    now = time.time_ns()
    content = app_message(f"{UPSTREAM_PREFIX}0", payload_bytes, now)
    arg = ws_message_arg((identity.principal, 2**63), 1, sdk_timestamp(now), False, content)
    call = call_content(bytes(10), identity.principal, "ws_message", arg, now)
    return len(signed_call_frame(identity, call))


def estimated_message_frame_bytes(payload_bytes: int, batch: int) -> int:
    """About the size of a canister message frame when no downstream run measured it: every frame
    carries the batch's witness, about 126 bytes per message of the batch (a key of 84 bytes and a
    32-byte hash under CBOR tags), plus the certificate, the key and the content."""
    return 700 + payload_bytes + 126 * batch


# --- downstream ---------------------------------------------------------------------------------------


async def downstream(settings: Settings, workdir: Path) -> Figures:
    n, k = settings.clients, settings.messages
    async with ic_stack(settings, workdir) as stack, _generators(settings, stack, workdir) as pool:
        opened = _opened(await pool.open(n, settings.open_window, settings.timeout_s))
        principals = [
            bytes.fromhex(p)
            for reply in await pool.all("principals", "principals", 30)
            for p in reply["principals"]
        ]
        clients = len(principals)
        expected = clients * k
        await pool.all("downstream", "armed", 30, messages=k, timeout_s=settings.timeout_s)
        blobs = [app_message(f"d {i}", settings.payload_bytes, time.time_ns()) for i in range(k)]
        async with Window(stack, pool, settings, "downstream") as window:
            started_ns = time.time_ns()
            push_s = await push_messages(stack.replica.url, stack.replica.canister_id, principals, blobs)
            done = await _all_expect(pool, "done", settings.timeout_s + 30)
        stack.check_alive()
        counters = await gateway_counters(stack.gateway.metrics_url)
    received = sum(d["received"] for d in done)
    deadline_reached = not all(d["complete"] for d in done)
    last_ns = max(d["last_ns"] for d in done)
    elapsed_s = (last_ns - started_ns) / 1e9
    frames = sum(d["frames"] for d in done)
    frame_bytes = sum(d["frame_bytes"] for d in done)
    client_errors = _merge_errors(done, "client_errors")
    return {
        "gateway_counters": counters,
        "clients": clients,
        "messages_per_client": k,
        "expected": expected,
        "delivered": received,
        "missing": expected - received,
        "deadline_reached": deadline_reached,
        "client_errors": client_errors,
        "complete": received == expected and not client_errors,
        "open": opened,
        "push_s": push_s,
        "elapsed_s": elapsed_s,
        "rate_msg_s": received / elapsed_s if elapsed_s > 0 else math.nan,
        "mean_frame_bytes": frame_bytes / frames if frames else math.nan,
        "throughput_mib_s": frame_bytes / elapsed_s / 2**20 if elapsed_s > 0 else math.nan,
        "latency": summarize_ms(ns for d in done for ns in d["latencies_ns"]),
        **window.figures(received),
    }


# --- upstream -----------------------------------------------------------------------------------------


async def upstream(settings: Settings, workdir: Path) -> Figures:
    n, k = settings.clients, settings.messages
    async with ic_stack(settings, workdir) as stack, _generators(settings, stack, workdir) as pool:
        opened = _opened(await pool.open(n, settings.open_window, settings.timeout_s))
        clients = opened["opened"]
        expected = clients * k
        prepared = await pool.all(
            "upstream",
            "prepared",
            settings.timeout_s,
            messages=k,
            rate=settings.upstream_rate,
            payload=settings.payload_bytes,
        )
        agent = IcAgent(stack.replica.url)
        try:
            before = await upstream_report(agent, stack.replica.canister_id)
            async with Window(stack, pool, settings, "upstream") as window:
                started_ns = time.time_ns()
                pool.send("go")
                sent = await _all_expect(pool, "sent", settings.timeout_s)
                target = before["received"] + expected
                report, ended = await _wait_for_upstream(agent, stack, target, settings.timeout_s)
        finally:
            await agent.close()
        stack.check_alive()
        counters = await gateway_counters(stack.gateway.metrics_url)
    received = report["received"] - before["received"]
    elapsed_s = (report["last_ns"] - started_ns) / 1e9
    missing = expected - received
    return {
        "gateway_counters": counters,
        "clients": clients,
        "messages_per_client": k,
        "rate_limit_per_client": settings.upstream_rate,
        "expected": expected,
        "received_by_canister": received,
        "missing": missing,
        # Missing envelopes are lost when arrivals stopped; at the deadline they may still be on their way.
        "lost": missing if ended != "deadline" else None,
        "wait_ended": ended,
        "out_of_order": report["out_of_order"],
        "complete": received == expected and report["out_of_order"] == 0,
        "open": opened,
        "envelope_frame_bytes": prepared[0]["frame_bytes"],
        "send_s": max(s["last_ns"] for s in sent) / 1e9 - started_ns / 1e9,
        "elapsed_s": elapsed_s,
        "rate_msg_s": received / elapsed_s if elapsed_s > 0 else math.nan,
        **window.figures(received),
    }


async def _wait_for_upstream(
    agent: IcAgent, stack: IcStack, target: int, timeout_s: float
) -> tuple[dict[str, int], str]:
    """Poll the canister's report until `target` messages arrived ("all arrived"), nothing arrived for
    STALL_S ("stalled"), or `timeout_s` passed ("deadline")."""
    deadline = time.monotonic() + timeout_s
    last_progress, last_received = time.monotonic(), -1
    while True:
        report = await upstream_report(agent, stack.replica.canister_id)
        now = time.monotonic()
        if report["received"] >= target:
            return report, "all arrived"
        if now - last_progress > STALL_S:
            return report, "stalled"
        if now > deadline:
            return report, "deadline"
        if report["received"] != last_received:
            last_progress, last_received = now, report["received"]
        stack.check_alive()
        await asyncio.sleep(0.05)


# --- ping-pong ----------------------------------------------------------------------------------------


async def pingpong(settings: Settings, workdir: Path) -> Figures:
    n = settings.pingpong_clients
    async with ic_stack(settings, workdir) as stack, _generators(settings, stack, workdir) as pool:
        opened = _opened(await pool.open(n, settings.open_window, settings.timeout_s))
        async with Window(stack, pool, settings, "pingpong") as window:
            done = await pool.all(
                "pingpong",
                "done",
                settings.timeout_s + 30,
                rounds=settings.rounds,
                timeout_s=settings.timeout_s,
            )
        stack.check_alive()
        counters = await gateway_counters(stack.gateway.metrics_url)
    rtts = [ns for d in done for ns in d["rtts_ns"]]
    client_errors = _merge_errors(done, "client_errors")
    wrong = sum(d["wrong_texts"] for d in done)
    incomplete = sum(d["incomplete"] for d in done)
    return {
        "gateway_counters": counters,
        "clients": opened["opened"],
        "rounds": settings.rounds,
        "round_trips": len(rtts),
        "wrong_texts": wrong,
        "incomplete_clients": incomplete,
        "client_errors": client_errors,
        "complete": wrong == 0 and incomplete == 0 and not client_errors and opened["failed"] == 0,
        "open": opened,
        "round_trip": summarize_ms(rtts),
        "receive_latency": summarize_ms(ns for d in done for ns in d["latencies_ns"]),
        "elapsed_s": max(d["elapsed_s"] for d in done),
        **window.figures(len(rtts)),
    }


# --- idle ---------------------------------------------------------------------------------------------


async def idle(settings: Settings, workdir: Path) -> Figures:
    total = settings.idle_connections
    warmup = min(WARMUP_CONNECTIONS, total // 10)
    async with ic_stack(settings, workdir) as stack, _generators(settings, stack, workdir) as pool:
        gateway = stack.gateway.managed
        warm = _opened(await pool.open(warmup, settings.open_window, settings.timeout_s))
        await asyncio.sleep(SETTLE_S)
        rss_warm = gateway.rss_kib()
        rest = _opened(await pool.open(total - warmup, settings.open_window, settings.timeout_s))
        await asyncio.sleep(SETTLE_S)
        rss_open = gateway.rss_kib()
        cpu0, hold0 = gateway.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(settings.duration_s)
        hold_s = time.perf_counter() - hold0
        idle_cpu = gateway.cpu_seconds() - cpu0
        rss_held = gateway.rss_kib()
        stats = await pool.all("stats", "stats", 30)
        generators_rss = sum(g.managed.rss_kib() for g in pool.generators)
        stack.check_alive()
        counters = await gateway_counters(stack.gateway.metrics_url)
    measured = rest["opened"]
    client_errors = _merge_errors(stats, "client_errors")
    return {
        "gateway_counters": counters,
        "connections": warm["opened"] + rest["opened"],
        "failed": warm["failed"] + rest["failed"],
        "dropped_while_idle": sum(client_errors.values()),
        "client_errors": client_errors,
        "complete": warm["failed"] + rest["failed"] == 0 and not client_errors,
        "warmup_connections": warm["opened"],
        "gateway_rss_kib": {"after_warmup": rss_warm, "all_open": rss_open, "after_hold": rss_held},
        "rss_kib_per_connection": (rss_open - rss_warm) / measured if measured else math.nan,
        "rss_kib_per_connection_after_hold": (rss_held - rss_warm) / measured if measured else math.nan,
        "hold_s": hold_s,
        "gateway_idle_cpu_percent": idle_cpu / hold_s * 100,
        "generators_rss_kib": generators_rss,
        "open": rest,
    }


# --- open-rate ----------------------------------------------------------------------------------------


async def open_rate(settings: Settings, workdir: Path) -> Figures:
    total = settings.open_connections
    async with ic_stack(settings, workdir) as stack, _generators(settings, stack, workdir) as pool:
        await pool.open(min(WARMUP_CONNECTIONS, total // 10), settings.open_window, settings.timeout_s)
        await asyncio.sleep(SETTLE_S)
        async with Window(stack, pool, settings, "open-rate") as window:
            opened = _opened(await pool.open(total, settings.open_window, settings.timeout_s))
        stack.check_alive()
        counters = await gateway_counters(stack.gateway.metrics_url)
    return {
        "gateway_counters": counters,
        "connections": opened["opened"],
        "failed": opened["failed"],
        "window": settings.open_window,
        "complete": opened["failed"] == 0,
        "elapsed_s": opened["elapsed_s"],
        "rate_per_s": opened["opened"] / opened["elapsed_s"] if opened["elapsed_s"] > 0 else math.nan,
        "latency": opened["latency"],
        "errors": opened["errors"],
        **window.figures(opened["opened"], unit="open"),
    }


# --- limit: the same traffic through the bare relay ------------------------------------------------------


async def limit(settings: Settings, workdir: Path, measured: dict[str, Figures]) -> Figures:
    """The downstream, upstream, connection and idle traffic of the other scenarios through the bare relay.

    Its picows settings are the gateway's (uvloop transport, 2 KiB read buffer, keep-alive pings), so the
    difference to a scenario is the protocol work alone. The throughput runs are short (about a second),
    so each is repeated LIMIT_REPEATS times and the median is the limit.
    """
    down = measured.get("downstream", {})
    frame_bytes = down.get("mean_frame_bytes")
    frame_source = "measured by downstream"
    if not isinstance(frame_bytes, float) or math.isnan(frame_bytes):
        frame_bytes = estimated_message_frame_bytes(settings.payload_bytes, settings.max_returned_messages)
        frame_source = "estimated"
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local folder, once
    relay, url = await _start_bare_relay(workdir)
    try:
        async with GeneratorPool.start(settings.generators, {}, workdir, settings.timeout_s * 4) as pool:
            backend = await LimitBackend.connect(url)
            try:
                bare = _BareRelayRun(settings, relay, pool, backend, url)
                await bare.open_clients()
                downstream = _median_run(
                    [await bare.downstream(round(frame_bytes)) for _ in range(LIMIT_REPEATS)]
                )
                downstream["frame_bytes_source"] = frame_source
                upstream = _median_run([await bare.upstream() for _ in range(LIMIT_REPEATS)])
                connect = await bare.connect()
                idle = await bare.idle()
            finally:
                backend.close()
    finally:
        await relay.stop()
    return {
        "relay": "picows bare relay (benches/relay/bare_relay.py): no decoding, no verification, no HTTP",
        "downstream": downstream,
        "upstream": upstream,
        "connect": connect,
        "idle": idle,
    }


LIMIT_REPEATS = 3


def _median_run(runs: list[Figures]) -> Figures:
    """The run with the median rate, with every run's rate beside it."""
    ordered = sorted(runs, key=lambda run: run["rate_msg_s"])
    median = dict(ordered[len(ordered) // 2])
    median["rates_of_all_runs"] = [run["rate_msg_s"] for run in runs]
    return median


class _BareRelayRun:
    """The limit scenario's steps, against one bare relay and one set of raw clients."""

    def __init__(
        self, settings: Settings, relay: Managed, pool: GeneratorPool, backend: LimitBackend, url: str
    ) -> None:
        self.settings, self.relay, self.pool, self.backend, self.url = settings, relay, pool, backend, url
        self.clients = 0

    async def open_clients(self) -> None:
        s = self.settings
        opened = _opened(
            await self.pool.open(s.clients, s.open_window, s.timeout_s, command="raw_open", url=self.url)
        )
        self.clients = opened["opened"]

    async def downstream(self, frame_bytes: int) -> Figures:
        s, k = self.settings, self.settings.messages
        await self.pool.all("raw_downstream", "armed", 30, messages=k, timeout_s=s.timeout_s)
        cpu0, started_ns = self.relay.cpu_seconds(), time.time_ns()
        await self.backend.send_downstream(
            downstream_batches(self.clients, k, frame_bytes, s.max_returned_messages)
        )
        done = await _all_expect(self.pool, "done", s.timeout_s + 30)
        cpu = self.relay.cpu_seconds() - cpu0
        delivered = sum(d["received"] for d in done)
        elapsed = (max(d["last_ns"] for d in done) - started_ns) / 1e9
        return {
            "clients": self.clients,
            "messages_per_client": k,
            "frame_bytes": frame_bytes,
            "batch": s.max_returned_messages,
            "delivered": delivered,
            "missing": self.clients * k - delivered,
            "elapsed_s": elapsed,
            "rate_msg_s": delivered / elapsed if elapsed > 0 else math.nan,
            "throughput_mib_s": delivered * frame_bytes / elapsed / 2**20 if elapsed > 0 else math.nan,
            "relay_cpu_us_per_msg": _per_message_us(cpu, delivered),
        }

    async def upstream(self) -> Figures:
        s, k = self.settings, self.settings.messages
        envelope_bytes = envelope_frame_bytes(s.payload_bytes)
        await self.pool.all(
            "raw_upstream",
            "prepared",
            s.timeout_s,
            messages=k,
            rate=s.upstream_rate,
            frame_bytes=envelope_bytes,
        )
        arrived = self.backend.expect_upstream(self.clients * k)
        cpu0, started_ns = self.relay.cpu_seconds(), time.time_ns()
        self.pool.send("go")
        await _all_expect(self.pool, "sent", s.timeout_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived, s.timeout_s)
        cpu = self.relay.cpu_seconds() - cpu0
        relayed = self.backend.received
        elapsed = ((self.backend.last_ns or time.time_ns()) - started_ns) / 1e9
        return {
            "clients": self.clients,
            "messages_per_client": k,
            "frame_bytes": envelope_bytes,
            "relayed": relayed,
            "missing": self.clients * k - relayed,
            "elapsed_s": elapsed,
            "rate_msg_s": relayed / elapsed if elapsed > 0 else math.nan,
            "relay_cpu_us_per_msg": _per_message_us(cpu, relayed),
        }

    async def connect(self) -> Figures:
        s = self.settings
        cpu0 = self.relay.cpu_seconds()
        connects = _opened(
            await self.pool.open(
                s.open_connections, s.open_window, s.timeout_s, command="raw_open", url=self.url
            )
        )
        return {
            "connections": connects["opened"],
            "failed": connects["failed"],
            "window": s.open_window,
            "elapsed_s": connects["elapsed_s"],
            "rate_per_s": connects["opened"] / connects["elapsed_s"]
            if connects["elapsed_s"] > 0
            else math.nan,
            "latency": connects["latency"],
            "relay_cpu_us_per_connection": _per_message_us(
                self.relay.cpu_seconds() - cpu0, connects["opened"]
            ),
        }

    async def idle(self) -> Figures:
        """RSS per connection of the relay, measured like the idle scenario's (after the connections
        above, which play the warm-up): a WebSocket server's memory floor on this machine."""
        s = self.settings
        await asyncio.sleep(SETTLE_S)
        rss_before = self.relay.rss_kib()
        opened = _opened(
            await self.pool.open(
                s.idle_connections, s.open_window, s.timeout_s, command="raw_open", url=self.url
            )
        )
        await asyncio.sleep(SETTLE_S)
        rss_after = self.relay.rss_kib()
        count = opened["opened"]
        return {
            "connections": count,
            "failed": opened["failed"],
            "rss_kib_per_connection": (rss_after - rss_before) / count if count else math.nan,
        }


async def _start_bare_relay(workdir: Path) -> tuple[Managed, str]:
    relay = await start_process(
        "bare relay",
        [sys.executable, "-m", "benches.relay.bare_relay"],
        workdir / "bare-relay.log",
        env=bench_env(),
        stdout=True,
    )
    stdout = relay.process.stdout
    assert stdout is not None
    try:
        ready = orjson.loads(await asyncio.wait_for(stdout.readline(), 30))
    except (TimeoutError, orjson.JSONDecodeError):
        await relay.stop()
        raise ProcessFailed(f"the bare relay did not start:\n{log_tail(relay.log_path)}") from None
    return relay, f"ws://127.0.0.1:{ready['port']}"


# --- shared pieces --------------------------------------------------------------------------------------


def _generators(settings: Settings, stack: IcStack, workdir: Path) -> Any:
    return GeneratorPool.start(
        settings.generators, stack.generator_job(settings), workdir, settings.timeout_s * 4
    )


async def _all_expect(pool: GeneratorPool, event: str, timeout_s: float) -> list[dict[str, Any]]:
    return await all_expect(pool.generators, event, timeout_s)


class Window:
    """The measured window of a scenario: CPU seconds of the gateway, the replica and the generators
    between entering and leaving it, and (with --profile) py-spy profiles of the gateway, the replica
    and the first generator."""

    def __init__(self, stack: IcStack, pool: GeneratorPool, settings: Settings, name: str) -> None:
        self.stack, self.pool = stack, pool
        self.profile_dir = Path(settings.profile_dir) if settings.profile_dir else None
        self.name = name
        self.used: dict[str, float] = {}
        self.profiles: dict[str, Any] = {}
        self._recordings: dict[str, Recording] = {}

    def _read(self) -> tuple[float, float, float]:
        return (
            self.stack.gateway.managed.cpu_seconds(),
            self.stack.replica.managed.cpu_seconds(),
            self.pool.cpu_seconds(),
        )

    async def __aenter__(self) -> Window:
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            for role, managed in (
                ("gateway", self.stack.gateway.managed),
                ("replica", self.stack.replica.managed),
                ("generator", self.pool.generators[0].managed),
            ):
                output = self.profile_dir / f"{self.name}-{role}.txt"
                self._recordings[role] = await Recording.start(managed.pid, output)
            await asyncio.sleep(0.2)  # py-spy attaches
        self._start = self._read()
        self._started = time.perf_counter()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        end = self._read()
        self.used = {
            "wall_s": time.perf_counter() - self._started,
            "gateway_s": end[0] - self._start[0],
            "replica_s": end[1] - self._start[1],
            "generators_s": end[2] - self._start[2],
        }
        for role, recording in self._recordings.items():
            summary = await recording.stop()
            if summary is not None:
                self.profiles[role] = summary

    def figures(self, messages: int, unit: str = "msg") -> Figures:
        figures = _cpu_figures(self.used, messages, unit)
        if self.profiles:
            figures["profile"] = self.profiles
        return figures


def _cpu_figures(used: dict[str, float], messages: int, unit: str = "msg") -> Figures:
    wall = used["wall_s"]
    return {
        f"gateway_cpu_us_per_{unit}": _per_message_us(used["gateway_s"], messages),
        f"replica_cpu_us_per_{unit}": _per_message_us(used["replica_s"], messages),
        f"generators_cpu_us_per_{unit}": _per_message_us(used["generators_s"], messages),
        "cpu_seconds": used,
        "gateway_cpu_percent": used["gateway_s"] / wall * 100 if wall > 0 else math.nan,
    }
