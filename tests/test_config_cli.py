"""GatewayConfig validation and the `icgw` command line: flags, ICGW_* variables, precedence, errors."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from icgw import cli
from icgw.config import IC_INGRESS_LIMIT, ConfigError, GatewayConfig, SocketAddress
from icgw.core import principal_from_text

CANISTER_A = "rrkah-fqaaa-aaaaa-aaaaq-cai"
CANISTER_B = "ryjl3-tyaaa-aaaaa-aaaba-cai"


def load(argv: list[str], environ: dict[str, str] | None = None) -> cli.LoadedConfig:
    return cli.load_config(argv, environ or {})


# --- GatewayConfig ----------------------------------------------------------------------------------


def test_defaults_match_the_reference_gateway() -> None:
    config = GatewayConfig()
    assert config.gateway_address == SocketAddress("0.0.0.0", 8080)
    assert config.ic_network_url == "http://127.0.0.1:4943"
    assert config.polling_interval_ms == 100
    assert config.poll_timeout_ms == 5000
    assert config.identity_path == Path("data/key_pair")
    assert config.traces_dir == Path("data/traces")
    assert str(config.prometheus_endpoint) == "0.0.0.0:9090"
    assert not config.tls_enabled
    assert config.opentelemetry_collector_endpoint is None
    assert config.max_frame_size > IC_INGRESS_LIMIT
    assert config.log_file is None
    assert config.log_stdout == "error,icgw=info"
    assert config.workers == 1


def test_identity_follows_the_data_dir_unless_set() -> None:
    assert GatewayConfig(data_dir=Path("/srv/icgw")).identity_path == Path("/srv/icgw/key_pair")
    explicit = GatewayConfig(data_dir=Path("/srv/icgw"), identity_file=Path("/keys/gw.pem"))
    assert explicit.identity_path == Path("/keys/gw.pem")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("[::1]:8080", "::1", 8080),
        ("[::]:0", "::", 0),
        ("gateway.example:443", "gateway.example", 443),
    ],
)
def test_socket_address_parses_and_prints_back(text: str, host: str, port: int) -> None:
    address = SocketAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("::1:8080", "brackets"),
        (":8080", "host:port"),
        ("localhost", "host:port"),
        ("localhost:65536", "0 to 65535"),
        ("localhost:http", "0 to 65535"),
        ("[::1]8080", "[ipv6]:port"),
        ("[nope]:8080", "not an IPv6 address"),
    ],
)
def test_socket_address_rejects_bad_text(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        SocketAddress.parse(text)


@pytest.mark.parametrize(
    ("settings", "setting", "reason"),
    [
        ({"polling_interval_ms": -1}, "polling_interval_ms", "at least 0"),
        ({"poll_timeout_ms": 0}, "poll_timeout_ms", "at least 1"),
        ({"max_frame_size": 100}, "max_frame_size", "at least 4096"),
        ({"workers": 0}, "workers", "at least 1"),
        ({"open_timeout_s": 0.0}, "open_timeout_s", "greater than 0"),
        ({"idle_timeout_s": float("nan")}, "idle_timeout_s", "finite"),
        ({"max_client_messages_per_second": 0.5}, "max_client_messages_per_second", "at least 1"),
        ({"ic_network_url": "127.0.0.1:4943"}, "ic_network_url", "http:// or https://"),
        ({"ic_network_url": "http://host:99999"}, "ic_network_url", "out of range"),
        ({"tls_certificate_pem_path": Path("c.pem")}, "tls_certificate_key_pem_path", "only the certificate"),
        ({"tls_certificate_key_pem_path": Path("k.pem")}, "tls_certificate_pem_path", "only the key"),
        ({"allowed_canisters": ()}, "allowed_canisters", "refuse every client"),
        ({"log_stdout": "icgw=loud"}, "log_stdout", "unknown level 'loud'"),
        ({"log_file": "icgw-x=info"}, "log_file", "bad target"),
        ({"opentelemetry_collector_endpoint": "ftp://collector"}, "opentelemetry_collector_endpoint", "bad"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(
    settings: dict[str, object], setting: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)) as raised:
        GatewayConfig(**settings)  # type: ignore[arg-type]
    assert raised.value.setting == setting
    assert str(raised.value).startswith(f"{setting}: ")


def test_empty_optional_texts_mean_unset() -> None:
    config = GatewayConfig(opentelemetry_collector_endpoint="  ", log_file="")
    assert config.opentelemetry_collector_endpoint is None
    assert config.log_file is None


def test_allow_list() -> None:
    a, b = principal_from_text(CANISTER_A), principal_from_text(CANISTER_B)
    open_config = GatewayConfig()
    assert open_config.allows_canister(a)
    assert open_config.allowed_canister_texts() is None
    limited = GatewayConfig(allowed_canisters=(a,))
    assert limited.allows_canister(a)
    assert not limited.allows_canister(b)
    assert limited.allowed_canister_texts() == [CANISTER_A]
    # Duplicates and order do not matter: one canonical tuple.
    assert GatewayConfig(allowed_canisters=(b, a, b)) == GatewayConfig(allowed_canisters=(a, b))
    assert GatewayConfig(allowed_canisters=(b, a, b)).allowed_canisters == tuple(sorted((a, b)))


def test_workers_get_their_own_identity_and_metrics_port() -> None:
    config = GatewayConfig(workers=3, prometheus_endpoint=SocketAddress("127.0.0.1", 9090))
    assert config.for_worker(0) is config
    second = config.for_worker(2)
    assert second.identity_path == Path("data/key_pair.2")
    assert second.prometheus_endpoint == SocketAddress("127.0.0.1", 9092)
    assert second.gateway_address == config.gateway_address
    ephemeral = GatewayConfig(workers=2, prometheus_endpoint=SocketAddress("127.0.0.1", 0))
    assert ephemeral.for_worker(1).prometheus_endpoint == SocketAddress("127.0.0.1", 0)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        config.for_worker(3)
    crowded = GatewayConfig(workers=2, prometheus_endpoint=SocketAddress("::", 65535))
    with pytest.raises(ConfigError, match="port 65536"):
        crowded.for_worker(1)


# --- flags and environment ------------------------------------------------------------------------


def test_no_flags_and_no_environment_give_the_defaults() -> None:
    loaded = load([])
    assert loaded.config == GatewayConfig()
    assert loaded.sources == {}
    assert not loaded.print_config


def test_the_reference_gateways_command_line_works_unchanged() -> None:
    argv = [
        "--ic-network-url", "https://icp0.io",
        "--gateway-address", "0.0.0.0:8081",
        "--polling-interval", "200",
        "--prometheus-endpoint", "0.0.0.0:9000",
        "--opentelemetry-collector-endpoint", "",
    ]  # fmt: skip
    config = load(argv).config
    assert config.ic_network_url == "https://icp0.io"
    assert config.gateway_address == SocketAddress("0.0.0.0", 8081)
    assert config.polling_interval_ms == 200
    assert config.prometheus_endpoint == SocketAddress("0.0.0.0", 9000)
    assert config.opentelemetry_collector_endpoint is None


def test_flag_beats_environment_beats_default() -> None:
    environ = {"ICGW_POLLING_INTERVAL": "250", "ICGW_WORKERS": "4"}
    loaded = load(["--polling-interval", "50"], environ)
    assert loaded.config.polling_interval_ms == 50
    assert loaded.config.workers == 4
    assert loaded.config.poll_timeout_ms == 5000
    assert loaded.sources == {"polling_interval_ms": "--polling-interval", "workers": "ICGW_WORKERS"}


def test_every_setting_reads_its_environment_variable(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate")
    key.write_text("key")
    environ = {
        "ICGW_GATEWAY_ADDRESS": "[::1]:8443",
        "ICGW_IC_NETWORK_URL": "http://127.0.0.1:8000",
        "ICGW_POLLING_INTERVAL": "20",
        "ICGW_PROMETHEUS_ENDPOINT": "127.0.0.1:9100",
        "ICGW_TLS_CERTIFICATE_PEM_PATH": str(cert),
        "ICGW_TLS_CERTIFICATE_KEY_PEM_PATH": str(key),
        "ICGW_OPENTELEMETRY_COLLECTOR_ENDPOINT": "http://collector:4318",
        "ICGW_IDENTITY_FILE": str(tmp_path / "id.pem"),
        "ICGW_DATA_DIR": str(tmp_path),
        "ICGW_MAX_CONNECTIONS": "5_000",
        "ICGW_MAX_FRAME_SIZE": "64KiB",
        "ICGW_MAX_CLIENT_MESSAGES_PER_SECOND": "12.5",
        "ICGW_OPEN_TIMEOUT": "7",
        "ICGW_SEND_BUFFER_HIGH_WATER": "1m",
        "ICGW_ALLOW_CANISTER": f"{CANISTER_A}, {CANISTER_B}",
        "ICGW_DRAIN_TIMEOUT": "2.5",
        "ICGW_IDLE_TIMEOUT": "0",
        "ICGW_POLL_TIMEOUT": "900",
        "ICGW_WORKERS": "2",
        "ICGW_EMBEDDED_REPLICA": "yes",
        "ICGW_REPLICA_CANISTERS": "3",
        "ICGW_LOG_STDOUT": "icgw=warn",
        "ICGW_LOG_FILE": "icgw=debug",
        "ICGW_LOG_TELEMETRY": "icgw=info",
    }
    loaded = load([], environ)
    assert loaded.config == GatewayConfig(
        gateway_address=SocketAddress("::1", 8443),
        ic_network_url="http://127.0.0.1:8000",
        polling_interval_ms=20,
        prometheus_endpoint=SocketAddress("127.0.0.1", 9100),
        tls_certificate_pem_path=cert,
        tls_certificate_key_pem_path=key,
        opentelemetry_collector_endpoint="http://collector:4318",
        identity_file=tmp_path / "id.pem",
        data_dir=tmp_path,
        max_connections=5000,
        max_frame_size=64 * 1024,
        max_client_messages_per_second=12.5,
        open_timeout_s=7.0,
        send_buffer_high_water=1024 * 1024,
        allowed_canisters=(principal_from_text(CANISTER_A), principal_from_text(CANISTER_B)),
        drain_timeout_s=2.5,
        idle_timeout_s=0.0,
        poll_timeout_ms=900,
        workers=2,
        embedded_replica=True,
        replica_canisters=3,
        log_stdout="icgw=warn",
        log_file="icgw=debug",
        log_telemetry="icgw=info",
    )
    # Every option was taken from its variable: none is left out of the environment names.
    assert set(loaded.sources.values()) == set(environ)
    assert loaded.config.tls_enabled


def test_help_lists_every_flag_with_its_environment_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping, which could split a flag at a hyphen
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    flags = set(re.findall(r"(--[a-z][a-z-]+)", text)) - {"--help", "--print-config", "--version"}
    flags -= {"--no-embedded-replica"}
    assert {"--gateway-address", "--allow-canister", "--embedded-replica", "--log-file"} <= flags
    for flag in flags:
        env = "ICGW_" + flag[2:].upper().replace("-", "_")
        assert f"[env {env};" in text, f"{flag} does not name {env}"


def test_allow_canister_is_repeatable_and_takes_lists() -> None:
    loaded = load(["--allow-canister", CANISTER_A, "--allow-canister", f"{CANISTER_B},"])
    assert loaded.config.allowed_canister_texts() == sorted([CANISTER_A, CANISTER_B])
    # A flag replaces the variable's list rather than adding to it.
    loaded = load(["--allow-canister", CANISTER_B], {"ICGW_ALLOW_CANISTER": CANISTER_A})
    assert loaded.config.allowed_canister_texts() == [CANISTER_B]
    assert load([], {"ICGW_ALLOW_CANISTER": ""}).config.allowed_canisters is None


def test_switch_flag_beats_a_true_environment_variable() -> None:
    assert load([], {"ICGW_EMBEDDED_REPLICA": "1"}).config.embedded_replica
    assert load(["--embedded-replica"]).config.embedded_replica
    assert not load(["--no-embedded-replica"], {"ICGW_EMBEDDED_REPLICA": "on"}).config.embedded_replica


def test_empty_prometheus_endpoint_disables_it() -> None:
    assert load(["--prometheus-endpoint", ""]).config.prometheus_endpoint is None
    assert load([], {"ICGW_PROMETHEUS_ENDPOINT": "off"}).config.prometheus_endpoint is None


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--polling-interval", "often"], {}, "--polling-interval: 'often' is not an integer"),
        ([], {"ICGW_POLLING_INTERVAL": "often"}, "ICGW_POLLING_INTERVAL: 'often' is not an integer"),
        ([], {"ICGW_MAX_FRAME_SIZE": "2 parsecs"}, "ICGW_MAX_FRAME_SIZE: '2 parsecs' is not a size"),
        (["--max-frame-size", "1k"], {}, "--max-frame-size: must be at least 4096"),
        ([], {"ICGW_WORKERS": "0"}, "ICGW_WORKERS: must be at least 1"),
        ([], {"ICGW_EMBEDDED_REPLICA": "maybe"}, "ICGW_EMBEDDED_REPLICA: 'maybe' is not a boolean"),
        (
            ["--gateway-address", "::1:80"],
            {},
            "--gateway-address: '::1:80': write an IPv6 address in brackets",
        ),
        (["--allow-canister", "not-a-principal"], {}, "--allow-canister: invalid principal text"),
        (["--ic-network-url", "icp0.io"], {}, "--ic-network-url: expected an http:// or https:// URL"),
        (["--log-stdout", "icgw=chatty"], {}, "--log-stdout: unknown level 'chatty'"),
        (
            ["--tls-certificate-pem-path", "cert.pem"],
            {},
            "--tls-certificate-key-pem-path / ICGW_TLS_CERTIFICATE_KEY_PEM_PATH: TLS needs both",
        ),
    ],
)
def test_bad_values_name_the_flag_or_variable(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(argv, environ)
    assert raised.value.reason.startswith(message)


def test_tls_files_must_be_readable(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("certificate")
    with pytest.raises(ConfigError) as raised:
        load(
            [
                "--tls-certificate-pem-path",
                str(cert),
                "--tls-certificate-key-pem-path",
                str(tmp_path / "none"),
            ]
        )
    assert (
        raised.value.reason == f"--tls-certificate-key-pem-path: '{tmp_path / 'none'}' is not a readable file"
    )


def test_unknown_flag_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        load(["--polling-intervall", "5"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --polling-intervall" in capsys.readouterr().err


# --- main ----------------------------------------------------------------------------------------------


@pytest.fixture
def fake_gateway(monkeypatch: pytest.MonkeyPatch) -> list[GatewayConfig]:
    """Stands in for icgw.gateway.app (written by the integrator): records the configs it is run with."""
    runs: list[GatewayConfig] = []

    def run(config: GatewayConfig) -> int:
        runs.append(config)
        return 3

    module = types.ModuleType("icgw.gateway.app")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "icgw.gateway.app", module)
    return runs


def test_main_runs_the_gateway_with_the_parsed_config(
    fake_gateway: list[GatewayConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICGW_WORKERS", "2")
    assert cli.main(["--polling-interval", "30"]) == 3
    [config] = fake_gateway
    assert (config.polling_interval_ms, config.workers) == (30, 2)


def test_main_reports_config_errors_without_starting_the_gateway(
    fake_gateway: list[GatewayConfig], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ICGW_POLL_TIMEOUT", "0")
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert "icgw: error: ICGW_POLL_TIMEOUT: must be at least 1" in capsys.readouterr().err
    assert fake_gateway == []


def test_python_dash_m_icgw_prints_the_config_and_its_sources(tmp_path: Path) -> None:
    environ = {"ICGW_POLLING_INTERVAL": "250", "ICGW_LOG_STDOUT": "icgw=debug", "PATH": ""}
    argv = ["--print-config", "--polling-interval", "40", "--allow-canister", CANISTER_A]
    result = subprocess.run(
        [sys.executable, "-m", "icgw", *argv],
        env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "polling_interval_ms = 40  (--polling-interval)" in lines
    assert "log_stdout = icgw=debug  (ICGW_LOG_STDOUT)" in lines
    assert f"allowed_canisters = {CANISTER_A}  (--allow-canister)" in lines
    assert "identity_file = data/key_pair  (default)" in lines
    assert "prometheus_endpoint = 0.0.0.0:9090  (default)" in lines


def test_python_dash_m_icgw_exits_2_on_a_bad_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "icgw"], env={"ICGW_GATEWAY_ADDRESS": "8080"}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "icgw: error: ICGW_GATEWAY_ADDRESS: '8080' is not host:port" in result.stderr
