"""The relay harness's parts, each through its own interface: statistics, goals, the gateway command, the
bare relay's batches and forwarding, and the benchmark canister's record of upstream messages."""

from __future__ import annotations

import asyncio
import math
import struct
import sys
from typing import Any

import pytest
from benches.relay.bare_relay import HEADER, LimitBackend, Relay, downstream_batches
from benches.relay.canister import RelayBenchCanister
from benches.relay.procs import gateway_command
from benches.relay.report import GOALS, add_fractions, check_goals, failures
from benches.relay.stats import percentile, summarize_ms
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

from icgw.replica.apps import AppContext
from icgw.replica.test_canister import decode_app_message, encode_app_message

pytestmark = pytest.mark.timeout(30)


# --- statistics and goals ---------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    summary = summarize_ms([3_000_000, 1_000_000, 2_000_000])
    assert summary == {"count": 3, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 3.0, "max_ms": 3.0}
    empty = summarize_ms([])
    assert empty["count"] == 0
    assert math.isnan(empty["p50_ms"])


def test_goals_say_whether_and_by_how_much_they_are_missed() -> None:
    scenarios: dict[str, Any] = {
        "downstream": {"gateway_cpu_us_per_msg": 10.0, "rate_msg_s": 1000.0},
        "open-rate": {"rate_per_s": 4000.0},
        "limit": {
            "downstream": {"rate_msg_s": 4000.0},
            "upstream": {"rate_msg_s": 1.0},
            "connect": {"rate_per_s": 8000.0},
        },
    }
    add_fractions(scenarios)
    assert scenarios["downstream"]["fraction_of_limit"] == 0.25
    assert scenarios["open-rate"]["fraction_of_limit"] == 0.5
    goals = {(g["scenario"], g["figure"]): g for g in check_goals(scenarios)}
    cpu = goals[("downstream", "gateway CPU per delivered message")]
    assert cpu["met"] is False
    assert cpu["off_by_factor"] == pytest.approx(2.0)
    fraction = goals[("downstream", "delivered msg/s as a fraction of limit")]
    assert (fraction["met"], fraction["off_by_factor"]) == (False, pytest.approx(2.0))
    assert goals[("open-rate", "connections opened per second")]["met"] is True
    # Scenarios that did not run have no goal entries; the goal list covers every scenario but limit.
    assert {g.scenario for g in GOALS} == {"downstream", "upstream", "pingpong", "idle", "open-rate"}


def test_a_figure_that_is_missing_is_not_counted_as_met_or_missed() -> None:
    (entry,) = [g for g in check_goals({"upstream": {"lost": None}}) if g["figure"] == "envelopes lost"]
    assert entry["met"] is None


def test_failures_name_errors_and_incomplete_scenarios() -> None:
    found = failures(
        {
            "a": {"error": "ProcessFailed: the gateway exited\nlog"},
            "b": {"complete": False},
            "c": {"complete": True},
        }
    )
    assert found == [
        "a: ProcessFailed: the gateway exited",
        "b: incomplete (lost, reordered or failed traffic; see the JSON)",
    ]


# --- the gateway under test ----------------------------------------------------------------------------


def test_the_reference_flags_are_appended_to_any_gateway_command() -> None:
    flags = [
        "--gateway-address",
        "127.0.0.1:81",
        "--ic-network-url",
        "http://x:1",
        "--polling-interval",
        "100",
    ]
    flags += ["--prometheus-endpoint", "127.0.0.1:82"]
    options = {"port": 81, "ic_url": "http://x:1", "polling_ms": 100, "metrics_port": 82}
    assert gateway_command("python -m icgw --workers 2", **options) == [
        sys.executable,
        "-m",
        "icgw",
        "--workers",
        "2",
        *flags,
    ]
    assert gateway_command("'/opt/gw dir/ic_websocket_gateway'", **options) == [
        "/opt/gw dir/ic_websocket_gateway",
        *flags,
    ]
    with pytest.raises(ValueError, match="empty"):
        gateway_command("  ", **options)


# --- the bare relay ----------------------------------------------------------------------------------------


def _frames(batch: bytes) -> list[tuple[int, bytes]]:
    found, offset = [], 0
    while offset < len(batch):
        index, length = HEADER.unpack_from(batch, offset)
        offset += HEADER.size
        found.append((index, batch[offset : offset + length]))
        offset += length
    return found


def test_downstream_batches_hold_every_frame_in_client_order() -> None:
    batches = list(downstream_batches(clients=3, messages=4, frame_bytes=10, batch=5))
    assert [len(_frames(b)) for b in batches] == [5, 5, 2]
    frames = [frame for batch in batches for frame in _frames(batch)]
    assert [index for index, _ in frames] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(len(payload) == 10 for _, payload in frames)
    assert HEADER.size == struct.calcsize("<II")


class Collector(WSListener):
    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            self.frames.put_nowait(frame.get_payload_as_bytes())


async def test_the_bare_relay_fans_batches_out_and_forwards_client_frames() -> None:
    relay = Relay()
    server = await ws_create_server(relay.listener, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        backend = await LimitBackend.connect(url)
        clients = []
        for index in range(2):
            _, listener = await ws_connect(Collector, f"{url}/client/{index}")
            assert isinstance(listener, Collector)
            clients.append(listener)
        arrived = backend.expect_upstream(2)
        # A batch of three frames: two for client 0, one for client 1.
        batch = b"".join(HEADER.pack(i, len(p)) + p for i, p in ((0, b"a0"), (1, b"b0"), (0, b"a1")))
        await backend.send_downstream(iter([batch]))
        assert [await asyncio.wait_for(clients[0].frames.get(), 5) for _ in range(2)] == [b"a0", b"a1"]
        assert await asyncio.wait_for(clients[1].frames.get(), 5) == b"b0"
        for client in clients:
            assert client.transport is not None
            client.transport.send(WSMsgType.BINARY, b"up" + bytes(30))
        await asyncio.wait_for(arrived, 5)
        assert (backend.received, backend.received_bytes) == (2, 64)
        with pytest.raises(Exception, match="404"):
            await ws_connect(Collector, f"{url}/elsewhere")
        backend.close()
        for client in clients:
            assert client.transport is not None
            client.transport.disconnect()
    finally:
        server.close()


# --- the benchmark canister -----------------------------------------------------------------------------


class SentMessages:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    def send(self, client_principal: bytes, message: bytes) -> None:
        self.sent.append((client_principal, message))


class FixedClock:
    def __init__(self) -> None:
        self.now = 1_000

    def now_ns(self) -> int:
        self.now += 1_000
        return self.now


def test_the_canister_counts_upstream_messages_and_answers_the_others() -> None:
    app = RelayBenchCanister()
    ws = SentMessages()
    app.bind(AppContext(canister_id=bytes(10), ws=ws, clock=FixedClock()))  # type: ignore[arg-type]
    alice, bob = b"alice", b"bob"
    for principal, text in (
        (alice, "up 0 x"),
        (alice, "up 1 x"),
        (bob, "up 0"),
        (alice, "up 3 xx"),
        (bob, "hi"),
    ):
        app.on_message(principal, encode_app_message(text, 0))
    assert [(p, decode_app_message(m)["text"]) for p, m in ws.sent] == [(bob, "hi ping")]
    (report,) = app.upstream_report(b"caller")
    assert isinstance(report, dict)
    assert (report["received"], report["out_of_order"], report["clients"]) == (4, 1, 2)
    assert report["first_ns"] < report["last_ns"]
