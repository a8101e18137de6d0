"""Prometheus metrics of the gateway, in a registry of their own.

Unlike the reference (summaries, per-client labels, series that vanish after 10 s), every latency is a
histogram that Prometheus can aggregate across instances, no label identifies a client, a canister or a
connection, and series live as long as the process. `GatewayMetrics` binds every label value once, at start:
the hot paths call `.inc()` / `.observe()` on a ready child and never build label strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import disable_created_metrics

import icgw
from icgw.gateway.observer import GatewayObserver

# The `_created` series double the number of series per counter and histogram and no dashboard reads them.
# The switch is process-wide; icgw's registry is the only thing this process exports.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

# From 100 µs (an in-process relay) to 30 s (IC consensus, timeouts, a slow canister), about 2.5x apart.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
    10.0, 30.0,
)  # fmt: skip
# Label values a labelled counter takes beyond its known ones (from a caller passing, say, an exception
# class name) before further new values are counted as "other": a bound on the number of series.
MAX_EXTRA_LABEL_VALUES = 16
OTHER_LABEL = "other"


class CloseReason(StrEnum):
    """Why the gateway's side of a client connection ended."""

    CLIENT_CLOSE = "client_close"  # the client sent Close or went away
    PROTOCOL_ERROR = "protocol_error"  # a frame that is not a valid client request
    OPEN_TIMEOUT = "open_timeout"  # no valid ws_open frame within the open timeout
    SLOW_CLIENT = "slow_client"  # its send buffer passed the high-water mark
    RATE_LIMITED = "rate_limited"  # more frames per second than allowed
    IDLE_TIMEOUT = "idle_timeout"  # no pong to the keep-alive ping
    CANISTER_CLOSE = "canister_close"  # the canister ended the connection
    CANISTER_REFUSED = "canister_refused"  # the IC refused the client's ws_open
    SHUTDOWN = "shutdown"  # the gateway is stopping
    POLLER_FAILED = "poller_failed"  # the canister's poller gave up
    SERVER_ERROR = "server_error"  # a bug or an unexpected failure in the gateway


class RelayError(StrEnum):
    """Why relaying a client's envelope to the IC failed."""

    REJECTED = "rejected"  # the IC refused it (HTTP 4xx or a reject)
    IC_UNAVAILABLE = "ic_unavailable"  # HTTP 5xx, or the IC could not be reached
    TIMEOUT = "timeout"  # no answer in time


class PollOutcome(StrEnum):
    MESSAGES = "messages"
    EMPTY = "empty"
    TIMEOUT = "timeout"
    ERROR = "error"


class WsCloseOutcome(StrEnum):
    OK = "ok"  # the canister's ws_close returned Ok
    ERR = "err"  # it returned Err (e.g. the client was already gone)
    FAILED = "failed"  # the call itself failed


class LabelledCounter:
    """The children of a counter with one label, looked up by label value.

    The known values are bound at start, so each series exists from the first scrape (at 0) and the hot path
    is a dict lookup and `.inc()`. Unexpected values are bound on first use, up to
    `MAX_EXTRA_LABEL_VALUES`; more are counted under `other` rather than growing the series without bound.
    """

    __slots__ = ("_children", "_extra", "_metric")

    def __init__(self, metric: Counter, known: type[StrEnum]) -> None:
        self._metric = metric
        # StrEnum members hash and compare like their values, so plain strings find them too.
        self._children: dict[str, Counter] = {value: metric.labels(value.value) for value in known}
        self._extra = 0

    def __getitem__(self, label: str) -> Counter:
        child = self._children.get(label)
        if child is None:
            child = self._bind(label)
        return child

    def _bind(self, label: str) -> Counter:
        if self._extra >= MAX_EXTRA_LABEL_VALUES:
            label = OTHER_LABEL
            child = self._children.get(label)
            if child is not None:
                return child
        else:
            self._extra += 1
        child = self._children[label] = self._metric.labels(label)
        return child


@dataclass(frozen=True, slots=True)
class ByDirection:
    """A counter's two children, client → canister and canister → client."""

    to_canister: Counter
    to_client: Counter


