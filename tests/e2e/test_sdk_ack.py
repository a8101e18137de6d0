"""The ack / keep-alive cycle of the unmodified ic-websocket-js 0.5.0 SDK, in canister time the test moves.

The replica runs with `--allow-admin --ack-interval-ms 60001` (the CDK's smallest interval) and the SDK with
the same `ackMessageIntervalMs`. The Node side (scenario `ack` of tests/js/gateway_sdk.test.mjs) prints
`@@step <name>` when it waits; this driver then moves the replica's time through its admin endpoint and
answers `ok` on the Node process's stdin. Time moves 60.001 s (the ack tick), then up to the keep-alive
check, due 60 s after the tick: about two minutes ahead of the wall clock, well inside the SDK's 5-minute
certificate window.

The replica's clock also runs with the wall clock. The CDK drops a client whose last keep-alive is more
than 60 s old at the check, so the second jump lands on the check's due time exactly: jumping a full 60 s
would add the real time spent between the two steps and make even a prompt keep-alive too old.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import orjson
import pytest

from .processes import JS_DIR
from .stack import start_gateway, start_replica

pytestmark = pytest.mark.timeout(120)

ACK_INTERVAL_MS = 60_001
KEEP_ALIVE_TIMEOUT_NS = 60_000 * 1_000_000


class CanisterTime:
    """The replica's admin endpoint: read canister time, move it forward (timers due on the way fire)."""

    def __init__(self, ic_url: str) -> None:
        self.url = f"{ic_url}/_admin"
        self.ack_tick_ns = 0

    async def _request(self, method: str, action: str, body: dict[str, int] | None = None) -> int:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.request(method, f"{self.url}/{action}", json=body) as response,
        ):
            assert response.status == 200, await response.text()
            now_ns: int = (await response.json())["now_ns"]
            return now_ns

    async def step(self, name: str) -> None:
        if name == "opened":  # past the ack interval: the ack tick fires now, and sets the check
            self.ack_tick_ns = await self._request("POST", "advance_time", {"ms": ACK_INTERVAL_MS})
        elif name == "kept-alive":  # onto the keep-alive check's due time
            now_ns = await self._request("GET", "time")
            due_ns = self.ack_tick_ns + KEEP_ALIVE_TIMEOUT_NS
            assert now_ns < due_ns, "the scenario took a minute of real time"
            await self._request("POST", "advance_time", {"ns": due_ns - now_ns})
        else:
            raise AssertionError(f"unknown step {name!r}")


async def test_sdk_answers_acks_and_survives_the_keep_alive_check(tmp_path: Path) -> None:
    async with (
        start_replica("--allow-admin", "--ack-interval-ms", str(ACK_INTERVAL_MS)) as ic,
        start_gateway(ic.url, tmp_path) as gw,
    ):
        node = await asyncio.create_subprocess_exec(
            "node",
            "gateway_sdk.test.mjs",
            cwd=JS_DIR,
            env={
                **os.environ,
                "SCENARIO": "ack",
                "GATEWAY_URL": gw.url,
                "IC_URL": ic.url,
                "CANISTER_IDS": ic.canisters[0],
                "ACK_INTERVAL_MS": str(ACK_INTERVAL_MS),
                "TIMEOUT_MS": "30000",
            },
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert node.stdin is not None
        assert node.stdout is not None
        output: list[str] = []
        steps: list[str] = []
        results: dict[str, int] = {}
        canister_time = CanisterTime(ic.url)
        try:
            async with asyncio.timeout(90):
                async for raw in node.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    output.append(line)
                    if line.startswith("@@step "):
                        step = line.removeprefix("@@step ")
                        steps.append(step)
                        await canister_time.step(step)
                        node.stdin.write(b"ok\n")
                        await node.stdin.drain()
                    elif line.startswith("@@result "):
                        results.update(orjson.loads(line.removeprefix("@@result ")))
                code = await node.wait()
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()
        report = "\n".join(output)
        assert code == 0, report
        assert steps == ["opened", "kept-alive"], report
        assert "# pass 1" in report, report
        assert "# fail 0" in report, report

        metrics = await gw.metrics()
        # Two ws_open, then the three messages and the keep-alives of the client that answered acks.
        assert results["keepAlives"] >= 1
        relayed = 2 + 3 + results["keepAlives"]
        assert metrics.value("icgw_messages_relayed_total", direction="to_canister") == relayed
        assert metrics.value("icgw_connections_open") == 0
