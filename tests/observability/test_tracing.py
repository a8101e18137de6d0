"""OpenTelemetry: spans per connection and per sampled poll, a real OTLP/HTTP export, and no cost when off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from icgw.observability import tracing
from icgw.observability.tracing import (
    CONNECTION_SPAN,
    NOOP_SPAN,
    POLL_SPAN,
    connection_span,
    otlp_http_traces_url,
    poll_span,
    setup_tracing,
    shutdown_tracing,
)

PRINCIPAL = "3656s-lmrgx-ptdlx-lclwb-34wm5-7ycsy-e3i6a-dvacx-t2jyj-2xchs-6qe"
CANISTER = "rrkah-fqaaa-aaaaa-aaaaq-cai"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _stop_tracing() -> Iterator[None]:
    yield
    shutdown_tracing()


def exported(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    shutdown_tracing()  # flushes the batch processor
    return list(exporter.get_finished_spans())


def test_off_without_an_endpoint_and_the_helpers_are_shared_no_ops() -> None:
    assert not setup_tracing(None, PRINCIPAL)
    assert not setup_tracing("", PRINCIPAL)
    assert not tracing.tracing_enabled()
    first, second = connection_span("127.0.0.1:5000"), poll_span(CANISTER, 1)
    assert first is second  # no allocation per call
    with first as span:
        assert span is NOOP_SPAN
        span.set_attribute("icgw.canister_id", CANISTER)
        span.add_event("opened")
        assert not span.is_recording()


def test_tracing_off_never_imports_opentelemetry() -> None:
    program = (
        "import sys\n"
        "from icgw.config import GatewayConfig\n"
        "from icgw.observability import tracing\n"
        "assert not tracing.setup_tracing(GatewayConfig().opentelemetry_collector_endpoint, 'aaaaa-aa')\n"
        "with tracing.connection_span('peer'), tracing.poll_span('c', 0):\n"
        "    pass\n"
        "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_connection_and_sampled_poll_spans() -> None:
    exporter = InMemorySpanExporter()
    assert setup_tracing(None, PRINCIPAL, exporter=exporter, poll_sample_ratio=1.0)
    assert tracing.tracing_enabled()
    with connection_span("127.0.0.1:5000") as connection:
        assert connection.is_recording()
        connection.set_attribute("icgw.canister_id", CANISTER)
        # A poller started from a client's task runs inside the client's context; its polls must not
        # become that client's children.
        with poll_span(CANISTER, 7) as poll:
            assert poll.is_recording()
    spans = {span.name: span for span in exported(exporter)}
    assert set(spans) == {CONNECTION_SPAN, POLL_SPAN}

    connection_data, poll_data = spans[CONNECTION_SPAN], spans[POLL_SPAN]
    assert connection_data.kind == SpanKind.SERVER
    assert connection_data.attributes == {"client.address": "127.0.0.1:5000", "icgw.canister_id": CANISTER}
    assert poll_data.kind == SpanKind.CLIENT
    assert poll_data.attributes == {"icgw.canister_id": CANISTER, "icgw.poll.iteration": 7}
    assert connection_data.parent is None
    assert poll_data.parent is None
    assert poll_data.context is not None
    assert connection_data.context is not None
    assert poll_data.context.trace_id != connection_data.context.trace_id
    resource = connection_data.resource.attributes
    assert resource["service.name"] == "icgw-3656s"
    assert resource["service.instance.id"] == PRINCIPAL


def test_all_connections_but_only_a_ratio_of_polls_are_sampled() -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(None, PRINCIPAL, exporter=exporter, poll_sample_ratio=0.25)
    for index in range(400):
        with poll_span(CANISTER, index):
            pass
    for index in range(20):
        with connection_span(f"127.0.0.1:{5000 + index}"):
            pass
    spans = exported(exporter)
    polls = [span for span in spans if span.name == POLL_SPAN]
    connections = [span for span in spans if span.name == CONNECTION_SPAN]
    assert len(connections) == 20
    # Binomial(400, 0.25): mean 100, standard deviation ~8.7; these bounds are ~6 deviations out.
    assert 50 <= len(polls) <= 150


def test_zero_ratio_traces_connections_only() -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(None, PRINCIPAL, exporter=exporter, poll_sample_ratio=0.0)
    with poll_span(CANISTER, 1) as poll:
        assert not poll.is_recording()
    with connection_span("127.0.0.1:5000"):
        pass
    assert [span.name for span in exported(exporter)] == [CONNECTION_SPAN]


def test_telemetry_spec_chooses_the_kinds_of_span() -> None:
    exporter = InMemorySpanExporter()
    assert setup_tracing(None, PRINCIPAL, "icgw=info", exporter=exporter, poll_sample_ratio=1.0)
    with poll_span(CANISTER, 1) as poll:
        assert poll is NOOP_SPAN
    with connection_span("127.0.0.1:5000"):
        pass
    assert [span.name for span in exported(exporter)] == [CONNECTION_SPAN]
    assert not setup_tracing(None, PRINCIPAL, "icgw=warn", exporter=InMemorySpanExporter())
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        setup_tracing(None, PRINCIPAL, exporter=InMemorySpanExporter(), poll_sample_ratio=1.5)


@pytest.mark.parametrize(
    ("endpoint", "url", "translated"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces", False),
        ("https://collector.example/", "https://collector.example/v1/traces", False),
        ("http://collector:4318/custom/traces", "http://collector:4318/custom/traces", False),
        ("collector:4318", "http://collector:4318/v1/traces", False),
        # The reference's gRPC endpoints go to the same collector's OTLP/HTTP port.
        ("http://otlp_collector:4317", "http://otlp_collector:4318/v1/traces", True),
        ("grpc://collector:9999", "http://collector:4318/v1/traces", True),
        ("grpcs://collector", "https://collector:4318/v1/traces", True),
        ("[::1]:4317", "http://[::1]:4318/v1/traces", True),
    ],
)
def test_collector_endpoints_become_otlp_http_urls(endpoint: str, url: str, translated: bool) -> None:
    assert otlp_http_traces_url(endpoint) == (url, translated)


@pytest.mark.parametrize("endpoint", ["ftp://collector:21", "http://", "http://collector:port"])
def test_bad_collector_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="bad OTLP collector endpoint"):
        otlp_http_traces_url(endpoint)


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    """A stand-in OTLP/HTTP collector on loopback that records what it receives."""
    received: list[tuple[str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.read()))
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


async def test_spans_reach_an_otlp_http_collector(collector: tuple[str, list[tuple[str, bytes]]]) -> None:
    endpoint, received = collector
    assert setup_tracing(endpoint, PRINCIPAL)
    with connection_span("127.0.0.1:5000") as span:
        span.set_attribute("icgw.canister_id", CANISTER)
    # The exporter posts from its own thread; the collector answers on this loop, so wait off-loop.
    await asyncio.to_thread(shutdown_tracing)
    assert len(received) == 1
    content_type, body = received[0]
    assert content_type == "application/x-protobuf"
    assert b"icgw-3656s" in body
    assert CONNECTION_SPAN.encode() in body
    assert CANISTER.encode() in body
