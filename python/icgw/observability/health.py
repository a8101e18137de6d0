"""The operator's HTTP endpoint, on `--prometheus-endpoint`: `/metrics`, `/healthz` and `/readyz`.

It runs on the gateway's own event loop (aiohttp), so no thread touches the gateway's state. A scrape
renders a registry of a few dozen series (no per-client labels), which takes well under a millisecond.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool]


class HealthServer:
    """A running health and metrics endpoint; `close()` stops it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port  # the bound port (differs from the one asked for when that was 0)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_health_server(
    host: str, port: int, registry: CollectorRegistry, is_ready: ReadinessCheck
) -> HealthServer:
    """Listen on host:port and serve the endpoints until `close()`.

    `/healthz` answers 200 while the process serves HTTP at all (liveness). `/readyz` answers 200 only when
    `is_ready()` returns True, i.e. the gateway accepts connections and reaches the IC, else 503, so a load
    balancer stops sending clients to an instance that could not serve them.
    """

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        try:
            ready = is_ready()
        except Exception:
            log.exception("the readiness check failed")
            ready = False
        if ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # No access log: a scrape every few seconds would drown the gateway's own lines.
    # A scrape in progress at shutdown gets one second, not aiohttp's default minute.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    log.info("metrics and health endpoint listening on %s:%d", bound_host, bound_port)
    return HealthServer(runner, host, bound_port)