class GatewayMetrics:
    """Every metric of one gateway process, with label children bound in advance.

    Attributes are the objects to update: e.g. `metrics.messages_relayed.to_client.inc()`,
    `metrics.connections_closed[CloseReason.SLOW_CLIENT].inc()`, `metrics.relay_latency.observe(seconds)`.
    """

    def __init__(self, principal: str, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        # --- connections ---------------------------------------------------------------------------
        self.connections_open = Gauge(
            "icgw_connections_open", "Client WebSocket connections open now.", registry=r
        )
        self.connections_total = Counter("icgw_connections", "Client connections accepted.", registry=r)
        self.connections_closed = LabelledCounter(
            Counter(
                "icgw_connections_closed", "Client connections closed, by reason.", ["reason"], registry=r
            ),
            CloseReason,
        )
        self.slow_client_closes = Counter(
            "icgw_slow_client_closes",
            "Clients closed because their send buffer passed the high-water mark.",
            registry=r,
        )
        self.connection_open_latency = Histogram(
            "icgw_connection_open_latency_seconds",
            "From TCP accept to the first canister message sent to the client (the reference's "
            "connection_opening_time).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

        # --- client → canister ---------------------------------------------------------------------
        messages = Counter(
            "icgw_messages_relayed", "Messages relayed, by direction.", ["direction"], registry=r
        )
        self.messages_relayed = ByDirection(messages.labels("to_canister"), messages.labels("to_client"))
        relayed_bytes = Counter(
            "icgw_bytes_relayed",
            "Payload bytes relayed (frames as received or sent), by direction.",
            ["direction"],
            registry=r,
        )
        self.bytes_relayed = ByDirection(
            relayed_bytes.labels("to_canister"), relayed_bytes.labels("to_client")
        )
        self.relay_latency = Histogram(
            "icgw_relay_latency_seconds",
            "From a client frame received to the IC accepting the call.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.relay_errors = LabelledCounter(
            Counter(
                "icgw_relay_errors",
                "Client envelopes the IC did not accept, by reason.",
                ["reason"],
                registry=r,
            ),
            RelayError,
        )

        # --- canister → client ---------------------------------------------------------------------
        self.poll_latency = Histogram(
            "icgw_poll_latency_seconds",
            "Duration of one ws_get_messages query, request to verified reply.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.polls = LabelledCounter(
            Counter("icgw_polls", "ws_get_messages polls, by outcome.", ["outcome"], registry=r), PollOutcome
        )
        self.certificate_failures = Counter(
            "icgw_certificate_failures",
            "Message batches whose certificate or witness did not verify.",
            registry=r,
        )
        self.nonce_gaps = Counter(
            "icgw_nonce_gaps",
            "Polls whose first message nonce was not the one expected (the canister dropped messages).",
            registry=r,
        )
        self.active_pollers = Gauge("icgw_active_pollers", "Canisters being polled now.", registry=r)
        self.delivery_latency = Histogram(
            "icgw_delivery_latency_seconds",
            "From a canister message's timestamp to its frame being handed to the client socket.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ws_close = LabelledCounter(
            Counter(
                "icgw_ws_close",
                "ws_close calls made for departed clients, by outcome.",
                ["outcome"],
                registry=r,
            ),
            WsCloseOutcome,
        )

        # --- identity ------------------------------------------------------------------------------
        self.info = Info("icgw", "The gateway's version and principal.", registry=r)
        self.info.info({"version": icgw.__version__, "principal": principal})


class PrometheusObserver(GatewayObserver):
    """The gateway's observer interface recorded in `GatewayMetrics`: each call updates bound children."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def connection_opened(self) -> None:
        self._metrics.connections_total.inc()
        self._metrics.connections_open.inc()

    def connection_closed(self, reason: str) -> None:
        self._metrics.connections_open.dec()
        self._metrics.connections_closed[reason].inc()

    def delivered(self, nbytes: int) -> None:
        self._metrics.messages_relayed.to_client.inc()
        self._metrics.bytes_relayed.to_client.inc(nbytes)

    def relayed(self, method: str, nbytes: int, seconds: float) -> None:
        # No method label: method names are chosen by each canister, so they are not a bounded set.
        self._metrics.messages_relayed.to_canister.inc()
        self._metrics.bytes_relayed.to_canister.inc(nbytes)
        self._metrics.relay_latency.observe(seconds)

    def relay_failed(self, reason: str) -> None:
        self._metrics.relay_errors[reason].inc()

    def slow_client_close(self) -> None:
        self._metrics.slow_client_closes.inc()

    def poll(self, outcome: str, seconds: float) -> None:
        self._metrics.polls[outcome].inc()
        self._metrics.poll_latency.observe(seconds)

    def certificate_failure(self) -> None:
        self._metrics.certificate_failures.inc()

    def nonce_gap(self) -> None:
        self._metrics.nonce_gaps.inc()

    def active_pollers(self, count: int) -> None:
        self._metrics.active_pollers.set(count)

    def ws_close(self, outcome: str) -> None:
        self._metrics.ws_close[outcome].inc()
