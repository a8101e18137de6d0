"""`IcAgent`: the gateway's asynchronous client for the IC HTTP interface (IC-INTERFACE.md §1, §5 to §7).

What the gateway needs from the IC, and nothing else:
- relay a client's already signed call envelope, unchanged, and learn its outcome (`submit_call`);
- poll `ws_get_messages` with its own identity, checking the node signature (`query`);
- call `ws_close` as itself and wait for the result (`call`);
- read and verify certificates (`read_state`), and decide which root key to trust (`root_key`).

Every response is checked before it is believed: certificates against the trusted root key with the
canister's delegation scope and freshness, query responses against the node keys the subnet certifies.
Failures surface as the classes of `icgw.ic.errors`.

One `aiohttp.ClientSession` with one keep-alive connection pool carries everything. The poll of every
canister runs every 100 ms, so the per-request work is kept to one signature (none when an idle poller
repeats a poll within the same minute, see `_query_envelope`), one HTTP round trip and one check.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, NoReturn, TypeAlias, TypeVar

import aiohttp

from icgw import core
from icgw.leb128 import decode_unsigned

from .errors import (
    IcError,
    IcHttpError,
    IcProtocolError,
    IcRejectError,
    IcTimeoutError,
    IcTransportError,
    IcVerificationError,
)
from .root_key import check_root_key_der, pinned_root_key, root_key_from_status

_log = logging.getLogger(__name__)

_CBOR_HEADERS = {"Content-Type": "application/cbor"}
# Domain separator of node signatures on query responses (IC-INTERFACE.md §3, §6).
_RESPONSE_DOMAIN = b"\x0bic-response"
_NS_PER_MINUTE = 60_000_000_000
# Requests are valid until now + 4 minutes, inside the replica's limit of now + 5 min 30 s with room
# for a minute of clock drift (IC-INTERFACE.md §2).
INGRESS_EXPIRY_NS = 4 * _NS_PER_MINUTE
# The spec suggests 5 minutes of freshness for certificates and query signatures (§5.6).
DEFAULT_MAX_AGE_NS = 5 * _NS_PER_MINUTE
# Node keys change rarely; agent-rs keeps them 5 minutes, and refetches early on an unknown node id.
NODE_KEYS_TTL_S = 300.0
# An unknown node id refetches the node keys, but not more often than this: a faulty or hostile
# replica answering with unknown ids must not turn every 100 ms poll into two requests.
NODE_KEYS_MIN_REFETCH_S = 1.0
# Calls and read_states answered with 429 (rate limit) or 503 are sent again after these pauses.
# Resending is safe: the IC deduplicates by request id. Queries are not resent; their pollers repeat.
_OVERLOAD_PAUSES_S = (0.25, 0.5, 1.0)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request time limits in seconds (connect is part of each)."""

    connect: float = 5.0
    status: float = 10.0
    # The reference gateway's poll timeout (REFERENCE-GATEWAY.md §4.6): a stuck poll is abandoned and
    # repeated rather than holding the canister's messages.
    query: float = 5.0
    # A synchronous (v3) call holds the request while the replica executes it, ~10 s before it
    # answers 202; this leaves room for that and a slow network.
    call: float = 30.0
    read_state: float = 10.0


@dataclass(frozen=True, slots=True)
class PollingPolicy:
    """How `submit_call` waits for a call's outcome with read_state after a 202 (agent-rs defaults)."""

    initial_delay: float = 0.5
    multiplier: float = 1.4
    max_delay: float = 1.0
    deadline: float = 300.0


