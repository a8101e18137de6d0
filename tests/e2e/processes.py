"""The replica emulator and the gateway as real processes on loopback, started and stopped by tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ReplicaProcess:
    process: subprocess.Popen[bytes]
    url: str
    root_key: bytes
    canisters: list[str]


@contextmanager
def replica(*args: str) -> Iterator[ReplicaProcess]:
    process = subprocess.Popen(
        [sys.executable, "-m", "icgw.replica", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        ready = orjson.loads(process.stdout.readline())
        assert ready["event"] == "ready", ready
        yield ReplicaProcess(process, ready["url"], bytes.fromhex(ready["root_key"]), ready["canisters"])
    finally:
        stop(process)


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    output: list[str]


@contextmanager
def gateway(ic_url: str, workdir: Path, *args: str, port: int | None = None) -> Iterator[GatewayProcess]:
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "icgw",
        "--gateway-address",
        f"127.0.0.1:{port}",
        "--ic-network-url",
        ic_url,
        "--prometheus-endpoint",
        "127.0.0.1:0",
        "--identity-file",
        str(workdir / "key_pair"),
        "--data-dir",
        str(workdir),
        *args,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir)
    output: list[str] = []
    started = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            output.append(line)
            if "Start accepting incoming connections" in line:
                started.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not started.wait(30):
            raise AssertionError("the gateway did not start:\n" + "\n".join(output))
        yield GatewayProcess(process, f"ws://127.0.0.1:{port}", port, output)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("the process did not stop on SIGTERM") from None
    return process.returncode


def run_node(test_file: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", "--test", "--test-reporter=spec", test_file],
        cwd=JS_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)
