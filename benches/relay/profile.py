"""Sampling profiles of the processes under test, taken during a scenario's measured window.

`--profile DIR` runs `py-spy record` (pip install py-spy) on the gateway, the replica and the first load
generator for exactly the
window whose CPU time is reported, writes the collapsed stacks to DIR (flamegraph.pl and speedscope read
them) and adds the hottest functions to the scenario's results, so a missed goal comes with what limits
it. py-spy samples without stopping the process (`--nonblocking`), so the figures of a profiled run stay
close to an unprofiled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

SAMPLE_RATE_HZ = 250
TOP = 20


class ProfilerUnavailable(RuntimeError):
    pass


def require_py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise ProfilerUnavailable("--profile needs py-spy on PATH (pip install py-spy)")
    return found


class Recording:
    """One `py-spy record` of one process (and its children)."""

    def __init__(self, process: asyncio.subprocess.Process, output: Path) -> None:
        self.process = process
        self.output = output

    @classmethod
    async def start(cls, pid: int, output: Path) -> Recording:
        command = [
            require_py_spy(),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(SAMPLE_RATE_HZ),
            "--format",
            "raw",
            "--nonblocking",
            "--subprocesses",
            "--output",
            str(output),
        ]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return cls(process, output)

    async def stop(self) -> dict[str, Any] | None:
        """Stop sampling (py-spy writes its file on SIGINT) and summarize what it recorded."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        return summarize(self.output) if self.output.exists() else None


def summarize(path: Path, top: int = TOP) -> dict[str, Any]:
    """Samples, and the functions with the most samples on top of the stack (self) and anywhere in it
    (inclusive), as percentages of all samples, from a py-spy raw (collapsed stacks) file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def ranked(counter: Counter[str]) -> list[list[Any]]:
        return [[round(count / total * 100, 1), frame] for frame, count in counter.most_common(top)]

    return {"samples": total, "file": str(path), "self": ranked(own), "inclusive": ranked(inclusive)}
