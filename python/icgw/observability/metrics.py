"""Prometheus metrics of the gateway, in a registry of their own.

Unlike the reference (summaries, per-client labels, series that vanish after 10 s), every latency is a
histogram that Prometheus can aggregate across instances, no label identifies a client, a canister or a
connection, and series live as long as the process. `GatewayMetrics` binds every label value once, at start:
the hot paths call `.inc()` / `.observe()` on a ready child and never build label strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import disable_created_metrics

import icgw

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
# Connection lifetimes: from a failed open to a day-long session.
DURATION_BUCKETS_S: tuple[float, ...] = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class CloseReason(StrEnum):
    """Why the gateway's side of a client connection ended."""

    CLIENT_CLOSE = "client_close"  # the client sent Close or went away
    PROTOCOL_ERROR = "protocol_error"  # a frame that is not a valid client request
    OPEN_TIMEOUT = "open_timeout"  # no valid ws_open frame within the open timeout
    SLOW_CLIENT = "slow_client"  # its send buffer passed the high-water mark
    RATE_LIMITED = "rate_limited"  # more frames per second than allowed
    IDLE_TIMEOUT = "idle_timeout"  # no pong to the keep-alive ping
    CANISTER_CLOSE = "canister_close"  # the canister ended the connection
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


_Label = TypeVar("_Label", bound=StrEnum)


def _bind(metric: Counter, labels: type[_Label]) -> dict[_Label, Counter]:
    # Create every child at start so each series is exported from the first scrape, at 0.
    return {value: metric.labels(value.value) for value in labels}


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
        self.connections_closed = _bind(
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
        self.connection_duration = Histogram(
            "icgw_connection_duration_seconds",
            "Lifetime of client connections, from accept to close.",
            buckets=DURATION_BUCKETS_S,
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
        self.relay_errors = _bind(
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
        self.polls = _bind(
            Counter("icgw_polls", "ws_get_messages polls, by outcome.", ["outcome"], registry=r), PollOutcome
        )
        self.certificate_failures = Counter(
            "icgw_certificate_failures",
            "Message batches whose certificate or witness did not verify.",
            registry=r,
        )
        self.active_pollers = Gauge("icgw_active_pollers", "Canisters being polled now.", registry=r)
        self.delivery_latency = Histogram(
            "icgw_delivery_latency_seconds",
            "From a canister message's timestamp to its frame being handed to the client socket.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ws_close = _bind(
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
