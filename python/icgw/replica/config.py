"""The replica emulator's settings: one `ReplicaConfig`, filled from the command line or environment.

Every option `--some-flag` can also be given as the environment variable `ICGW_REPLICA_SOME_FLAG`
(the command line wins), so a container or a test harness can configure the emulator without
building an argument list.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from icgw import core

Flavor = Literal["rust", "motoko"]

ENV_PREFIX = "ICGW_REPLICA_"

# The CDK's keep-alive check runs 60 s after every ack tick; an interval not above that makes the
# canister drop clients before they can answer (PROTOCOL.md §7.2), so the CDK refuses it at init.
MIN_ACK_INTERVAL_MS = 60_000

# The BLS12-381 group order: a secret key is a scalar in [1, r).
BLS_GROUP_ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001

# A range of canister ids wide enough for every emulated canister (rwlgt-iiaaa-aaaaa-aaaaa-cai up to
# v2nog-2aaaa-aaaab-p777q-cai, canister indices 0 to 0x2fffff), the range of the synthetic vectors.
DEFAULT_CANISTER_RANGE = (
    bytes.fromhex("00000000000000000101"),
    bytes.fromhex("00000000002fffff0101"),
)


class ConfigError(ValueError):
    """An invalid setting; the message names the option."""


def random_bls_secret_key() -> bytes:
    """A uniformly random BLS secret key (a nonzero scalar below the group order), 32 bytes big-endian."""
    scalar = int.from_bytes(secrets.token_bytes(64), "big") % (BLS_GROUP_ORDER - 1) + 1
    return scalar.to_bytes(32, "big")


def read_secret_key_file(path: str | Path, what: str) -> bytes:
    """A 32-byte secret from a file holding it raw or as hex (whitespace and a `0x` prefix allowed)."""
    data = Path(path).read_bytes()
    if len(data) == 32:
        return data
    text = data.decode("ascii", errors="replace").strip().removeprefix("0x")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{what} file {path}: expected 32 raw bytes or 64 hex digits") from None
    if len(secret) != 32:
        raise ConfigError(f"{what} file {path}: the key has {len(secret)} bytes, expected 32")
    return secret


def read_node_key_file(path: str | Path) -> core.Ed25519Identity:
    """The node's Ed25519 key: a PEM key file (as `Ed25519Identity.save` writes it) or a 32-byte secret."""
    data = Path(path).read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return core.Ed25519Identity.from_pem(data)
        return core.Ed25519Identity.from_secret_key(read_secret_key_file(path, "node key"))
    except core.CoreError as e:
        raise ConfigError(f"node key file {path}: {e}") from None


