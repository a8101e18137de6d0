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
    MAX_EXTRA_LABEL_VALUES,
    CloseReason,
    GatewayMetrics,
    PollOutcome,
    PrometheusObserver,
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
    """What the gateway reports through its observer interface during two short connections."""
    observer = PrometheusObserver(metrics)
    observer.connection_opened()
    observer.connection_opened()
    observer.active_pollers(1)
    observer.relayed("ws_open", 512, 0.0003)
    observer.relayed("ws_message", 100, 0.2)
    observer.poll("empty", 0.002)
    observer.poll("messages", 0.004)
    for _ in range(3):
        observer.delivered(1000)
    observer.relay_failed("rejected")
    observer.nonce_gap()
    observer.certificate_failure()
    observer.slow_client_close()
    observer.connection_closed("slow_client")
    observer.ws_close("ok")
    metrics.delivery_latency.observe(1.3)


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
        "icgw_messages_relayed": "counter",
        "icgw_bytes_relayed": "counter",
        "icgw_relay_latency_seconds": "histogram",
        "icgw_relay_errors": "counter",
        "icgw_poll_latency_seconds": "histogram",
        "icgw_polls": "counter",
        "icgw_certificate_failures": "counter",
        "icgw_nonce_gaps": "counter",
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
    assert value[("icgw_messages_relayed_total", (("direction", "to_canister"),))] == 2
    assert value[("icgw_bytes_relayed_total", (("direction", "to_canister"),))] == 612
    assert value[("icgw_bytes_relayed_total", (("direction", "to_client"),))] == 3000
    assert value[("icgw_connections_total", ())] == 2
    assert value[("icgw_connections_open", ())] == 1
    assert value[("icgw_connections_closed_total", (("reason", "slow_client"),))] == 1
    assert value[("icgw_connections_closed_total", (("reason", "client_close"),))] == 0
    assert value[("icgw_slow_client_closes_total", ())] == 1
    assert value[("icgw_relay_errors_total", (("reason", "rejected"),))] == 1
    assert value[("icgw_polls_total", (("outcome", "messages"),))] == 1
    assert value[("icgw_polls_total", (("outcome", "empty"),))] == 1
    assert value[("icgw_poll_latency_seconds_count", ())] == 2
    assert value[("icgw_nonce_gaps_total", ())] == 1
    assert value[("icgw_certificate_failures_total", ())] == 1
    assert value[("icgw_ws_close_total", (("outcome", "ok"),))] == 1
    assert value[("icgw_delivery_latency_seconds_bucket", (("le", "2.5"),))] == 1
    assert value[("icgw_delivery_latency_seconds_bucket", (("le", "1.0"),))] == 0
    assert value[("icgw_active_pollers", ())] == 1
    info = [sample for sample in samples if sample.name == "icgw_info"]
    assert [sample.labels["principal"] for sample in info] == [PRINCIPAL]

    # Every label value exists from the start, at zero, so rates work from the first scrape.
    for reason in CloseReason:
        assert ("icgw_connections_closed_total", (("reason", reason.value),)) in value
    for error in RelayError:
        assert ("icgw_relay_errors_total", (("reason", error.value),)) in value
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


def test_unexpected_label_values_are_bounded(metrics: GatewayMetrics) -> None:
    observer = PrometheusObserver(metrics)
    observer.relay_failed("HTTPStatusError")  # e.g. an exception class name
    observer.relay_failed("HTTPStatusError")
    for index in range(MAX_EXTRA_LABEL_VALUES + 5):
        observer.relay_failed(f"Error{index}")
    registry = metrics.registry
    assert registry.get_sample_value("icgw_relay_errors_total", {"reason": "HTTPStatusError"}) == 2
    assert registry.get_sample_value("icgw_relay_errors_total", {"reason": "Error0"}) == 1
    last_bound = f"Error{MAX_EXTRA_LABEL_VALUES - 2}"  # HTTPStatusError took the first extra slot
    assert registry.get_sample_value("icgw_relay_errors_total", {"reason": last_bound}) == 1
    assert (
        registry.get_sample_value("icgw_relay_errors_total", {"reason": f"Error{MAX_EXTRA_LABEL_VALUES}"})
        is None
    )
    assert registry.get_sample_value("icgw_relay_errors_total", {"reason": "other"}) == 6
    # Known values never spill into "other", however many extra ones came first.
    observer.relay_failed("timeout")
    assert registry.get_sample_value("icgw_relay_errors_total", {"reason": "timeout"}) == 1
