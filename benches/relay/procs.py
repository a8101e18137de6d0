"""The processes of a relay benchmark: the replica emulator, the gateway under test, load generators and the
bare relay. Each runs on loopback, writes its output to a log file in the run's folder, and is stopped
(SIGTERM, then SIGKILL after a bound) by the harness; a generator also exits when its stdin closes.

CPU time and RSS are read from /proc: CPU as utime + stime of the process and all its descendants (a
gateway command may be a wrapper, or spawn workers), which is process time, not wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

STOP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 60.0


class ProcessFailed(RuntimeError):
    """A process of the benchmark did not start, or died; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bench_env() -> dict[str, str]:
    """The environment of the harness's own Python processes: the repository importable (benches.relay)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --- /proc readings ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(child) for child in f.read().split())
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def _cpu_seconds_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # Fields after the command name start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_kib_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its descendants, in seconds (10 ms resolution)."""
    return sum(_cpu_seconds_of(p) for p in process_tree(pid))


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` and its descendants, in KiB."""
    return sum(_rss_kib_of(p) for p in process_tree(pid))


# --- one managed process -----------------------------------------------------------------------------


@dataclass
class Managed:
    """A started process, its log, and how to stop it."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise ProcessFailed(
                f"{self.name} exited with code {self.process.returncode}:\n{log_tail(self.log_path)}"
            )

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
        process = self.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        return process.returncode


async def start_process(
    name: str,
    command: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bool = False,
    stdout: bool = False,
) -> Managed:
    log = open(log_path, "ab")  # noqa: SIM115, ASYNC230 - a local file; the child keeps the descriptor
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout else log,
            stderr=log,
            limit=64 * 1024 * 1024,
        )
    finally:
        log.close()
    return Managed(name, process, log_path)


# --- the replica emulator ----------------------------------------------------------------------------

BENCH_APP = "benches.relay.canister:RelayBenchCanister"


@dataclass
class ReplicaInfo:
    managed: Managed
    url: str
    root_key: bytes
    canister_id: str


async def start_replica(workdir: Path, extra_args: Sequence[str]) -> ReplicaInfo:
    command = [
        sys.executable,
        "-m",
        "icgw.replica",
        "--listen",
        "127.0.0.1:0",
        "--app",
        BENCH_APP,
        "--log-level",
        "warning",
        *extra_args,
    ]
    managed = await start_process(
        "replica", command, workdir / "replica.log", env=bench_env(), stdout=True, cwd=REPO_ROOT
    )
    stdout = managed.process.stdout
    assert stdout is not None
    try:
        line = await asyncio.wait_for(stdout.readline(), READY_TIMEOUT_S)
        ready: dict[str, Any] = orjson.loads(line) if line else {}
    except (TimeoutError, orjson.JSONDecodeError):
        ready = {}
    if ready.get("event") != "ready":
        await managed.stop()
        raise ProcessFailed(f"the replica did not start:\n{log_tail(managed.log_path)}")
    # Keep draining its stdout so it can never block on a full pipe.
    asyncio.get_running_loop().create_task(_drain(stdout))
    return ReplicaInfo(managed, ready["url"], bytes.fromhex(ready["root_key"]), ready["canisters"][0])


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


# --- the gateway under test --------------------------------------------------------------------------


def gateway_base_command(gateway_cmd: str) -> list[str]:
    """The user's gateway command as words; a leading `python` means this interpreter, so
    `python -m icgw` runs the icgw of the harness's environment whatever is first on PATH."""
    words = shlex.split(gateway_cmd)
    if not words:
        raise ValueError("the gateway command is empty")
    if words[0] == "python":
        words[0] = sys.executable
    return words


def gateway_command(
    gateway_cmd: str, *, port: int, ic_url: str, polling_ms: int, metrics_port: int
) -> list[str]:
    """The gateway's command line: the user's command plus the reference gateway's four flags."""
    return [
        *gateway_base_command(gateway_cmd),
        "--gateway-address",
        f"127.0.0.1:{port}",
        "--ic-network-url",
        ic_url,
        "--polling-interval",
        str(polling_ms),
        "--prometheus-endpoint",
        f"127.0.0.1:{metrics_port}",
    ]


@dataclass
class GatewayInfo:
    managed: Managed
    url: str
    port: int
    command: list[str]
    metrics_url: str  # the Prometheus endpoint the harness gave it (`--prometheus-endpoint`)


async def start_gateway(gateway_cmd: str, workdir: Path, *, ic_url: str, polling_ms: int) -> GatewayInfo:
    """Start the gateway in a fresh folder of its own (it may write ./data there) and wait for its port."""
    port, metrics_port = free_port(), free_port()
    command = gateway_command(
        gateway_cmd, port=port, ic_url=ic_url, polling_ms=polling_ms, metrics_port=metrics_port
    )
    home = workdir / "gateway"
    home.mkdir(exist_ok=True)
    managed = await start_process("gateway", command, workdir / "gateway.log", cwd=home)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            managed.check_alive()
        except ProcessFailed:
            raise
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                await managed.stop()
                raise ProcessFailed(
                    f"the gateway did not listen on port {port} within {READY_TIMEOUT_S:g} s:\n"
                    f"{log_tail(managed.log_path)}"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return GatewayInfo(
            managed, f"ws://127.0.0.1:{port}", port, command, f"http://127.0.0.1:{metrics_port}/metrics"
        )