def parse_fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a fraction in [0, 1], not {value}")
    return value


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Fractions of IC API requests (POST /api/...) that fail on purpose, from a seeded generator."""

    fraction_5xx: float = 0.0
    fraction_timeout: float = 0.0
    fraction_drop: float = 0.0
    seed: int = 0
    # How long a "timed out" request is held before its connection is closed without an answer.
    timeout_hold_ms: int = 30_000

    @property
    def enabled(self) -> bool:
        return (self.fraction_5xx + self.fraction_timeout + self.fraction_drop) > 0.0


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    host: str = "127.0.0.1"
    port: int = 4943
    canisters: int = 1
    flavor: Flavor = "rust"
    max_returned_messages: int = 50
    ack_interval_ms: int = 300_000
    app: str | None = None
    root_key_secret: bytes | None = None
    # The node key that signs query responses; a fresh one when None.
    node_identity: core.Ed25519Identity | None = None
    round_ms: float = 5.0
    query_delay_ms: float = 0.0
    call_delay_ms: float = 0.0
    # How long /api/v3|v4/.../call waits for a terminal status before answering 202.
    sync_call_timeout_ms: float = 10_000.0
    faults: FaultConfig = field(default_factory=FaultConfig)
    allow_admin: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    canister_range: tuple[bytes, bytes] = DEFAULT_CANISTER_RANGE
    # Reported by /api/v2/status; None leaves the field out.
    impl_version: str | None = "icgw-replica"

    def __post_init__(self) -> None:
        if self.ack_interval_ms <= MIN_ACK_INTERVAL_MS:
            raise ConfigError(
                f"--ack-interval-ms must exceed {MIN_ACK_INTERVAL_MS} (the CDK's keep-alive timeout), "
                f"not {self.ack_interval_ms}"
            )
        if self.canisters < 0:
            raise ConfigError(f"--canisters must be at least 0, not {self.canisters}")
        if self.max_returned_messages < 1:
            raise ConfigError(f"--max-returned-messages must be at least 1, not {self.max_returned_messages}")
        if self.flavor not in ("rust", "motoko"):
            raise ConfigError(f"--flavor must be rust or motoko, not {self.flavor!r}")
        for name in ("round_ms", "query_delay_ms", "call_delay_ms", "sync_call_timeout_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
        if self.round_ms <= 0:
            raise ConfigError("--round-ms must be positive")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range")
        if self.max_body_bytes < 1024:
            raise ConfigError("--max-body-bytes must be at least 1024")
        lo, hi = self.canister_range
        if lo > hi:
            raise ConfigError("the canister range is empty")
        if self.app is not None and ":" not in self.app:
            raise ConfigError(f"--app must look like module:Class, not {self.app!r}")
        if self.root_key_secret is not None:
            if len(self.root_key_secret) != 32:
                raise ConfigError(f"the root key secret must be 32 bytes, not {len(self.root_key_secret)}")
            scalar = int.from_bytes(self.root_key_secret, "big")
            if not 0 < scalar < BLS_GROUP_ORDER:
                raise ConfigError("the root key secret is not a valid BLS scalar (0 < key < group order)")

    @classmethod
    def for_url(cls, url: str, **settings: Any) -> ReplicaConfig:
        """A config that listens where `url` (`http://host:port`) points; other fields from `settings`.

        For a gateway that embeds the emulator at its own `--ic-network-url`.
        """
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"the emulator serves plain http://host:port URLs, not {url!r}")
        try:
            port = parts.port if parts.port is not None else 80
        except ValueError:
            raise ConfigError(f"invalid port in {url!r}") from None
        return cls(host=parts.hostname, port=port, **settings)


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m icgw.replica",
        description="An IC replica emulator hosting IC WebSocket CDK canisters, for tests and benchmarks.",
        epilog=f"Every option can also be set as an environment variable {ENV_PREFIX}<OPTION> "
        "(e.g. ICGW_REPLICA_ROUND_MS=2).",
    )

    def opt(flag: str, **kwargs: object) -> None:
        env = _env(flag.lstrip("-"))
        if env is not None:
            if kwargs.get("action") == "store_true":
                kwargs["default"] = env.lower() in ("1", "true", "yes", "on")
            else:
                kwargs["default"] = env
        p.add_argument(flag, **kwargs)  # type: ignore[arg-type]

    opt("--listen", type=_parse_listen, default="127.0.0.1:4943", help="HOST:PORT (port 0: any free port)")
    opt("--canisters", type=int, default=1, help="number of test canisters to host (default 1)")
    opt("--flavor", choices=["rust", "motoko"], default="rust", help="which CDK the canisters mimic")
    opt("--max-returned-messages", type=int, default=50, help="ws_get_messages batch size (default 50)")
    opt("--ack-interval-ms", type=int, default=300_000, help="CDK send_ack_interval_ms (> 60000)")
    opt("--app", default=None, help="module:Class of a user app to host instead of the test app")
    opt("--root-key-file", default=None, help="file with the 32-byte BLS root secret key (hex or raw)")
    opt("--node-key-file", default=None, help="file with the node's Ed25519 key (PEM, hex or raw 32 bytes)")
    opt("--round-ms", type=float, default=5.0, help="certification round length (default 5 ms)")
    opt("--query-delay-ms", type=float, default=0.0, help="simulated latency added to every query")
    opt("--call-delay-ms", type=float, default=0.0, help="simulated delay before a call executes")
    opt("--sync-call-timeout-ms", type=float, default=10_000.0, help="v3/v4 call wait before 202")
    opt("--fault-5xx", type=float, default=0.0, help="fraction of API requests answered 503")
    opt("--fault-timeout", type=float, default=0.0, help="fraction of API requests never answered")
    opt("--fault-drop", type=float, default=0.0, help="fraction of API requests whose connection drops")
    opt("--fault-seed", type=int, default=0, help="seed of the fault generator (default 0)")
    opt("--fault-timeout-hold-ms", type=int, default=30_000, help="how long an unanswered request is held")
    opt("--allow-admin", action="store_true", default=False, help="serve /_admin/* (time control)")
    opt("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="request body limit (413 above)")
    opt(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="debug logs one line per request (default info)",
    )
    return p


def config_from_args(argv: Sequence[str] | None = None) -> tuple[ReplicaConfig, str]:
    """Parse the command line (and environment) into a config and the log level name."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    listen = ns.listen if isinstance(ns.listen, tuple) else _parse_listen(ns.listen)
    try:
        config = ReplicaConfig(
            host=listen[0],
            port=listen[1],
            canisters=int(ns.canisters),
            flavor=ns.flavor,
            max_returned_messages=int(ns.max_returned_messages),
            ack_interval_ms=int(ns.ack_interval_ms),
            app=ns.app,
            root_key_secret=(
                read_secret_key_file(ns.root_key_file, "root key") if ns.root_key_file else None
            ),
            node_identity=read_node_key_file(ns.node_key_file) if ns.node_key_file else None,
            round_ms=float(ns.round_ms),
            query_delay_ms=float(ns.query_delay_ms),
            call_delay_ms=float(ns.call_delay_ms),
            sync_call_timeout_ms=float(ns.sync_call_timeout_ms),
            faults=FaultConfig(
                fraction_5xx=parse_fraction("--fault-5xx", float(ns.fault_5xx)),
                fraction_timeout=parse_fraction("--fault-timeout", float(ns.fault_timeout)),
                fraction_drop=parse_fraction("--fault-drop", float(ns.fault_drop)),
                seed=int(ns.fault_seed),
                timeout_hold_ms=int(ns.fault_timeout_hold_ms),
            ),
            allow_admin=bool(ns.allow_admin),
            max_body_bytes=int(ns.max_body_bytes),
        )
    except (OSError, ValueError) as e:
        parser.error(str(e))
    return config, str(ns.log_level)
