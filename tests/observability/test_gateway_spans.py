"""The running gateway's spans: one per connection, one per poll, none per message.

A real gateway (in-process) polls a real emulated canister; clients of `icgw.wsclient` exchange enough
messages that a per-message span would be impossible to miss. Every poll is sampled here (ratio 1), so the
poll spans can be counted against the gateway's own poll counter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from icgw.config import GatewayConfig, SocketAddress
from icgw.core import principal_to_text
from icgw.gateway.app import GatewayRuntime
from icgw.observability.tracing import CONNECTION_SPAN, POLL_SPAN, setup_tracing, shutdown_tracing
from icgw.replica import Replica, ReplicaConfig
from icgw.wsclient import ConnectionClosedError, IcWebSocketClient

pytestmark = pytest.mark.timeout(60)

ROUNDS = 25


@dataclass
class TracedStack:
    replica: Replica
    gateway: GatewayRuntime
    exporter: InMemorySpanExporter

    async def open_client(self) -> IcWebSocketClient:
        client = await IcWebSocketClient.connect(
            f"ws://127.0.0.1:{self.gateway.port}", self.replica.canister_ids[0], ic_url=self.replica.url
        )
        await asyncio.wait_for(client.open(), 10)
        ping = await asyncio.wait_for(client.receive(), 10)
        assert ping.app_message is not None
        assert ping.app_message["text"] == "ping"
        return client

    def poll_count(self) -> float:
        registry = self.gateway.metrics.registry
        return sum(
            registry.get_sample_value("icgw_polls_total", {"outcome": outcome}) or 0.0
            for outcome in ("messages", "empty", "timeout", "error")
        )

    def delivered(self) -> float:
        registry = self.gateway.metrics.registry
        return registry.get_sample_value("icgw_messages_relayed_total", {"direction": "to_client"}) or 0.0


@pytest.fixture(autouse=True)
def _stop_tracing() -> Iterator[None]:
    yield
    shutdown_tracing()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[TracedStack]:
    replica = Replica(ReplicaConfig(port=0))
    await replica.start()
    gateway = GatewayRuntime(
        GatewayConfig(
            gateway_address=SocketAddress("127.0.0.1", 0),
            ic_network_url=replica.url,
            polling_interval_ms=10,
            prometheus_endpoint=None,
            data_dir=tmp_path,
        )
    )
    try:
        await gateway.start()
        # After start: the runtime sets tracing up from its config (no collector: off) when it starts.
        exporter = InMemorySpanExporter()
        assert setup_tracing(None, gateway.principal_text, exporter=exporter, poll_sample_ratio=1.0)
        yield TracedStack(replica, gateway, exporter)
    finally:
        await gateway.stop()  # stops the pollers, then flushes and shuts tracing down
        await replica.stop()


async def test_connections_and_polls_have_spans_and_messages_do_not(stack: TracedStack) -> None:
    clients = [await stack.open_client() for _ in range(2)]
    for round_ in range(ROUNDS):
        for client in clients:
            await client.send_app_message(f"hello {round_}")
        for client in clients:
            reply = await asyncio.wait_for(client.receive(), 10)
            assert reply.app_message is not None
            assert reply.app_message["text"] == f"hello {round_} ping"
    for client in clients:
        await client.close()

    # A third connection that the gateway ends itself.
    rejected = await IcWebSocketClient.connect(
        f"ws://127.0.0.1:{stack.gateway.port}",
        stack.replica.canister_ids[0],
        verify=False,
        send_ws_open=False,
    )
    rejected.send_text("not CBOR")
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(rejected.receive(), 10)
    await asyncio.wait_for(rejected.wait_closed(), 10)

    await stack.gateway.stop()  # every span has ended: connections closed, pollers stopped, spans flushed
    spans = list(stack.exporter.get_finished_spans())
    connections = [span for span in spans if span.name == CONNECTION_SPAN]
    polls = [span for span in spans if span.name == POLL_SPAN]

    # Per message: 2 clients x (OpenMessage + "ping" + ROUNDS replies) went out, ROUNDS + 1 envelopes each
    # came in; none of them has a span of its own.
    assert stack.delivered() == 2 * (ROUNDS + 2)
    assert len(spans) == len(connections) + len(polls)
    assert len(connections) == 3
    assert len(polls) == stack.poll_count() > 0
    assert all(span.parent is None for span in spans)

    canister = principal_to_text(stack.replica.canister_ids[0])
    by_reason = sorted(connections, key=lambda span: str(attribute(span, "icgw.close_reason")))
    for span in by_reason[:2]:
        assert span.kind == SpanKind.SERVER
        assert attribute(span, "icgw.canister_id") == canister
        assert attribute(span, "icgw.close_reason") == "client_close"
        assert str(attribute(span, "client.address")).startswith("127.0.0.1:")
    assert attribute(by_reason[2], "icgw.close_reason") == "protocol_error"
    assert by_reason[2].attributes is not None
    assert "icgw.canister_id" not in by_reason[2].attributes  # it never sent a ws_open

    assert {attribute(span, "icgw.canister_id") for span in polls} == {canister}
    outcomes = [attribute(span, "icgw.poll.outcome") for span in polls]
    assert set(outcomes) <= {"messages", "empty", "timeout", "error"}
    with_messages = [span for span in polls if attribute(span, "icgw.poll.outcome") == "messages"]
    # The batches carried every message the clients got (and the canister's ws_close aftermath, if any).
    assert sum(int(attribute(span, "icgw.poll.messages")) for span in with_messages) >= stack.delivered()
    iterations = [int(attribute(span, "icgw.poll.iteration")) for span in polls]
    assert iterations == list(range(len(polls)))  # one poller, one span per loop iteration, in order


def attribute(span: ReadableSpan, name: str) -> object:
    assert span.attributes is not None
    return span.attributes.get(name)
