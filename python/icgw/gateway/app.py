"""`python -m icgw`: one gateway process (or N workers), from configuration to graceful shutdown.

`GatewayRuntime` is the in-process form the tests use: `await start()`, then `port`, `principal`, and
`await stop()`. `run(config)` adds logging, signals (SIGTERM/SIGINT drain, SIGHUP reloads TLS) and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import ssl
import time
from typing import Any

import uvloop
from picows import WSCloseCode, WSUpgradeRequest, ws_create_server

from icgw.config import GatewayConfig
from icgw.core import principal_to_text
from icgw.gateway.backend import AgentBackend
from icgw.gateway.hub import Hub
from icgw.gateway.session import ClientSession
from icgw.ic.agent import IcAgent
from icgw.ic.errors import IcError
from icgw.ic.identity import load_or_create_identity
from icgw.observability.health import HealthServer, start_health_server
from icgw.observability.logging import flush_logging, setup_logging
from icgw.observability.metrics import GatewayMetrics, PrometheusObserver
from icgw.observability.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger("icgw.gateway")

CERTIFICATE_MAX_AGE_NS = 5 * 60 * 10**9
ROOT_KEY_RETRY_MAX_S = 5.0


class GatewayRuntime:
    """Everything one gateway process runs, started and stopped in order."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.identity = load_or_create_identity(config.identity_path)
        self.principal = self.identity.principal
        self.principal_text = principal_to_text(self.principal)
        self.metrics = GatewayMetrics(self.principal_text)
        self.hub: Hub | None = None
        self.agent: IcAgent | None = None
        self.poll_agent: IcAgent | None = None  # the pollers' own connection pool (see AgentBackend)
        self.ssl_context: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._health: HealthServer | None = None
        self._replica: Any = None
        self.ic_url = config.ic_network_url

    @property
    def port(self) -> int:
        assert self._server is not None, "the gateway is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def metrics_url(self) -> str | None:
        return self._health.url if self._health is not None else None

    def is_ready(self) -> bool:
        return self._server is not None and self.hub is not None and self.hub.accepting

    async def start(self) -> None:
        config = self.config
        log.info("Gateway Agent principal: %s", self.principal_text)
        if config.prometheus_endpoint is not None:
            endpoint = config.prometheus_endpoint
            self._health = await start_health_server(
                endpoint.host, endpoint.port, self.metrics.registry, self.is_ready
            )
        setup_tracing(config.opentelemetry_collector_endpoint, self.principal_text, config.log_telemetry)
        if config.embedded_replica:
            await self._start_embedded_replica()
        self.agent = IcAgent(self.ic_url, certificate_max_age_ns=CERTIFICATE_MAX_AGE_NS)
        root_key = await self._root_key(self.agent)
        self.poll_agent = IcAgent(
            self.ic_url, root_key=root_key, certificate_max_age_ns=CERTIFICATE_MAX_AGE_NS, max_connections=100
        )
        backend = AgentBackend(
            self.agent,
            self.identity,
            root_key,
            certificate_max_age_ns=CERTIFICATE_MAX_AGE_NS,
            query_agent=self.poll_agent,
        )
        self.hub = Hub(config, self.principal, backend, PrometheusObserver(self.metrics))
        if config.tls_enabled:
            self.ssl_context = self._load_tls()
        hub = self.hub

        def new_session(request: WSUpgradeRequest) -> ClientSession:
            return ClientSession(hub, "")

        address = config.gateway_address
        self._server = await ws_create_server(
            new_session,
            address.host,
            address.port,
            ssl=self.ssl_context,
            max_frame_size=config.max_frame_size,
            enable_auto_ping=config.idle_timeout_s > 0,
            auto_ping_idle_timeout=config.idle_timeout_s or 20,
            auto_ping_reply_timeout=config.idle_timeout_s or 20,
            websocket_handshake_timeout=min(10.0, config.open_timeout_s),
            reuse_port=config.workers > 1 or None,
            logger_name="icgw.gateway.websocket",
            # Per-connection memory (BENCHMARKS.md, idle scenario): picows' read buffer starts at 16 KiB and
            # is touched whole when a frame is consumed; client frames are a few hundred bytes, and the
            # buffer grows by itself for larger ones. aiofastnet's transport adds about 5 KiB per connection
            # over uvloop's for no measured gain on plain TCP; it is kept for TLS, where it is faster.
            read_buffer_init_size=2048,
            use_aiofastnet=self.ssl_context is not None,
        )
        log.info("Start accepting incoming connections on %s:%d", address.host, self.port)

    async def _root_key(self, agent: IcAgent) -> bytes:
        """The key certificates must chain to; a replica that is not up yet is waited for, not fatal."""
        delay = 0.1
        while True:
            try:
                return await agent.root_key()
            except IcError as error:
                log.warning("cannot fetch the root key from %s yet: %s", self.ic_url, error)
                await asyncio.sleep(delay)
                delay = min(ROOT_KEY_RETRY_MAX_S, delay * 2)

    async def _start_embedded_replica(self) -> None:
        from icgw.replica import Replica, ReplicaConfig  # only this mode needs the emulator

        replica_config = ReplicaConfig.for_url(
            self.config.ic_network_url, canisters=self.config.replica_canisters
        )
        self._replica = Replica(replica_config)
        await self._replica.start()
        self.ic_url = self._replica.url
        log.info(
            "embedded IC replica at %s with canisters %s",
            self.ic_url,
            ", ".join(principal_to_text(c) for c in self._replica.canister_ids),
        )

    def _load_tls(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_certificate(context)
        return context

    def _load_certificate(self, context: ssl.SSLContext) -> None:
        cert, key = self.config.tls_certificate_pem_path, self.config.tls_certificate_key_pem_path
        if cert is None or key is None:
            raise ValueError("TLS needs both a certificate and a key file")
        context.load_cert_chain(cert, key)

    def reload_tls(self) -> None:
        """Load the certificate files again; new handshakes use them, open connections stay as they are."""
        if self.ssl_context is None:
            log.info("SIGHUP: TLS is not enabled, nothing to reload")
            return
        try:
            # The files are checked in a context of their own first. Loading into the live context swaps
            # the certificate before it checks the key, so files caught half rewritten (a new certificate,
            # the old key) would leave it presenting a certificate it has no key for, and every new
            # handshake would fail. The listening socket keeps the context object it was created with,
            # so the live context itself must be reloaded once the files are known to be good.
            self._load_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            self._load_certificate(self.ssl_context)
        except (OSError, ssl.SSLError) as error:
            log.error("SIGHUP: could not reload the TLS certificate, keeping the old one: %s", error)
        else:
            log.info("SIGHUP: TLS certificate reloaded")

    async def stop(self) -> None:
        """Stop accepting, close clients with 1001, finish the ws_close calls, within the drain timeout."""
        deadline = time.monotonic() + self.config.drain_timeout_s
        if self._server is not None:
            self._server.close()
        hub = self.hub
        if hub is not None:
            hub.stop_accepting()
            hub.close_sessions(hub.sessions, WSCloseCode.GOING_AWAY, "the gateway is shutting down")
            await hub.wait_sessions_closed(max(0.0, deadline - time.monotonic()))
            await hub.drain(max(0.0, deadline - time.monotonic()))
        for agent in (self.agent, self.poll_agent):
            if agent is not None:
                await agent.close()
        if self._replica is not None:
            await self._replica.stop()
        if self._health is not None:
            await self._health.close()
        shutdown_tracing()
        log.info("gateway stopped")


async def serve(config: GatewayConfig) -> None:
    """Run one gateway until SIGTERM or SIGINT, then drain."""
    runtime = GatewayRuntime(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_tls)
    try:
        await runtime.start()
        await stop.wait()
        log.info("shutting down: draining connections (at most %.1fs)", config.drain_timeout_s)
    finally:
        await runtime.stop()


def run_worker(config: GatewayConfig) -> int:
    setup_logging(config.log_stdout, config.log_file, config.traces_dir, int(time.time() * 1000))
    try:
        uvloop.run(serve(config))
    finally:
        flush_logging()
    return 0


def run(config: GatewayConfig) -> int:
    """The entry point of `python -m icgw`: one process, or `workers` processes on one port."""
    if config.workers == 1:
        return run_worker(config)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=run_worker, args=(config.for_worker(i),)) for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = []
    for worker in workers:
        worker.join()
        codes.append(worker.exitcode or 0)
    return max(codes)
