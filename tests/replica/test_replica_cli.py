"""`python -m icgw.replica` as a process: the ready line, options, environment, logs and signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from icgw import core
from icgw.replica import Replica
from icgw.replica.canister import Canister, canister_id_for_index
from icgw.replica.cdk import WsInitParams
from icgw.replica.config import ConfigError, ReplicaConfig, read_secret_key_file
from icgw.replica.test_canister import SilentTestCanister, TestCanister

from .conftest import KEYS, VECTOR_ROOT_SECRET, lookup, make_config

STARTUP_TIMEOUT_S = 30
EXIT_TIMEOUT_S = 15


@dataclass
class ReplicaProcess:
    process: asyncio.subprocess.Process
    ready: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, bytes, bytes]:
        """Send `sig` and wait for the exit: (exit code, rest of stdout, all of stderr)."""
        self.process.send_signal(sig)
        stdout, stderr = await asyncio.wait_for(self.process.communicate(), EXIT_TIMEOUT_S)
        assert self.process.returncode is not None
        return self.process.returncode, stdout, stderr


async def _spawn(*args: str, env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "icgw.replica",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


@asynccontextmanager
async def running_replica(*args: str, env: Mapping[str, str] | None = None) -> AsyncIterator[ReplicaProcess]:
    process = await _spawn("--listen", "127.0.0.1:0", *args, env=env)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
        if not line:
            _, stderr = await asyncio.wait_for(process.communicate(), EXIT_TIMEOUT_S)
            pytest.fail(f"the replica exited before it was ready: {stderr.decode()}")
        yield ReplicaProcess(process, orjson.loads(line))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


TIMEOUT = aiohttp.ClientTimeout(total=10)


async def _get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url) as response:
        return response.status, await response.read()


async def _post(url: str, body: bytes) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/cbor"}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.read()


async def test_ready_line_status_and_clean_sigterm(tmp_path: Path) -> None:
    key_file = tmp_path / "root.key"
    key_file.write_text(VECTOR_ROOT_SECRET.hex() + "\n")
    async with running_replica("--canisters", "2", "--root-key-file", str(key_file)) as replica:
        ready = replica.ready
        assert set(ready) == {"event", "url", "root_key", "canisters"}
        assert ready["event"] == "ready"
        assert ready["url"].startswith("http://127.0.0.1:")
        assert int(ready["url"].rsplit(":", 1)[1]) > 0
        assert ready["root_key"] == KEYS["emulator_root_key_der_hex"]
        assert ready["canisters"] == [core.principal_to_text(canister_id_for_index(i)) for i in range(2)]

        status, body = await _get(replica.url + "/api/v2/status")
        assert status == 200
        decoded = core.cbor_decode(body)
        assert isinstance(decoded, dict)
        assert decoded["root_key"].hex() == ready["root_key"]
        status, candid = await _get(f"{replica.url}/_/candid/{ready['canisters'][0]}")
        assert status == 200
        assert b"ws_get_messages" in candid

        code, stdout, stderr = await replica.stop(signal.SIGTERM)
    assert code == 0, stderr.decode()
    assert stdout == b"", "the ready line is the only thing on stdout"


async def test_sigint_also_stops_cleanly() -> None:
    async with running_replica("--canisters", "0") as replica:
        assert replica.ready["canisters"] == []
        code, _, stderr = await replica.stop(signal.SIGINT)
    assert code == 0, stderr.decode()


async def test_the_raw_root_key_file_and_the_node_key_file_are_used(tmp_path: Path) -> None:
    key_file = tmp_path / "root.bin"
    key_file.write_bytes(VECTOR_ROOT_SECRET)
    node = core.Ed25519Identity.generate()
    node_file = tmp_path / "node.pem"
    node.save(node_file)
    async with running_replica(
        "--canisters", "1", "--root-key-file", str(key_file), "--node-key-file", str(node_file)
    ) as replica:
        assert replica.ready["root_key"] == KEYS["emulator_root_key_der_hex"]
        canister = replica.ready["canisters"][0]
        envelope = core.cbor_encode(
            {
                "content": {
                    "request_type": "read_state",
                    "sender": b"\x04",
                    "ingress_expiry": 0,
                    "paths": [[b"subnet"]],
                }
            }
        )
        status, body = await _post(f"{replica.url}/api/v2/canister/{canister}/read_state", envelope)
        assert status == 200, body
        certificate = core.cbor_decode(body)["certificate"]  # type: ignore[index]
        root_key = bytes.fromhex(replica.ready["root_key"])
        core.verify_certificate(certificate, root_key, canister_id=core.principal_from_text(canister))
        subnet_id = core.self_authenticating_principal(root_key)
        assert lookup(certificate, b"subnet", subnet_id, b"node", node.principal, b"public_key") == (
            "found",
            node.der_public_key,
        )
        code, _, _ = await replica.stop()
    assert code == 0


async def test_options_come_from_the_environment_too() -> None:
    env = {"ICGW_REPLICA_CANISTERS": "3", "ICGW_REPLICA_ALLOW_ADMIN": "1"}
    async with running_replica(env=env) as replica:
        assert len(replica.ready["canisters"]) == 3
        status, body = await _get(replica.url + "/_admin/time")
        assert status == 200
        assert orjson.loads(body)["now_ns"] > 0
        code, _, _ = await replica.stop()
    assert code == 0


async def test_admin_is_off_unless_allowed() -> None:
    async with running_replica("--canisters", "0") as replica:
        status, _ = await _get(replica.url + "/_admin/time")
        assert status == 404
        await replica.stop()


async def test_debug_logs_one_line_per_request_on_stderr() -> None:
    async with running_replica("--canisters", "0", "--log-level", "debug") as replica:
        for _ in range(3):
            assert (await _get(replica.url + "/api/v2/status"))[0] == 200
        code, stdout, stderr = await replica.stop()
    assert code == 0
    assert stdout == b""
    assert stderr.decode().count("GET /api/v2/status") == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ack-interval-ms", "60000"], "--ack-interval-ms must exceed 60000"),
        (["--fault-5xx", "1.5"], "--fault-5xx must be a fraction"),
        (["--flavor", "cobol"], "invalid choice"),
        (["--listen", "nowhere"], "expected HOST:PORT"),
        (["--app", "no_such_module:App"], "cannot import the app module"),
    ],
)
async def test_bad_options_fail_at_start(args: list[str], message: str, tmp_path: Path) -> None:
    process = await _spawn("--listen", "127.0.0.1:0", *args)
    stdout, stderr = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT_S)
    assert process.returncode == 2
    assert stdout == b""
    assert message in stderr.decode()


async def test_a_busy_port_fails_at_start() -> None:
    async with running_replica("--canisters", "0") as first:
        port = first.url.rsplit(":", 1)[1]
        process = await _spawn("--listen", f"127.0.0.1:{port}", "--canisters", "0")
        stdout, stderr = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT_S)
        assert process.returncode == 2
        assert stdout == b""
        assert "cannot start the replica" in stderr.decode()
        await first.stop()


def test_a_config_for_a_url() -> None:
    config = ReplicaConfig.for_url("http://127.0.0.1:4999", canisters=3)
    assert (config.host, config.port, config.canisters) == ("127.0.0.1", 4999, 3)
    assert ReplicaConfig.for_url("http://[::1]:0").host == "::1"
    for bad in ("https://127.0.0.1:4943", "127.0.0.1:4943", "http://127.0.0.1:99999"):
        with pytest.raises(ConfigError):
            ReplicaConfig.for_url(bad)


def test_secret_key_files_hold_raw_or_hex_keys(tmp_path: Path) -> None:
    path = tmp_path / "key"
    for content in (VECTOR_ROOT_SECRET, b"0x" + VECTOR_ROOT_SECRET.hex().encode() + b"\n"):
        path.write_bytes(content)
        assert read_secret_key_file(path, "root key") == VECTOR_ROOT_SECRET
    for content, message in ((b"abcd", "has 2 bytes"), (b"not hex at all", "expected 32 raw bytes")):
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=message):
            read_secret_key_file(path, "root key")
    with pytest.raises(ConfigError, match="not a valid BLS scalar"):
        ReplicaConfig(root_key_secret=b"\xff" * 32)


@pytest.mark.parametrize("app", [None, "icgw.replica.test_canister:SilentTestCanister"])
async def test_canister_options_reach_the_cdk(app: str | None) -> None:
    config = make_config(
        canisters=2, flavor="motoko", max_returned_messages=3, ack_interval_ms=70_000, app=app
    )
    replica = Replica(config)
    await replica.start()
    try:
        for canister_id in replica.canister_ids:
            canister = replica.canisters[canister_id]
            assert isinstance(canister, Canister)
            assert canister.cdk.flavor == "motoko"
            assert canister.cdk.params == WsInitParams(3, 70_000)
            assert type(canister.app) is (TestCanister if app is None else SilentTestCanister)
    finally:
        await replica.stop()
