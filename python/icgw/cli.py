"""The `icgw` command: flags and `ICGW_*` environment variables into one `GatewayConfig`, then the gateway.

Every option is a flag and an environment variable named after it (`--max-frame-size` and
`ICGW_MAX_FRAME_SIZE`); a flag beats the environment, which beats the default. The reference gateway's
flags keep their names and meaning, so its command lines work unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import icgw
from icgw.config import MIB, ConfigError, GatewayConfig, SocketAddress, parse_principal

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": MIB,
    "mib": MIB,
    "g": 1024 * MIB,
    "gib": 1024 * MIB,
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _integer(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _size(text: str) -> int:
    """Bytes, optionally with a binary unit: `2097152`, `2MiB`, `64k`."""
    stripped = text.strip().replace("_", "")
    digits = stripped.rstrip("bBkKmMgGiI")
    unit = stripped[len(digits) :].lower()
    if unit not in _SIZE_UNITS or not digits.isdigit():
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 4194304, 4096k, 4MiB)")
    return int(digits) * _SIZE_UNITS[unit]


def _optional_address(text: str) -> SocketAddress | None:
    return None if text.strip().lower() in ("", "off") else SocketAddress.parse(text)


def _optional_path(text: str) -> Path | None:
    return Path(text) if text.strip() else None


def _optional_text(text: str) -> str | None:
    return text if text.strip() else None


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def _principals(texts: Sequence[str]) -> tuple[bytes, ...]:
    return tuple(parse_principal(item) for text in texts for item in text.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class _Option:
    """One setting's flag, environment variable, parser and help."""

    flag: str
    setting: str  # the GatewayConfig field it sets
    parse: Callable[[Any], Any]  # text (a list of texts for kind "list") to the setting's value
    help: str
    metavar: str | None = None
    kind: Literal["value", "list", "switch"] = "value"
    default_text: str | None = None  # when the field's default value needs explaining

    @property
    def env(self) -> str:
        return "ICGW_" + self.flag.removeprefix("--").upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.setting


_OPTIONS: tuple[_Option, ...] = (
    # The reference gateway's flags.
    _Option("--gateway-address", "gateway_address", SocketAddress.parse,
            "WebSocket listen address, host:port ([::1]:8080 for IPv6)", "HOST:PORT"),
    _Option("--ic-network-url", "ic_network_url", str,
            "URL of the IC API (a boundary node or a local replica)", "URL"),
    _Option("--polling-interval", "polling_interval_ms", _integer,
            "pause between two polls of a canister's messages, in ms", "MS"),
    _Option("--prometheus-endpoint", "prometheus_endpoint", _optional_address,
            "listen address of /metrics, /healthz and /readyz; empty or 'off' disables it", "HOST:PORT"),
    _Option("--tls-certificate-pem-path", "tls_certificate_pem_path", _optional_path,
            "PEM certificate chain; TLS is on when this and the key are both set", "PATH"),
    _Option("--tls-certificate-key-pem-path", "tls_certificate_key_pem_path", _optional_path,
            "PEM private key of the certificate", "PATH"),
    _Option("--opentelemetry-collector-endpoint", "opentelemetry_collector_endpoint", _optional_text,
            "OTLP collector to send traces to; empty means no tracing", "URL"),
    # icgw's own.
    _Option("--identity-file", "identity_file", _optional_path,
            "the gateway's Ed25519 key (PKCS#8 PEM), created if missing", "PATH",
            default_text="<data-dir>/key_pair"),
    _Option("--data-dir", "data_dir", Path, "directory for the key file and data/traces logs", "DIR"),
    _Option("--max-connections", "max_connections", _integer, "client connections accepted at once", "N"),
    _Option("--max-frame-size", "max_frame_size", _size,
            "largest client frame accepted, in bytes (units: k, MiB, ...)", "BYTES"),
    _Option("--max-client-messages-per-second", "max_client_messages_per_second", _number,
            "frames a client may send per second, also the burst (at least 1)", "RATE"),
    _Option("--open-timeout", "open_timeout_s", _number,
            "seconds from accepting a connection to its ws_open frame", "SECONDS"),
    _Option("--send-buffer-high-water", "send_buffer_high_water", _size,
            "bytes queued for one client before it is closed as too slow", "BYTES"),
    _Option("--allow-canister", "allowed_canisters", _principals,
            "a canister clients may connect to; repeat it or give a comma-separated list; unset allows all",
            "PRINCIPAL", kind="list"),
    _Option("--drain-timeout", "drain_timeout_s", _number,
            "seconds connections get to close cleanly on shutdown", "SECONDS"),
    _Option("--idle-timeout", "idle_timeout_s", _number,
            "WebSocket keep-alive ping interval and pong timeout, in seconds; 0 disables it", "SECONDS"),
    _Option("--poll-timeout", "poll_timeout_ms", _integer, "timeout of one poll query, in ms", "MS"),
    _Option("--workers", "workers", _integer,
            "worker processes sharing the port, each with its own identity", "N"),
    _Option("--embedded-replica", "embedded_replica", _boolean,
            "run the embedded IC replica emulator (icgw.replica) and use it as the IC", kind="switch"),
    _Option("--replica-canisters", "replica_canisters", _integer,
            "canisters the embedded replica emulator installs", "N"),
    _Option("--log-stdout", "log_stdout", str, "stdout log filter, e.g. icgw=info,icgw.gateway.poller=debug",
            "SPEC"),
    _Option("--log-file", "log_file", _optional_text,
            "JSON log file filter (data/traces/gateway_<ms>.log); unset writes no file", "SPEC"),
    _Option("--log-telemetry", "log_telemetry", str,
            "which spans are traced: icgw=info connections, icgw=debug also polls", "SPEC"),
)  # fmt: skip

