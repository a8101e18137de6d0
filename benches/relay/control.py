"""The control channel between the harness and a load generator process: JSON lines both ways.

The harness starts `python -m benches.relay.loadgen '<job json>'`, reads events from its stdout
(`{"event": "opened", ...}`) and writes commands to its stdin (`{"cmd": "go"}`). A generator whose stdin
closes (the harness died or is done) exits, so no generator outlives its run.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from benches.relay.procs import Managed, ProcessFailed, bench_env, log_tail, start_process

Message = dict[str, Any]


class GeneratorProcess:
    """The harness's handle on one generator process."""

    def __init__(self, managed: Managed) -> None:
        self.managed = managed

    @classmethod
    async def start(cls, index: int, job: Message, workdir: Path) -> GeneratorProcess:
        command = [sys.executable, "-m", "benches.relay.loadgen", orjson.dumps(job).decode()]
        managed = await start_process(
            f"generator {index}",
            command,
            workdir / f"generator-{index}.log",
            env=bench_env(),
            stdin=True,
            stdout=True,
        )
        return cls(managed)

    def send(self, command: str, **fields: Any) -> None:
        stdin = self.managed.process.stdin
        assert stdin is not None
        if not stdin.is_closing():
            stdin.write(orjson.dumps({"cmd": command, **fields}) + b"\n")

    async def expect(self, event: str, timeout_s: float) -> Message:
        """The next event, which must be `event`; ProcessFailed (with the log) otherwise."""
        stdout = self.managed.process.stdout
        assert stdout is not None
        try:
            line = await asyncio.wait_for(stdout.readline(), timeout_s)
        except TimeoutError:
            name, log = self.managed.name, log_tail(self.managed.log_path)
            raise ProcessFailed(f"{name}: no {event!r} within {timeout_s:g} s:\n{log}") from None
        if not line:
            await self.managed.process.wait()
            raise ProcessFailed(
                f"{self.managed.name} exited (code {self.managed.process.returncode}) before {event!r}:\n"
                f"{log_tail(self.managed.log_path)}"
            )
        message: Message = orjson.loads(line)
        if message.get("event") != event:
            raise ProcessFailed(f"{self.managed.name}: expected {event!r}, got {message}")
        return message

    async def stop(self) -> None:
        stdin = self.managed.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        await self.managed.stop(timeout_s=10.0)


async def all_expect(generators: list[GeneratorProcess], event: str, timeout_s: float) -> list[Message]:
    return list(await asyncio.gather(*(g.expect(event, timeout_s) for g in generators)))


def broadcast(generators: list[GeneratorProcess], command: str, **fields: Any) -> None:
    for generator in generators:
        generator.send(command, **fields)


# --- the generator's side ----------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


class Commands:
    """Commands from the harness on stdin; end of input reads as `{"cmd": "close"}`."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls) -> Commands:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return cls(reader)

    async def next(self) -> Message:
        line = await self._reader.readline()
        if not line:
            return {"cmd": "close"}
        message: Message = orjson.loads(line)
        return message

    async def expect(self, command: str) -> Message:
        """Wait for `command`; a close (or end of input) instead raises SystemExit."""
        message = await self.next()
        if message["cmd"] != command:
            raise SystemExit(f"expected command {command!r}, got {message['cmd']!r}")
        return message
