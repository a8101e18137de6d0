"""OpenTelemetry traces: one span per client connection and one per sampled poll, nothing per message.

Off unless `--opentelemetry-collector-endpoint` is set. Off, `connection_span()` and `poll_span()` return one
shared no-op context manager and OpenTelemetry is never imported (importing it alone takes ~0.1 s).

On, spans go through a batch processor (a background thread) to an OTLP/HTTP exporter. Connections are all
traced; polls (about ten per second per canister at the default interval) are sampled, by default 10 %.
Both are root spans: a poller started from a client's task must not become that client's child, and a child
span the gateway opens inside either follows its parent's sampling decision.

`ICGW_LOG_TELEMETRY` (a filter spec like the log ones) chooses what is traced: connection spans have target
`icgw.gateway.connection` at INFO, poll spans `icgw.gateway.poller` at DEBUG. The default `icgw=debug` traces
both; `icgw=info` traces connections only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

import icgw
from icgw.observability.logging import parse_log_spec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
    from opentelemetry.trace import Link, SpanKind, Tracer
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

CONNECTION_SPAN = "icgw.connection"
POLL_SPAN = "icgw.poll"
CONNECTION_TARGET = "icgw.gateway.connection"
POLL_TARGET = "icgw.gateway.poller"
DEFAULT_POLL_SAMPLE_RATIO = 0.1

OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
OTLP_HTTP_TRACES_PATH = "/v1/traces"

AttributeValue = str | bool | int | float


class TraceSpan(Protocol):
    """What the gateway may do with a span: OpenTelemetry's `Span` and the no-op both provide it."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None: ...

    def is_recording(self) -> bool: ...


class _NoopSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NOOP_SPAN: TraceSpan = _NoopSpan()
# nullcontext is stateless, so one instance serves every `with` block, nested or concurrent.
_NOOP: AbstractContextManager[TraceSpan] = nullcontext(NOOP_SPAN)


@dataclass(frozen=True, slots=True)
class _ActiveTracing:
    provider: TracerProvider
    tracer: Tracer
    root_context: Context  # empty: spans started in it are roots
    connections: bool
    polls: bool


_active: _ActiveTracing | None = None


def otlp_http_traces_url(endpoint: str) -> tuple[str, bool]:
    """The OTLP/HTTP traces URL for a collector endpoint, and whether a gRPC-style endpoint was translated.

    icgw ships the OTLP/HTTP (protobuf) exporter only; the reference speaks OTLP/gRPC. A gRPC-style endpoint
    (`grpc://host:port`, or any endpoint on the gRPC port 4317, e.g. the reference's `http://collector:4317`)
    is sent to the same host's standard OTLP/HTTP port 4318 instead, and the caller says so in the log: a
    collector whose `otlp` receiver enables both protocols (the usual setup) then works unchanged. A bare
    `host:port` means http; a URL without a path gets `/v1/traces`.
    """
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"bad OTLP collector endpoint {endpoint!r}: {error}") from None
    if not parts.hostname or parts.scheme not in ("http", "https", "grpc", "grpcs"):
        raise ValueError(f"bad OTLP collector endpoint {endpoint!r}: expected [http[s]://]host[:port][/path]")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    grpc_style = parts.scheme in ("grpc", "grpcs") or port == OTLP_GRPC_PORT
    if grpc_style:
        scheme = "https" if parts.scheme in ("https", "grpcs") else "http"
        return urlunsplit((scheme, f"{host}:{OTLP_HTTP_PORT}", OTLP_HTTP_TRACES_PATH, "", "")), True
    path = parts.path if parts.path not in ("", "/") else OTLP_HTTP_TRACES_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), False


def setup_tracing(
    collector_endpoint: str | None,
    principal: str,
    telemetry_spec: str = "icgw=debug",
    *,
    poll_sample_ratio: float = DEFAULT_POLL_SAMPLE_RATIO,
    exporter: SpanExporter | None = None,
) -> bool:
    """Start exporting spans; returns whether tracing is on.

    Tracing is on when `collector_endpoint` is set (empty counts as unset, as in the reference) or an
    `exporter` is given (tests pass an in-memory one), and the spec enables at least one kind of span.
    Calling it again shuts the previous setup down first.
    """
    global _active
    shutdown_tracing()
    endpoint = collector_endpoint.strip() if collector_endpoint else ""
    if not endpoint and exporter is None:
        return False
    if not 0.0 <= poll_sample_ratio <= 1.0:
        raise ValueError(f"poll_sample_ratio must be within 0..1, got {poll_sample_ratio}")
    spec = parse_log_spec(telemetry_spec)
    connections = spec.threshold(CONNECTION_TARGET) <= logging.INFO
    polls = spec.threshold(POLL_TARGET) <= logging.DEBUG
    if not (connections or polls):
        log.info("telemetry spec %r enables no spans; tracing stays off", telemetry_spec)
        return False

    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url, translated = otlp_http_traces_url(endpoint)
        if translated:
            log.warning(
                "OpenTelemetry endpoint %r looks like OTLP/gRPC; icgw exports OTLP/HTTP, to %s", endpoint, url
            )
        exporter = OTLPSpanExporter(endpoint=url)
        log.info("exporting traces to %s", url)

    resource = Resource.create(
        {
            "service.name": f"icgw-{principal[:5]}",
            "service.version": icgw.__version__,
            "service.instance.id": principal,
        }
    )
    provider = TracerProvider(sampler=_gateway_sampler(poll_sample_ratio), resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # A provider of our own rather than the global one: the global can be set once per process only.
    tracer = provider.get_tracer("icgw", icgw.__version__)
    _active = _ActiveTracing(provider, tracer, Context(), connections, polls)
    return True


def _gateway_sampler(poll_sample_ratio: float) -> Sampler:
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
    from opentelemetry.sdk.trace.sampling import Sampler as SamplerBase

    class GatewayRootSampler(SamplerBase):
        """All connection spans, a ratio of poll spans (decided by trace id, so consistently)."""

        def __init__(self) -> None:
            self._polls = TraceIdRatioBased(poll_sample_ratio)

        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            sampler = self._polls if name == POLL_SPAN else ALWAYS_ON
            return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"IcgwRoot{{polls={poll_sample_ratio}}}"

    return ParentBased(root=GatewayRootSampler())


def connection_span(client_address: str) -> AbstractContextManager[TraceSpan]:
    """A root span for a client connection's whole life; set `canister_id` etc. on it as they are learnt."""
    active = _active
    if active is None or not active.connections:
        return _NOOP
    from opentelemetry.trace import SpanKind

    return active.tracer.start_as_current_span(
        CONNECTION_SPAN,
        context=active.root_context,
        kind=SpanKind.SERVER,
        attributes={"client.address": client_address},
    )


def poll_span(canister_id: str, iteration: int) -> AbstractContextManager[TraceSpan]:
    """A root span for one poll of a canister, sampled; unsampled polls get a non-recording span."""
    active = _active
    if active is None or not active.polls:
        return _NOOP
    from opentelemetry.trace import SpanKind

    return active.tracer.start_as_current_span(
        POLL_SPAN,
        context=active.root_context,
        kind=SpanKind.CLIENT,
        attributes={"icgw.canister_id": canister_id, "icgw.poll.iteration": iteration},
    )


def tracing_enabled() -> bool:
    return _active is not None


def shutdown_tracing() -> None:
    """Export what is buffered and stop (for shutdown). Idempotent."""
    global _active
    active, _active = _active, None
    if active is not None:
        active.provider.shutdown()
