"""Metrics exposition and the health endpoint, over real HTTP on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from icgw.observability.health import HealthServer, start_health_server
from icgw.observability.metrics import (
    LATENCY_BUCKETS_S,
    CloseReason,
    GatewayMetrics,
    PollOutcome,
    RelayError,
    WsCloseOutcome,
)

PRINCIPAL = "3656s-lmrgx-ptdlx-lclwb-34wm5-7ycsy-e3i6a-dvacx-t2jyj-2xchs-6qe"
ALLOWED_LABELS = {"reason", "direction", "outcome", "le", "version", "principal"}
pytestmark = pytest.mark.timeout(30)


class Readiness:
    def __init__(self) -> None:
        self.ready = False
        self.fail = False

    def __call__(self) -> bool:
        if self.fail:
            raise RuntimeError("state unavailable")
        return self.ready


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics(PRINCIPAL)


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def server(metrics: GatewayMetrics, readiness: Readiness) -> AsyncIterator[HealthServer]:
    server = await start_health_server("127.0.0.1", 0, metrics.registry, readiness)
    yield server
    await server.close()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def record_some_traffic(metrics: GatewayMetrics) -> None:
    metrics.connections_total.inc()
    metrics.connections_open.inc()
    metrics.messages_relayed.to_canister.inc()
    metrics.bytes_relayed.to_canister.inc(512)
    metrics.relay_latency.observe(0.0003)
    metrics.relay_latency.observe(0.2)
    metrics.polls[PollOutcome.MESSAGES].inc()
    metrics.poll_latency.observe(0.004)
    metrics.messages_relayed.to_client.inc(3)
    metrics.delivery_latency.observe(1.3)
    metrics.connections_closed[CloseReason.SLOW_CLIENT].inc()
    metrics.slow_client_closes.inc()
    metrics.ws_close[WsCloseOutcome.OK].inc()
    metrics.active_pollers.set(1)


async def test_metrics_are_histograms_without_per_client_labels(
    server: HealthServer, metrics: GatewayMetrics
) -> None:
    record_some_traffic(metrics)
    status, content_type, body = await get(f"{server.url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")

    families = {family.name: family for family in text_string_to_metric_families(body)}
    types = {name: family.type for name, family in families.items()}
    assert types == {
        "icgw_connections_open": "gauge",
        "icgw_connections": "counter",
        "icgw_connections_closed": "counter",
        "icgw_slow_client_closes": "counter",
        "icgw_connection_open_latency_seconds": "histogram",
        "icgw_connection_duration_seconds": "histogram",
        "icgw_messages_relayed": "counter",
        "icgw_bytes_relayed": "counter",
        "icgw_relay_latency_seconds": "histogram",
        "icgw_relay_errors": "counter",
        "icgw_poll_latency_seconds": "histogram",
        "icgw_polls": "counter",
        "icgw_certificate_failures": "counter",
        "icgw_active_pollers": "gauge",
        "icgw_delivery_latency_seconds": "histogram",
        "icgw_ws_close": "counter",
        "icgw_info": "gauge",  # the text format renders an Info as a gauge of 1
    }
    samples = [sample for family in families.values() for sample in family.samples]
    assert all(set(sample.labels) <= ALLOWED_LABELS for sample in samples)
    assert "quantile" not in body
    assert "_created" not in body

    value = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value for sample in samples}
    relay = "icgw_relay_latency_seconds_bucket"
    assert [le for (name, labels) in value if name == relay for key, le in labels if key == "le"] == [
        *(f"{bound}" for bound in LATENCY_BUCKETS_S),
        "+Inf",
    ]
    assert value[(relay, (("le", "0.0001"),))] == 0
    assert value[(relay, (("le", "0.0005"),))] == 1
    assert value[(relay, (("le", "0.25"),))] == 2
    assert value[("icgw_relay_latency_seconds_count", ())] == 2
    assert value[("icgw_messages_relayed_total", (("direction", "to_client"),))] == 3
    assert value[("icgw_bytes_relayed_total", (("direction", "to_canister"),))] == 512
    assert value[("icgw_connections_closed_total", (("reason", "slow_client"),))] == 1
    assert value[("icgw_active_pollers", ())] == 1
    info = [sample for sample in samples if sample.name == "icgw_info"]
    assert [sample.labels["principal"] for sample in info] == [PRINCIPAL]

    # Every label value exists from the start, at zero, so rates work from the first scrape.
    for reason in CloseReason:
        assert ("icgw_connections_closed_total", (("reason", reason.value),)) in value
    for error in RelayError:
        assert value[("icgw_relay_errors_total", (("reason", error.value),))] == 0
    for outcome in PollOutcome:
        assert ("icgw_polls_total", (("outcome", outcome.value),)) in value
    for ws_close in WsCloseOutcome:
        assert ("icgw_ws_close_total", (("outcome", ws_close.value),)) in value


async def test_metrics_speak_openmetrics_when_asked(server: HealthServer) -> None:
    status, content_type, body = await get(
        f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


async def test_healthz_and_readyz_follow_the_readiness_check(
    server: HealthServer, readiness: Readiness
) -> None:
    assert (await get(f"{server.url}/healthz"))[0] == 200
    assert (await get(f"{server.url}/readyz"))[0] == 503
    readiness.ready = True
    assert (await get(f"{server.url}/readyz"))[0] == 200
    readiness.fail = True
    assert (await get(f"{server.url}/readyz"))[0] == 503
    assert (await get(f"{server.url}/healthz"))[0] == 200
    assert (await get(f"{server.url}/nothing-here"))[0] == 404


async def test_close_stops_listening(metrics: GatewayMetrics) -> None:
    server = await start_health_server("127.0.0.1", 0, metrics.registry, lambda: True)
    assert (await get(f"{server.url}/healthz"))[0] == 200
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"{server.url}/healthz")


async def test_a_taken_port_is_an_error(metrics: GatewayMetrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="address already in use"):
            await start_health_server("127.0.0.1", taken.getsockname()[1], metrics.registry, lambda: True)


def test_two_gateways_in_one_process_have_separate_registries() -> None:
    first, second = GatewayMetrics(PRINCIPAL), GatewayMetrics(PRINCIPAL)
    first.connections_total.inc()
    assert first.registry.get_sample_value("icgw_connections_total") == 1.0
    assert second.registry.get_sample_value("icgw_connections_total") == 0.0
