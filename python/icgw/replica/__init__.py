"""The embedded IC replica emulator: `python -m icgw.replica`, or `Replica(config)` in-process.

`Replica` is one subnet with one node, root-signed like a local dfx/PocketIC instance: the subnet id is
the self-authenticating id of the DER BLS root key, the node id that of the node's Ed25519 key. It
hosts canisters behind the IC HTTP interface (`endpoints`), executes calls and certifies its state
in *rounds*:

- a round runs at most every `round_ms`, and only when there is work: calls due for execution, or
  requests waiting for a certificate while the state has changed since the last certification (or
  that certification is more than `CERTIFICATE_REFRESH_NS` old);
- in a round, due calls execute in arrival order, then the state is certified once (one BLS
  signature covers every change), then everything that waited for certified state runs in the same
  loop step: read_state and sync-call certificates are witnesses of the tree just signed, and
  queries run on exactly that state, so a data certificate matches what the query returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from icgw import core
from icgw.replica.admin import AdminEndpoints, AdvanceableClock
from icgw.replica.clock import CanisterClock, RealClock
from icgw.replica.config import ReplicaConfig, random_bls_secret_key
from icgw.replica.endpoints import IcEndpoints
from icgw.replica.faults import FaultInjector
from icgw.replica.http_server import HttpServer
from icgw.replica.interfaces import (
    CANISTER_ERROR,
    DESTINATION_INVALID,
    CanisterHost,
    HostedCanister,
    Outcome,
    Reject,
)
from icgw.replica.state import CertifiedState, IngressHistory, IngressRecord, SubnetInfo

__all__ = ["CanisterFactory", "Replica", "ReplicaConfig"]

log = logging.getLogger("icgw.replica")

T = TypeVar("T")

# Creates the index-th canister of a replica, hosted by `host`.
CanisterFactory = Callable[[int, CanisterHost], HostedCanister]

# A certificate older than this is renewed before it is handed out, even if nothing changed, so that
# agents (which accept certificates up to a few minutes old) always get a fresh /time.
CERTIFICATE_REFRESH_NS = 1_000_000_000


class Replica:
    """One emulated subnet: keys, canisters, certified state, rounds and the HTTP server.

    It is also the `CanisterHost` of its canisters.
    """

    def __init__(
        self,
        config: ReplicaConfig | None = None,
        *,
        canister_factory: CanisterFactory | None = None,
        clock: AdvanceableClock | None = None,
    ) -> None:
        self.config = config if config is not None else ReplicaConfig()
        cfg = self.config
        self._clock: AdvanceableClock = clock if clock is not None else RealClock()
        self._canister_factory = canister_factory or builtin_canister_factory(cfg)

        self._root_secret = cfg.root_key_secret or random_bls_secret_key()
        self.root_key_der = core.bls_der_public_key(core.bls_public_key(self._root_secret))
        self.node_identity = cfg.node_identity or core.Ed25519Identity.generate()
        self.subnet = SubnetInfo(
            subnet_id=core.self_authenticating_principal(self.root_key_der),
            public_key_der=self.root_key_der,
            node_id=self.node_identity.principal,
            node_public_key_der=self.node_identity.der_public_key,
            canister_ranges=(cfg.canister_range,),
        )
        self._state = CertifiedState(root_secret_key=self._root_secret, subnet=self.subnet)
        self._history = IngressHistory(self._state)
        self._canisters: dict[bytes, HostedCanister] = {}
        self.faults = FaultInjector(cfg.faults)
        admin = AdminEndpoints(self._clock, self._time_changed) if cfg.allow_admin else None
        self._endpoints = IcEndpoints(
            self,
            cfg,
            node_identity=self.node_identity,
            root_key_der=self.root_key_der,
            faults=self.faults,
            admin=admin,
        )
        self._server = HttpServer(self._endpoints.handle, max_body_bytes=cfg.max_body_bytes)

        # Round machinery.
        self._round_s = cfg.round_ms / 1000
        self._call_delay_s = cfg.call_delay_ms / 1000
        self._pending_calls: deque[tuple[float, IngressRecord]] = deque()
        self._clean_tasks: list[Callable[[], None]] = []
        self._status_waiters: dict[bytes, list[asyncio.Future[bytes | None]]] = {}
        self._certified_data_changes: set[bytes] = set()
        self._round_handle: asyncio.TimerHandle | None = None
        self._next_round_at = 0.0
        # The canister whose query is running on clean state (it may ask for its data certificate).
        self._query_canister: bytes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self.port = 0

    # --- the ReplicaCore protocol of `endpoints` ------------------------------------------------------

    @property
    def clock(self) -> AdvanceableClock:
        return self._clock

    @property
    def state(self) -> CertifiedState:
        return self._state

    @property
    def history(self) -> IngressHistory:
        return self._history

    @property
    def canisters(self) -> Mapping[bytes, HostedCanister]:
        return self._canisters

    @property
    def canister_ids(self) -> list[bytes]:
        return list(self._canisters)

    def submit_call(self, record: IngressRecord) -> None:
        self._history.receive(record)
        assert self._loop is not None
        self._pending_calls.append((self._loop.time() + self._call_delay_s, record))
        self._schedule_round()

    def certified_status(self, request_id: bytes) -> asyncio.Future[bytes | None]:
        assert self._loop is not None
        future: asyncio.Future[bytes | None] = self._loop.create_future()
        record = self._history.get(request_id)
        if record is None:
            future.set_result(None)
        elif record.is_terminal:
            self._run_clean(lambda: self._resolve_status(request_id, [future]))
        else:
            self._status_waiters.setdefault(request_id, []).append(future)
        return future

    def when_clean(self, task: Callable[[], T]) -> T | asyncio.Future[T]:
        if not self._needs_certification():
            return task()
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()

        def run() -> None:
            if future.done():
                return  # the requester went away
            try:
                future.set_result(task())
            except Exception as e:
                future.set_exception(e)

        self._run_clean(run)
        return future

    def run_query(self, canister: HostedCanister, method_name: str, arg: bytes, caller: bytes) -> Outcome:
        self._query_canister = canister.canister_id
        try:
            return canister.handle_query(method_name, arg, caller)
        except Exception as e:
            return _trapped(canister.canister_id, method_name, e)
        finally:
            self._query_canister = None

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the canisters, certify the initial state and start listening."""
        self._loop = asyncio.get_running_loop()
        if isinstance(self._clock, CanisterClock):
            self._clock.bind_loop(self._loop)
        for index in range(self.config.canisters):
            canister = self._canister_factory(index, self)
            if canister.canister_id in self._canisters:
                raise ValueError(f"two canisters with id {core.principal_to_text(canister.canister_id)}")
            if not self.subnet.contains(canister.canister_id):
                raise ValueError(
                    f"canister {core.principal_to_text(canister.canister_id)} lies outside the subnet's range"
                )
            self._canisters[canister.canister_id] = canister
            self._state.add_canister(canister.canister_id, canister.certified_data, canister.candid_interface)
        self._certify()
        host, port = await self._server.start(self.config.host, self.config.port)
        self.port = port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        log.info(
            "replica listening on %s: subnet %s, %d canister(s)",
            self.url,
            core.principal_to_text(self.subnet.subnet_id),
            len(self._canisters),
        )

    async def stop(self) -> None:
        """Stop listening, answer what is in flight (briefly), then stop rounds, timers and canisters."""
        await self._server.stop()
        if self._round_handle is not None:
            self._round_handle.cancel()
            self._round_handle = None
        for waiters in self._status_waiters.values():
            for future in waiters:
                future.cancel()
        self._status_waiters.clear()
        self._clean_tasks.clear()
        if isinstance(self._clock, CanisterClock):
            self._clock.close()
        for canister in self._canisters.values():
            shutdown = getattr(canister, "shutdown", None)
            if shutdown is not None:
                shutdown()

    # --- CanisterHost: the canisters' view of their replica -----------------------------------------

    def certified_data_changed(self, canister_id: bytes) -> None:
        # The new value is read when the round certifies: a canister may compute it lazily, and a
        # burst of changes then costs one computation. During construction the canister is not
        # registered yet; its initial value is read when it is.
        if canister_id in self._canisters:
            self._certified_data_changes.add(canister_id)
            self._state.invalidate()

    def data_certificate(self, canister_id: bytes) -> bytes:
        if self._query_canister != canister_id:
            raise RuntimeError("a data certificate is only available to a query, on certified state")
        return self._state.certificate([(b"canister", canister_id, b"certified_data")])

    # --- rounds -----------------------------------------------------------------------------------

    def _needs_certification(self) -> bool:
        certified = self._state.certified
        return (
            self._state.is_dirty
            or certified is None
            or self._clock.now_ns() - certified.time_ns > CERTIFICATE_REFRESH_NS
        )

    def _certify(self) -> None:
        for canister_id in self._certified_data_changes:
            self._state.set_certified_data(canister_id, self._canisters[canister_id].certified_data)
        self._certified_data_changes.clear()
        self._state.certify(self._clock.now_ns())

    def _run_clean(self, task: Callable[[], None]) -> None:
        if not self._needs_certification():
            task()
            return
        self._clean_tasks.append(task)
        self._schedule_round()

    def _time_changed(self) -> None:
        # Time jumped (admin): transitions may be due and /time is stale.
        self._schedule_round()

    def _schedule_round(self) -> None:
        if self._round_handle is not None or self._loop is None:
            return
        delay = max(self._next_round_at - self._loop.time(), 0.0)
        self._round_handle = self._loop.call_later(delay, self._round)

    def _round(self) -> None:
        self._round_handle = None
        assert self._loop is not None
        started = self._loop.time()
        self._next_round_at = started + self._round_s
        self._history.advance(self._clock.now_ns())
        completed: list[bytes] = []
        while self._pending_calls and self._pending_calls[0][0] <= started:
            _, record = self._pending_calls.popleft()
            if self._execute(record):
                completed.append(record.request_id)
        if self._needs_certification():
            self._certify()
        for request_id in completed:
            waiters = self._status_waiters.pop(request_id, None)
            if waiters:
                self._resolve_status(request_id, waiters)
        tasks, self._clean_tasks = self._clean_tasks, []
        for i, task in enumerate(tasks):
            if self._state.is_dirty:
                # A task changed the state (a query touching certified data): the rest wait a round.
                self._clean_tasks.extend(tasks[i:])
                break
            task()
        if self._clean_tasks:
            self._schedule_round()
        elif self._pending_calls:
            self._round_handle = self._loop.call_later(
                max(self._pending_calls[0][0] - self._loop.time(), self._round_s), self._round
            )

    def _execute(self, record: IngressRecord) -> bool:
        """Run one call; False if it expired before it could run (it is then forgotten)."""
        now = self._clock.now_ns()
        if record.ingress_expiry < now:
            self._history.drop(record.request_id)
            for future in self._status_waiters.pop(record.request_id, []):
                if not future.done():
                    future.set_result(None)
            return False
        canister = self._canisters[record.canister_id]
        outcome: Outcome
        if canister.method_kind(record.method_name) is None:
            outcome = Reject(
                DESTINATION_INVALID,
                f"Canister {core.principal_to_text(record.canister_id)} has no update method "
                f"'{record.method_name}'",
                "IC0536",
            )
        else:
            try:
                outcome = canister.handle_update(record.method_name, record.arg, record.sender)
            except Exception as e:
                outcome = _trapped(record.canister_id, record.method_name, e)
        self._history.complete(record, outcome, self._clock.now_ns())
        return True

    def _resolve_status(self, request_id: bytes, waiters: Sequence[asyncio.Future[bytes | None]]) -> None:
        certificate = self._state.certificate([(b"request_status", request_id)])
        for future in waiters:
            if not future.done():
                future.set_result(certificate)


def _trapped(canister_id: bytes, method_name: str, error: Exception) -> Reject:
    log.warning("canister %s: %s raised", core.principal_to_text(canister_id), method_name, exc_info=True)
    return Reject(
        CANISTER_ERROR,
        f"Error from Canister {core.principal_to_text(canister_id)}: Canister called `ic0.trap` "
        f"with message: {type(error).__name__}: {error}",
        "IC0503",
    )


def builtin_canister_factory(config: ReplicaConfig) -> CanisterFactory:
    """Canisters running the CDK with the built-in test app, or the app named by `--app`."""

    def create(index: int, host: CanisterHost) -> HostedCanister:
        # Imported here: the canister side is only needed once canisters are made.
        from icgw.replica.apps import load_app
        from icgw.replica.canister import Canister, canister_id_for_index
        from icgw.replica.cdk import WsInitParams
        from icgw.replica.test_canister import TestCanister

        app = load_app(config.app) if config.app is not None else TestCanister()
        params = WsInitParams(
            max_number_of_returned_messages=config.max_returned_messages,
            send_ack_interval_ms=config.ack_interval_ms,
        )
        return Canister(canister_id_for_index(index), host, app, flavor=config.flavor, params=params)

    return create