_BY_SETTING = {option.setting: option for option in _OPTIONS}


def _default_text(option: _Option) -> str:
    if option.default_text is not None:
        return option.default_text
    value = {f.name: f.default for f in fields(GatewayConfig)}[option.setting]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icgw",
        description="A fast, verifying WebSocket gateway for the Internet Computer.",
        epilog="Every option can also be set with the environment variable shown in its help; "
        "a flag beats the environment, which beats the default.",
    )
    for option in _OPTIONS:
        help_text = f"{option.help} [env {option.env}; default {_default_text(option)}]"
        if option.kind == "switch":
            parser.add_argument(
                option.flag, dest=option.dest, action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )  # fmt: skip
        elif option.kind == "list":
            parser.add_argument(
                option.flag, dest=option.dest, action="append", metavar=option.metavar, help=help_text
            )
        else:
            parser.add_argument(option.flag, dest=option.dest, metavar=option.metavar, help=help_text)
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the resulting settings and where each came from, then exit",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"icgw {icgw.__version__}")
    return parser


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A configuration and, per setting that was not left at its default, where it came from."""

    config: GatewayConfig
    sources: Mapping[str, str]  # setting -> "--flag" or "ICGW_VAR"
    print_config: bool


def load_config(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
) -> LoadedConfig:
    """Parse flags (argparse exits on unknown ones) and the environment; raises `ConfigError`."""
    parser = parser if parser is not None else build_parser()
    environ = os.environ if environ is None else environ
    namespace = parser.parse_args(argv)
    settings: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in _OPTIONS:
        raw = getattr(namespace, option.dest)
        if raw is not None:
            source = option.flag
        elif option.env in environ:
            source = option.env
            raw = environ[option.env]
            if option.kind == "list":
                raw = [raw]
        else:
            continue
        try:
            # A switch given as a flag is already a bool (BooleanOptionalAction); a list is a list of texts.
            value = raw if isinstance(raw, bool) else option.parse(raw)
        except ValueError as error:
            raise ConfigError(option.setting, f"{source}: {error}") from None
        if option.kind == "list" and not value:
            continue  # an empty ICGW_ALLOW_CANISTER means no allow-list, like leaving it unset
        settings[option.setting] = value
        sources[option.setting] = source
    try:
        config = GatewayConfig(**settings)
    except ConfigError as error:
        raise _named_error(error, sources) from None
    _check_readable(config, sources)
    return LoadedConfig(config, sources, bool(namespace.print_config))


def _named_error(error: ConfigError, sources: Mapping[str, str]) -> ConfigError:
    """The same error, naming the flag or variable the bad value came from instead of the field."""
    option = _BY_SETTING.get(error.setting)
    if option is None:
        return error
    where = sources.get(error.setting, f"{option.flag} / {option.env}")
    return ConfigError(error.setting, f"{where}: {error.reason}")


def _check_readable(config: GatewayConfig, sources: Mapping[str, str]) -> None:
    # Fail at start, with the flag's name, rather than at the first TLS handshake.
    for setting in ("tls_certificate_pem_path", "tls_certificate_key_pem_path"):
        path: Path | None = getattr(config, setting)
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise _named_error(ConfigError(setting, f"{str(path)!r} is not a readable file"), sources)


def describe_config(loaded: LoadedConfig) -> str:
    """The settings one per line, `name = value  (source)`, for `--print-config`."""
    lines = []
    for f in fields(GatewayConfig):
        value = getattr(loaded.config, f.name)
        if f.name == "allowed_canisters" and value is not None:
            value = ",".join(loaded.config.allowed_canister_texts() or [])
        elif f.name == "identity_file":
            value = loaded.config.identity_path
        lines.append(f"{f.name} = {value}  ({loaded.sources.get(f.name, 'default')})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `icgw` and `python -m icgw`; returns the process exit status."""
    parser = build_parser()
    try:
        loaded = load_config(argv, parser=parser)
    except ConfigError as error:
        parser.error(error.reason)  # prints usage and the reason, exits with status 2
    if loaded.print_config:
        print(describe_config(loaded))
        return 0
    # Imported here so that --help, --version and configuration errors do not pay for the gateway's imports.
    gateway_app = importlib.import_module("icgw.gateway.app")
    run: Callable[[GatewayConfig], int | None] = gateway_app.run
    status = run(loaded.config)
    return status if isinstance(status, int) else 0