CallStatus = Literal["replied", "rejected", "done", "non_replicated_rejection", "accepted"]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What became of a call.

    - "replied": `reply` holds the Candid reply; `certificate` the verified certificate saying so.
    - "rejected": certified reject (`reject_code`, `reject_message`, `error_code`).
    - "non_replicated_rejection": refused before consensus (e.g. by inspect_message); it never ran.
    - "done": it completed, but the reply was already pruned from the state tree.
    - "accepted": the IC took the call and the outcome was not awaited (asked not to, or the request's
      status is only readable by its sender and this agent does not hold the sender's key).
    """

    request_id: bytes
    status: CallStatus
    reply: bytes | None = None
    reject_code: int | None = None
    reject_message: str | None = None
    error_code: str | None = None
    certificate: bytes | None = None

    def reply_or_raise(self) -> bytes:
        """The reply; IcRejectError for a reject, IcProtocolError when there is no reply to give."""
        if self.status == "replied" and self.reply is not None:
            return self.reply
        if self.status in ("rejected", "non_replicated_rejection"):
            kind: Literal["replicated", "non_replicated"] = (
                "replicated" if self.status == "rejected" else "non_replicated"
            )
            raise IcRejectError(self.reject_code or 0, self.reject_message or "", self.error_code, kind)
        raise IcProtocolError(f"call 0x{self.request_id.hex()} has no reply (status {self.status})")


class _StatusPolling(enum.Enum):
    """How `_submit_call` may wait for an outcome when no identity is given to read the status."""

    NEVER = 0
    # Only if the envelope's sender is anonymous (decoded on a 202 only, not on every relayed call).
    IF_SENDER_IS_ANONYMOUS = 1


# Who reads a call's request status: an identity, None for anonymous, or a `_StatusPolling` rule.
_StatusReader: TypeAlias = core.Ed25519Identity | _StatusPolling | None


@dataclass(slots=True)
class _EndpointVersions:
    """The API versions of one endpoint kind to try, in order. When a replica lacks one (404/405), the
    next is tried, and once that one answers it becomes the one used from then on."""

    kind: str
    versions: tuple[int, ...]
    index: int = 0


@dataclass(frozen=True, slots=True)
class _SignedQuery:
    arg: bytes
    ingress_expiry: int
    envelope: bytes
    request_id: bytes


@dataclass(slots=True)
class _SubnetNodes:
    """The verified `/subnet` state of the subnet that hosts one canister."""

    subnet_id: bytes
    tree: bytes
    fetched_at: float
    # Keys already looked up, so that a poll does not parse the subnet's tree again.
    found: dict[bytes, bytes] = field(default_factory=dict)

    def node_key(self, node_id: bytes) -> bytes | None:
        key = self.found.get(node_id)
        if key is None:
            result, value = core.lookup_path(
                self.tree, [b"subnet", self.subnet_id, b"node", node_id, b"public_key"]
            )
            if result != "found" or value is None:
                return None
            key = self.found[node_id] = value
        return key


class IcAgent:
    """Asynchronous client for one IC HTTP endpoint (a boundary node, a replica or an emulator).

    `url` is the base URL; a path prefix is kept (PocketIC serves `/instances/<n>/api/...`). The root
    key is `root_key` if given, the mainnet key for mainnet URLs, else fetched from `/api/v2/status`
    on first need. `certificate_max_age_ns=None` switches the freshness checks off (for old test
    vectors only). `clock` gives the time in ns since 1970 for expiries and freshness.
    """

    def __init__(
        self,
        url: str,
        *,
        root_key: bytes | None = None,
        timeouts: Timeouts = Timeouts(),
        polling: PollingPolicy = PollingPolicy(),
        max_connections: int = 1000,
        max_response_bytes: int = 8 * 1024 * 1024,
        certificate_max_age_ns: int | None = DEFAULT_MAX_AGE_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.url = url.rstrip("/")
        if root_key is not None:
            try:
                check_root_key_der(root_key)
            except IcProtocolError as e:
                raise ValueError(str(e)) from e
        self._root_key = root_key if root_key is not None else pinned_root_key(url)
        self._root_key_lock = asyncio.Lock()
        self._polling = polling
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._max_age_ns = certificate_max_age_ns
        self._clock = clock
        # One ClientTimeout per request kind, made once rather than per request.
        self._status_timeout = aiohttp.ClientTimeout(total=timeouts.status, connect=timeouts.connect)
        self._query_timeout = aiohttp.ClientTimeout(total=timeouts.query, connect=timeouts.connect)
        self._call_timeout = aiohttp.ClientTimeout(total=timeouts.call, connect=timeouts.connect)
        self._read_state_timeout = aiohttp.ClientTimeout(total=timeouts.read_state, connect=timeouts.connect)
        # v3 call is synchronous, and what the reference uses; v2 is the asynchronous original that
        # older replicas and emulators serve. v2 query and read_state are what the reference and the
        # JS SDK use (their certificates carry the legacy range layout); v3 is the current version.
        self._call_endpoint = _EndpointVersions("call", (3, 2))
        self._query_endpoint = _EndpointVersions("query", (2, 3))
        self._read_state_endpoint = _EndpointVersions("read_state", (2, 3))
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._signed_queries: dict[tuple[bytes, bytes, str], _SignedQuery] = {}
        self._subnet_nodes: dict[bytes, _SubnetNodes] = {}
        self._subnet_locks: dict[bytes, asyncio.Lock] = {}

    # --- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> IcAgent:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool. The agent cannot be used afterwards."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                raise RuntimeError("the IcAgent is closed")
            # One pool for everything, sized far above aiohttp's default of 100: every canister's
            # poller keeps a query in flight, the relay one call per client frame, and a synchronous
            # v3 call holds its connection for seconds while the canister runs. With a small pool,
            # bursts of relayed calls would queue the pollers' queries behind them (the reference's
            # shared limit of 50 starves its pollers this way, REFERENCE-GATEWAY.md §10.13). Idle
            # connections are kept alive well past the 100 ms poll interval, so polls reuse them.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=30.0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    # --- root key ------------------------------------------------------------------------------------

    async def fetch_root_key(self) -> bytes:
        """The root key the endpoint publishes in `GET /api/v2/status` (trusted or not: see `root_key`)."""
        url = f"{self.url}/api/v2/status"
        status, body = await self._send("GET", url, None, self._status_timeout)
        if status != 200:
            raise IcHttpError(status, _body_text(body), url)
        return root_key_from_status(body)

    async def root_key(self) -> bytes:
        """The root key certificates are verified against: the configured one, the mainnet key for a
        mainnet URL, or the one the endpoint publishes (fetched once)."""
        if self._root_key is None:
            async with self._root_key_lock:
                if self._root_key is None:
                    self._root_key = await self.fetch_root_key()
        return self._root_key

    # --- calls ---------------------------------------------------------------------------------------

    async def submit_call(
        self,
        canister_id: bytes,
        envelope: bytes,
        *,
        read_state_identity: core.Ed25519Identity | None = None,
        wait: bool = True,
    ) -> CallOutcome:
        """Send an already signed call envelope, byte for byte, to `canister_id` and return its outcome.

        A 202 (accepted, outcome pending) is followed by read_state polling until a terminal status or
        the polling deadline (IcTimeoutError) when `wait` is true and the agent may read the status:
        the IC reveals a request's status only to its sender, so that is when the sender is anonymous
        or `read_state_identity` is the sender. Otherwise the outcome is "accepted". Raises IcHttpError
        for 4xx/5xx, IcVerificationError for a bad certificate, ValueError for an undecodable envelope
        or a `read_state_identity` that is not the envelope's sender.
        """
        request_id = core.envelope_request_id(envelope)
        reader: _StatusReader = _StatusPolling.NEVER
        if wait and read_state_identity is not None:
            if read_state_identity.principal != _envelope_sender(envelope):
                raise ValueError("read_state_identity is not the sender of the envelope")
            reader = read_state_identity
        elif wait:
            reader = _StatusPolling.IF_SENDER_IS_ANONYMOUS
        return await self._submit_call(canister_id, envelope, request_id, reader)

    async def call(
        self, identity: core.Ed25519Identity, canister_id: bytes, method: str, arg: bytes
    ) -> bytes:
        """Call `method` as `identity` and wait for the reply (Candid bytes); raises IcRejectError if
        the call is rejected, IcTimeoutError if no outcome arrives by the polling deadline."""
        content = {
            "request_type": "call",
            "sender": identity.principal,
            # A fresh nonce makes every call a new request, even when the same close is sent twice.
            "nonce": os.urandom(16),
            "ingress_expiry": self._ingress_expiry(),
            "canister_id": canister_id,
            "method_name": method,
            "arg": arg,
        }
        envelope = core.sign_envelope(identity, content)
        outcome = await self._submit_call(canister_id, envelope, core.request_id(content), identity)
        return outcome.reply_or_raise()

    async def _submit_call(
        self, canister_id: bytes, envelope: bytes, request_id: bytes, reader: _StatusReader
    ) -> CallOutcome:
        status, body, url = await self._post(
            self._call_endpoint, canister_id, envelope, self._call_timeout, retry_overload=True
        )
        outcome: CallOutcome | None = None
        if status == 200:
            outcome = await self._call_response_outcome(canister_id, request_id, _decode_map(body, url), url)
        elif status != 202:
            raise IcHttpError(status, _body_text(body), url)
        if outcome is not None:
            return outcome
        if reader is _StatusPolling.IF_SENDER_IS_ANONYMOUS and _envelope_sender(envelope) == core.ANONYMOUS:
            reader = None
        if isinstance(reader, _StatusPolling):
            return CallOutcome(request_id, "accepted")
        return await self._poll_request_status(canister_id, request_id, reader)

    async def _call_response_outcome(
        self, canister_id: bytes, request_id: bytes, response: Mapping[str, object], url: str
    ) -> CallOutcome | None:
        """The outcome a 200 call response states, or None when its certificate shows no final status."""
        status = response.get("status")
        if status == "replied":
            # Synchronous call: the certificate holds the real status, which may still be a reject.
            certificate = _field(response, "certificate", bytes, url)
            await self._verify_certificate(certificate, canister_id)
            return _request_status_outcome(certificate, request_id)
        # v3 names the non-replicated rejection; v2 answers the same map without a status field.
        if status == "non_replicated_rejection" or (status is None and "reject_code" in response):
            return CallOutcome(
                request_id,
                "non_replicated_rejection",
                reject_code=_field(response, "reject_code", int, url),
                reject_message=_field(response, "reject_message", str, url),
                error_code=_optional_field(response, "error_code", str, url),
            )
        raise IcProtocolError(f"{url}: unexpected call response status {status!r}")

    async def _poll_request_status(
        self, canister_id: bytes, request_id: bytes, identity: core.Ed25519Identity | None
    ) -> CallOutcome:
        loop = asyncio.get_running_loop()
        policy = self._polling
        deadline = loop.time() + policy.deadline
        delay = policy.initial_delay
        paths = [[b"request_status", request_id]]
        last_error: IcError | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise IcTimeoutError(
                    f"call 0x{request_id.hex()} reached no final status within {policy.deadline:g} s"
                    + (f" (last error: {last_error})" if last_error else "")
                ) from last_error
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * policy.multiplier, policy.max_delay)
            try:
                certificate = await self.read_state(identity, canister_id, paths)
            except IcError as e:
                # A lost poll is not a lost call: keep asking until the deadline.
                if not e.retryable:
                    raise
                last_error = e
                continue
            outcome = _request_status_outcome(certificate, request_id)
            if outcome is not None:
                return outcome

    # --- queries -------------------------------------------------------------------------------------

    async def query(
        self,
        identity: core.Ed25519Identity | None,
        canister_id: bytes,
        method: str,
        arg: bytes,
        *,
        verify_signature: bool = True,
    ) -> bytes:
        """Query `method` as `identity` (None: anonymous); returns the reply's Candid bytes.

        With `verify_signature`, every node signature must verify against the node keys the hosting
        subnet certifies (IcVerificationError otherwise). Raises IcRejectError on a reject.
        """
        signed = self._query_envelope(identity, canister_id, method, arg)
        return await self._submit_query(canister_id, signed.envelope, signed.request_id, verify_signature)

    async def submit_query(
        self, canister_id: bytes, envelope: bytes, *, verify_signature: bool = True
    ) -> bytes:
        """Send an already built query envelope; otherwise as `query`."""
        return await self._submit_query(
            canister_id, envelope, core.envelope_request_id(envelope), verify_signature
        )

    def _query_envelope(
        self, identity: core.Ed25519Identity | None, canister_id: bytes, method: str, arg: bytes
    ) -> _SignedQuery:
        # The expiry is rounded down to the minute (as agent-rs does), so within a minute the same
        # query is the same request, and the envelope signed for the first is reused: an idle poller
        # asks with the same nonce every 100 ms and signs about once a minute instead of 600 times.
        expiry = self._ingress_expiry()
        sender = core.ANONYMOUS if identity is None else identity.principal
        key = (sender, canister_id, method)
        cached = self._signed_queries.get(key)
        if cached is not None and cached.ingress_expiry == expiry and cached.arg == arg:
            return cached
        content = {
            "request_type": "query",
            "sender": sender,
            "ingress_expiry": expiry,
            "canister_id": canister_id,
            "method_name": method,
            "arg": arg,
        }
        envelope = _anonymous_envelope(content) if identity is None else core.sign_envelope(identity, content)
        signed = _SignedQuery(arg, expiry, envelope, core.request_id(content))
        if len(self._signed_queries) >= 4096:
            self._signed_queries.clear()
        self._signed_queries[key] = signed
        return signed

    async def _submit_query(
        self, canister_id: bytes, envelope: bytes, request_id: bytes, verify_signature: bool
    ) -> bytes:
        status, body, url = await self._post(self._query_endpoint, canister_id, envelope, self._query_timeout)
        if status != 200:
            raise IcHttpError(status, _body_text(body), url)
        response = _decode_map(body, url)
        if verify_signature:
            await self._verify_query_signatures(canister_id, request_id, response, url)
        outcome = response.get("status")
        if outcome == "replied":
            reply = _field(response, "reply", dict, url)
            return _field(reply, "arg", bytes, url)
        if outcome == "rejected":
            raise IcRejectError(
                _field(response, "reject_code", int, url),
                _field(response, "reject_message", str, url),
                _optional_field(response, "error_code", str, url),
                "query",
            )
        raise IcProtocolError(f"{url}: unexpected query response status {outcome!r}")

    async def _verify_query_signatures(
        self, canister_id: bytes, request_id: bytes, response: Mapping[str, object], url: str
    ) -> None:
        # What each node signs (IC-INTERFACE.md §6): the response without its signatures, plus the
        # signature's timestamp and the request id.
        status = response.get("status")
        signed: dict[str, object]
        if status == "replied":
            signed = {"status": status, "reply": _field(response, "reply", dict, url)}
        elif status == "rejected":
            signed = {
                "status": status,
                "reject_code": _field(response, "reject_code", int, url),
                "reject_message": _field(response, "reject_message", str, url),
            }
            error_code = _optional_field(response, "error_code", str, url)
            if error_code is not None:
                signed["error_code"] = error_code
        else:
            raise IcProtocolError(f"{url}: unexpected query response status {status!r}")
        signatures = response.get("signatures")
        if not isinstance(signatures, list) or not signatures:
            raise IcVerificationError(f"{url}: the query response carries no node signature")
        signed["request_id"] = request_id
        now = self._clock()
        for entry in signatures:
            if not isinstance(entry, dict):
                raise IcProtocolError(f"{url}: a node signature is not a map")
            node_id = _field(entry, "identity", bytes, url)
            timestamp = _field(entry, "timestamp", int, url)
            signature = _field(entry, "signature", bytes, url)
            if self._max_age_ns is not None and not (
                now - self._max_age_ns <= timestamp <= now + DEFAULT_MAX_AGE_NS
            ):
                raise IcVerificationError(
                    f"{url}: the query signature of node {_text(node_id)} is not recent "
                    f"(signed at {timestamp} ns, now {now} ns)"
                )
            node_key = await self._node_key(canister_id, node_id)
            signed["timestamp"] = timestamp
            message = _RESPONSE_DOMAIN + core.request_id(signed)
            try:
                valid = core.verify_signature(node_key, message, signature)
            except ValueError as e:
                raise IcVerificationError(f"{url}: malformed signature of node {_text(node_id)} ({e})") from e
            if not valid:
                raise IcVerificationError(f"{url}: the query signature of node {_text(node_id)} is invalid")

    async def _node_key(self, canister_id: bytes, node_id: bytes) -> bytes:
        """The DER key of `node_id`, which must be a node of the subnet hosting `canister_id`."""
        nodes = self._subnet_nodes.get(canister_id)
        if nodes is not None:
            age = time.monotonic() - nodes.fetched_at
            if age < NODE_KEYS_TTL_S:
                key = nodes.node_key(node_id)
                if key is not None:
                    return key
                if age < NODE_KEYS_MIN_REFETCH_S:
                    _raise_unknown_node(canister_id, node_id, nodes)
        nodes = await self._refresh_subnet_nodes(canister_id, nodes)
        key = nodes.node_key(node_id)
        if key is None:
            _raise_unknown_node(canister_id, node_id, nodes)
        return key

    async def _refresh_subnet_nodes(self, canister_id: bytes, stale: _SubnetNodes | None) -> _SubnetNodes:
        lock = self._subnet_locks.setdefault(canister_id, asyncio.Lock())
        async with lock:
            current = self._subnet_nodes.get(canister_id)
            if current is not None and current is not stale:
                return current  # another query refreshed it while this one waited
            nodes = await self._fetch_subnet_nodes(canister_id)
            self._subnet_nodes[canister_id] = nodes
            return nodes

    async def _fetch_subnet_nodes(self, canister_id: bytes) -> _SubnetNodes:
        # Anonymous: `/subnet` paths are readable by anyone, and anonymous read_states cost no signature.
        certificate = await self.read_state(None, canister_id, [[b"subnet"]])
        decoded = _decode_map(certificate, "the /subnet certificate")
        tree = core.cbor_encode(decoded.get("tree"))
        delegation = decoded.get("delegation")
        if isinstance(delegation, dict):
            # verify_certificate has checked that the delegation covers canister_id.
            subnet_id = _field(delegation, "subnet_id", bytes, "the /subnet certificate's delegation")
        else:
            # Signed by the root key itself: the root subnet, whose id is the root key's principal
            # (IC-INTERFACE.md §4, §11.3). Its canister ranges are not checked by verify_certificate.
            subnet_id = core.self_authenticating_principal(await self.root_key())
            _check_in_legacy_ranges(tree, subnet_id, canister_id)
        return _SubnetNodes(subnet_id, tree, time.monotonic())

    # --- read_state ----------------------------------------------------------------------------------

    async def read_state(
        self, identity: core.Ed25519Identity | None, canister_id: bytes, paths: Sequence[Sequence[bytes]]
    ) -> bytes:
        """Read `paths` of the state tree through `canister_id`'s endpoint, as `identity` (None:
        anonymous). Returns the certificate, verified against the root key for `canister_id`."""
        content = {
            "request_type": "read_state",
            "sender": core.ANONYMOUS if identity is None else identity.principal,
            "ingress_expiry": self._ingress_expiry(),
            "paths": [list(path) for path in paths],
        }
        envelope = _anonymous_envelope(content) if identity is None else core.sign_envelope(identity, content)
        status, body, url = await self._post(
            self._read_state_endpoint, canister_id, envelope, self._read_state_timeout, retry_overload=True
        )
        if status != 200:
            raise IcHttpError(status, _body_text(body), url)
        certificate = _field(_decode_map(body, url), "certificate", bytes, url)
        await self._verify_certificate(certificate, canister_id)
        return certificate

    async def _verify_certificate(self, certificate: bytes, canister_id: bytes) -> None:
        root_key = await self.root_key()
        try:
            core.verify_certificate(
                certificate,
                root_key,
                canister_id=canister_id,
                now_ns=None if self._max_age_ns is None else self._clock(),
                max_age_ns=self._max_age_ns,
            )
        except core.CoreError as e:
            raise IcVerificationError(f"certificate for canister {_text(canister_id)} rejected: {e}") from e

    # --- HTTP ----------------------------------------------------------------------------------------

    def _ingress_expiry(self) -> int:
        expiry = self._clock() + INGRESS_EXPIRY_NS
        return expiry - expiry % _NS_PER_MINUTE

    async def _post(
        self,
        endpoint: _EndpointVersions,
        canister_id: bytes,
        body: bytes,
        limits: aiohttp.ClientTimeout,
        *,
        retry_overload: bool = False,
    ) -> tuple[int, bytes, str]:
        """POST `body` to the endpoint's current version, falling back to the next on 404/405.
        Returns the HTTP status, the body and the URL that answered."""
        canister = _text(canister_id)
        pauses = iter(_OVERLOAD_PAUSES_S if retry_overload else ())
        index = endpoint.index
        while True:
            url = f"{self.url}/api/v{endpoint.versions[index]}/canister/{canister}/{endpoint.kind}"
            status, data = await self._send("POST", url, body, limits)
            if status in (404, 405) and index + 1 < len(endpoint.versions):
                index += 1
                continue
            if status in (429, 503):
                pause = next(pauses, None)
                if pause is not None:
                    await asyncio.sleep(pause)
                    continue
            if index != endpoint.index and status not in (404, 405):
                _log.info(
                    "%s: /api/v%d/…/%s is missing; using v%d from now on",
                    self.url,
                    endpoint.versions[endpoint.index],
                    endpoint.kind,
                    endpoint.versions[index],
                )
                endpoint.index = index
            return status, data, url

    async def _send(
        self, method: str, url: str, body: bytes | None, limits: aiohttp.ClientTimeout
    ) -> tuple[int, bytes]:
        try:
            async with self._http().request(
                method, url, data=body, headers=_CBOR_HEADERS if body is not None else None, timeout=limits
            ) as response:
                return response.status, await self._read_body(response, url)
        except TimeoutError as e:
            raise IcTimeoutError(f"{method} {url}: no response within {limits.total} s") from e
        except aiohttp.ClientError as e:
            raise IcTransportError(f"{method} {url}: {type(e).__name__}: {e}") from e

    async def _read_body(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        limit = self._max_response_bytes
        length = response.content_length
        if length is not None:
            if length > limit:
                raise IcProtocolError(f"{url}: the response of {length} bytes exceeds the {limit}-byte limit")
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise IcProtocolError(f"{url}: the response exceeds the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)


# --- helpers ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _text(principal: bytes) -> str:
    """Textual principal, cached: the same few canister ids appear in every URL."""
    return core.principal_to_text(principal)


def _anonymous_envelope(content: Mapping[str, object]) -> bytes:
    # Anonymous requests carry no key and no signature (IC-INTERFACE.md §2).
    return core.cbor_encode({"content": content})


def _envelope_sender(envelope: bytes) -> bytes:
    decoded = core.cbor_decode(envelope)
    content = decoded.get("content") if isinstance(decoded, dict) else None
    sender = content.get("sender") if isinstance(content, dict) else None
    if not isinstance(sender, bytes):
        raise ValueError("the envelope has no content.sender")
    return sender


def _body_text(body: bytes, limit: int = 1000) -> str:
    text = body[: limit + 1].decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _decode_map(body: bytes, where: str) -> dict[str, object]:
    try:
        value = core.cbor_decode(body)
    except core.CborError as e:
        raise IcProtocolError(f"{where}: undecodable CBOR ({e})") from e
    if not isinstance(value, dict):
        raise IcProtocolError(f"{where}: the response is not a CBOR map")
    return value


def _field(mapping: Mapping[str, object], key: str, kind: type[T], where: str) -> T:
    value = mapping.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IcProtocolError(f"{where}: field {key!r} is missing or not {kind.__name__}")
    return value


def _optional_field(mapping: Mapping[str, object], key: str, kind: type[T], where: str) -> T | None:
    return None if mapping.get(key) is None else _field(mapping, key, kind, where)


def _certificate_tree(certificate: bytes) -> bytes:
    return core.cbor_encode(_decode_map(certificate, "certificate").get("tree"))


def _request_status_outcome(certificate: bytes, request_id: bytes) -> CallOutcome | None:
    """The final status of `request_id` in a verified certificate; None while it is not final
    (absent: not yet known; received, processing: still running)."""
    tree = _certificate_tree(certificate)
    prefix = [b"request_status", request_id]
    result, status = core.lookup_path(tree, [*prefix, b"status"])
    if result == "absent":
        return None
    if result != "found" or status is None:
        raise IcProtocolError(
            f"the certificate does not reveal the status of request 0x{request_id.hex()} ({result})"
        )
    if status == b"replied":
        return CallOutcome(
            request_id, "replied", reply=_lookup_found(tree, [*prefix, b"reply"]), certificate=certificate
        )
    if status == b"rejected":
        error_code = _lookup_optional(tree, [*prefix, b"error_code"])
        return CallOutcome(
            request_id,
            "rejected",
            reject_code=_nat(_lookup_found(tree, [*prefix, b"reject_code"])),
            reject_message=_lookup_found(tree, [*prefix, b"reject_message"]).decode("utf-8", "replace"),
            error_code=None if error_code is None else error_code.decode("utf-8", "replace"),
            certificate=certificate,
        )
    if status == b"done":
        return CallOutcome(request_id, "done", certificate=certificate)
    return None  # "received", "processing", or a status this agent does not know: keep polling


def _lookup_found(tree: bytes, path: list[bytes]) -> bytes:
    result, value = core.lookup_path(tree, path)
    if result != "found" or value is None:
        raise IcProtocolError(f"the certificate lacks {_path_text(path)} ({result})")
    return value


def _lookup_optional(tree: bytes, path: list[bytes]) -> bytes | None:
    result, value = core.lookup_path(tree, path)
    if result == "absent":
        return None
    if result != "found":
        raise IcProtocolError(f"the certificate does not reveal {_path_text(path)} ({result})")
    return value


def _check_in_legacy_ranges(tree: bytes, subnet_id: bytes, canister_id: bytes) -> None:
    """Raise IcVerificationError unless `/subnet/<subnet_id>/canister_ranges` contains the canister."""
    result, value = core.lookup_path(tree, [b"subnet", subnet_id, b"canister_ranges"])
    if result != "found" or value is None:
        raise IcVerificationError(
            f"the /subnet certificate does not reveal the canister ranges of subnet {_text(subnet_id)} "
            f"({result})"
        )
    try:
        ranges = core.cbor_decode(value)
    except core.CborError as e:
        raise IcVerificationError(f"undecodable canister ranges of subnet {_text(subnet_id)} ({e})") from e
    if not isinstance(ranges, list):
        raise IcVerificationError(f"the canister ranges of subnet {_text(subnet_id)} are not a list")
    for entry in ranges:
        if (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], bytes)
            and isinstance(entry[1], bytes)
            and entry[0] <= canister_id <= entry[1]
        ):
            return
    raise IcVerificationError(
        f"canister {_text(canister_id)} is outside the ranges of subnet {_text(subnet_id)}"
    )


def _raise_unknown_node(canister_id: bytes, node_id: bytes, nodes: _SubnetNodes) -> NoReturn:
    raise IcVerificationError(
        f"node {_text(node_id)} is not a node of subnet {_text(nodes.subnet_id)}, "
        f"which hosts canister {_text(canister_id)}"
    )


def _path_text(path: list[bytes]) -> str:
    return "/" + "/".join(
        label.decode() if re.fullmatch(rb"[a-z_]+", label) else "0x" + label.hex() for label in path
    )


def _nat(leaf: bytes) -> int:
    try:
        return decode_unsigned(leaf)
    except ValueError as error:
        raise IcProtocolError(f"a malformed number in the certificate: {error}") from error
