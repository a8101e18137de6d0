"""The gateway's settings: one frozen `GatewayConfig`, validated when it is built.

Every other part of icgw reads its settings from this object; the CLI (`icgw.cli`) is only a way to build one
from flags and `ICGW_*` environment variables. Defaults follow the reference gateway where it has a setting
(listen address, IC URL, polling interval and timeout, key file) and are chosen here for the limits the
reference lacks (connections, frame size, message rate, timeouts, buffers).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from icgw.core import PrincipalError, principal_from_text, principal_to_text
from icgw.observability.logging import LogSpecError, parse_log_spec
from icgw.observability.tracing import otlp_http_traces_url

KIB = 1024
MIB = 1024 * KIB

# The IC refuses ingress messages above 2 MiB (the payload limit of application subnets). A client frame wraps
# such a message in the envelope (sender key, signature, delegation chain) and a CBOR map around it, so the
# frame limit adds headroom for those instead of refusing a call the IC would accept.
IC_INGRESS_LIMIT = 2 * MIB
ENVELOPE_HEADROOM = 64 * KIB
# A signed ws_open envelope alone takes several hundred bytes; a smaller limit could never open a connection.
MIN_FRAME_SIZE = 4 * KIB


class ConfigError(ValueError):
    """An invalid setting. `setting` names the `GatewayConfig` field (the CLI maps it to its flag)."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """A host and port to listen on. Text form `host:port`, IPv6 in brackets: `[::1]:8080`."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SocketAddress:
        """Parse `host:port` / `[v6]:port`; raises `ValueError` with the reason."""
        text = text.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"{text!r} is not [ipv6]:port")
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{text!r} is not host:port")
            if ":" in host:
                raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} in {text!r} is not a number from 0 to 65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_principal(text: str) -> bytes:
    """A principal's bytes from its text form; raises `ValueError` naming the bad text."""
    try:
        return principal_from_text(text.strip())
    except PrincipalError as error:
        raise ValueError(str(error)) from None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """All the gateway's settings. Build it directly (tests, embedding) or with `icgw.cli.load_config`."""

    # --- the reference gateway's settings ----------------------------------------------------------
    gateway_address: SocketAddress = SocketAddress("0.0.0.0", 8080)
    ic_network_url: str = "http://127.0.0.1:4943"
    polling_interval_ms: int = 100
    poll_timeout_ms: int = 5000
    # The reference's code listens on 9000 and its README says 9090; icgw's default is 9090.
    # None disables the metrics and health endpoint.
    prometheus_endpoint: SocketAddress | None = SocketAddress("0.0.0.0", 9090)
    tls_certificate_pem_path: Path | None = None
    tls_certificate_key_pem_path: Path | None = None
    opentelemetry_collector_endpoint: str | None = None
    # --- limits and timeouts the reference does not have -------------------------------------------
    max_connections: int = 100_000
    max_frame_size: int = IC_INGRESS_LIMIT + ENVELOPE_HEADROOM
    # Frames a client may send per second, also the token-bucket burst.
    max_client_messages_per_second: float = 100.0
    open_timeout_s: float = 30.0  # from TCP accept to a valid ws_open frame
    send_buffer_high_water: int = 4 * MIB  # bytes queued for one client before it is closed as slow
    # Canisters clients may open connections to (raw principal bytes, sorted, no duplicates); None allows
    # every canister. Checked once per connection, so a tuple is enough.
    allowed_canisters: tuple[bytes, ...] | None = None
    drain_timeout_s: float = 10.0  # on shutdown, time left to connections to close cleanly
    idle_timeout_s: float = 30.0  # WebSocket ping interval and pong timeout; 0 disables keep-alive
    # --- processes, identity, files ----------------------------------------------------------------
    workers: int = 1
    data_dir: Path = Path("data")
    # The gateway's Ed25519 key (PKCS#8 PEM); None means `<data_dir>/key_pair`, the reference's location.
    # Read `identity_path`, which resolves that.
    identity_file: Path | None = None
    # --- the embedded IC replica emulator ----------------------------------------------------------
    embedded_replica: bool = False
    replica_canisters: int = 1
    # --- log and telemetry filters (`target=level,...` specs, see icgw.observability.logging) ------
    # The reference's default is its own crate at info and nothing else. icgw adds other libraries' errors:
    # an exception in an asyncio task, or a failed trace export, is reported at ERROR by asyncio or the
    # library, and would otherwise vanish.
    log_stdout: str = "error,icgw=info"
    log_file: str | None = None  # None: no log file is written
    log_telemetry: str = "icgw=debug"

    def __post_init__(self) -> None:
        if (
            self.opentelemetry_collector_endpoint is not None
            and not self.opentelemetry_collector_endpoint.strip()
        ):
            # The reference treats an empty endpoint as unset; so do we.
            object.__setattr__(self, "opentelemetry_collector_endpoint", None)
        if self.log_file is not None and not self.log_file.strip():
            object.__setattr__(self, "log_file", None)
        self._validate()

    def _validate(self) -> None:
        _check_url("ic_network_url", self.ic_network_url)
        _check_int("polling_interval_ms", self.polling_interval_ms, minimum=0)
        _check_int("poll_timeout_ms", self.poll_timeout_ms, minimum=1)
        if (self.tls_certificate_pem_path is None) != (self.tls_certificate_key_pem_path is None):
            missing, given = (
                ("tls_certificate_key_pem_path", "certificate")
                if self.tls_certificate_key_pem_path is None
                else ("tls_certificate_pem_path", "key")
            )
            raise ConfigError(missing, f"TLS needs both the certificate and its key; only the {given} is set")
        if self.opentelemetry_collector_endpoint is not None:
            try:
                otlp_http_traces_url(self.opentelemetry_collector_endpoint)
            except ValueError as error:
                raise ConfigError("opentelemetry_collector_endpoint", str(error)) from None
        _check_int("max_connections", self.max_connections, minimum=1)
        _check_int("max_frame_size", self.max_frame_size, minimum=MIN_FRAME_SIZE)
        # At least one: the rate is also the burst, and a burst below one frame would refuse every frame.
        _check_number("max_client_messages_per_second", self.max_client_messages_per_second, minimum=1)
        _check_number("open_timeout_s", self.open_timeout_s, minimum=0, exclusive=True)
        _check_int("send_buffer_high_water", self.send_buffer_high_water, minimum=1)
        if self.allowed_canisters is not None:
            if not self.allowed_canisters:
                raise ConfigError(
                    "allowed_canisters", "an empty allow-list would refuse every client; omit it"
                )
            # One canonical form, so equal allow-lists make equal configs.
            object.__setattr__(self, "allowed_canisters", tuple(sorted(set(self.allowed_canisters))))
        _check_number("drain_timeout_s", self.drain_timeout_s, minimum=0)
        _check_number("idle_timeout_s", self.idle_timeout_s, minimum=0)
        _check_int("workers", self.workers, minimum=1)
        _check_int("replica_canisters", self.replica_canisters, minimum=1)
        for name in ("log_stdout", "log_file", "log_telemetry"):
            spec = getattr(self, name)
            if spec is not None:
                try:
                    parse_log_spec(spec)
                except LogSpecError as error:
                    raise ConfigError(name, str(error)) from None

    @property
    def tls_enabled(self) -> bool:
        return self.tls_certificate_pem_path is not None

    @property
    def identity_path(self) -> Path:
        """The gateway's key file: `identity_file`, or `<data_dir>/key_pair` when that is not set."""
        return self.identity_file if self.identity_file is not None else self.data_dir / "key_pair"

    @property
    def traces_dir(self) -> Path:
        """Where the JSON log file goes (the reference's `data/traces`)."""
        return self.data_dir / "traces"

    def allows_canister(self, canister_id: bytes) -> bool:
        return self.allowed_canisters is None or canister_id in self.allowed_canisters

    def allowed_canister_texts(self) -> list[str] | None:
        """The allow-list in text form, sorted (for logs and `--help`-style output)."""
        if self.allowed_canisters is None:
            return None
        return sorted(principal_to_text(canister) for canister in self.allowed_canisters)

    def for_worker(self, index: int) -> GatewayConfig:
        """The settings of worker `index` of `workers`.

        Workers share nothing: each needs its own identity (the CDK accepts any gateway principal a client
        names) and, without Prometheus multiprocess mode, its own metrics port. Worker 0 keeps the configured
        key file and port, so a single worker behaves exactly as configured; worker i > 0 uses
        `<key file>.<i>` and metrics port + i (port 0 stays 0: any free port).
        """
        if not 0 <= index < self.workers:
            raise ValueError(f"worker index {index} is outside 0..{self.workers - 1}")
        if index == 0:
            return self
        metrics = self.prometheus_endpoint
        if metrics is not None and metrics.port != 0:
            metrics = SocketAddress(metrics.host, metrics.port + index)
            if metrics.port > 65535:
                raise ConfigError(
                    "prometheus_endpoint", f"worker {index} would need metrics port {metrics.port}"
                )
        return replace(
            self,
            identity_file=self.identity_path.with_name(f"{self.identity_path.name}.{index}"),
            prometheus_endpoint=metrics,
        )


def _check_int(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")


def _check_number(name: str, value: float, *, minimum: float, exclusive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"expected a finite number, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        bound = f"greater than {minimum:g}" if exclusive else f"at least {minimum:g}"
        raise ConfigError(name, f"must be {bound}, got {value:g}")


def _check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, f"expected an http:// or https:// URL with a host, got {url!r}")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError as error:
        raise ConfigError(name, f"{url!r}: {error}") from None
