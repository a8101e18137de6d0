"""The IC HTTP interface (IC-INTERFACE.md §1, §2, §6, §7) as the emulator serves it.

- `GET /api/v2/status`: CBOR `{ic_api_version, root_key, impl_version?, replica_health_status}`.
- `POST /api/v2/canister/<id>/call`: 202, or 200 `{reject_code, reject_message, error_code}` (a
  non-replicated rejection: unknown canister).
- `POST /api/v3|v4/canister/<id>/call`: 200 `{status: "replied", certificate}` once the call is
  certified, 202 after `sync_call_timeout_ms`, or 200 `{status: "non_replicated_rejection", ...}`.
- `POST /api/v4/subnet/<id>/call`: a non-replicated rejection (there is no management canister).
- `POST /api/v2|v3/canister/<id>/query`: 200 `{status: "replied"|"rejected", ..., signatures}`.
- `POST /api/v3/subnet/<id>/query`: rejected (there is no management canister).
- `POST /api/v2|v3/canister|subnet/<id>/read_state`: 200 `{certificate}`.
- `GET /_/candid/<canister id>`: the canister's Candid service description (text/plain); the same
  text is certified at `/canister/<id>/metadata/candid:service`.

Errors follow the replica: 400 with a text message for a malformed or invalid envelope or URL id,
403 for a request status read by someone else, 404 for an unknown path, 405 for a wrong method.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast

from icgw import core
from icgw.replica.admin import AdminEndpoints
from icgw.replica.config import ReplicaConfig
from icgw.replica.faults import FaultInjector
from icgw.replica.http_server import HttpRequest, HttpResponse
from icgw.replica.interfaces import (
    DESTINATION_INVALID,
    Clock,
    HostedCanister,
    Outcome,
    Reject,
    Reply,
)
from icgw.replica.state import CertifiedState, IngressHistory, IngressRecord

log = logging.getLogger("icgw.replica.http")

T = TypeVar("T")

IC_API_VERSION = "0.18.0"
CBOR = "application/cbor"
QUERY_RESPONSE_DOMAIN = b"\x0bic-response"

# IC error codes for the rejections the emulator produces itself.
CANISTER_NOT_FOUND = "IC0301"
METHOD_NOT_FOUND = "IC0536"

MANAGEMENT_CANISTER = b""  # aaaaa-aa

RequestType = Literal["call", "query", "read_state"]
Scope = Literal["canister", "subnet"]

# (request type, scope) -> the API versions that serve it (IC-INTERFACE.md §1).
_ROUTES: dict[tuple[str, str], frozenset[str]] = {
    ("call", "canister"): frozenset({"v2", "v3", "v4"}),
    ("call", "subnet"): frozenset({"v4"}),
    ("query", "canister"): frozenset({"v2", "v3"}),
    ("query", "subnet"): frozenset({"v3"}),
    ("read_state", "canister"): frozenset({"v2", "v3"}),
    ("read_state", "subnet"): frozenset({"v2", "v3"}),
}

_REQUEST_STATUS_FIELDS = frozenset({b"status", b"reply", b"reject_code", b"reject_message", b"error_code"})
_CANISTER_INFO = frozenset(
    {b"module_hash", b"controllers", b"canister_creation_timestamp", b"last_install_timestamp"}
)


class ReplicaCore(Protocol):
    """What the endpoints need from the replica that executes and certifies."""

    @property
    def clock(self) -> Clock: ...

    @property
    def state(self) -> CertifiedState: ...

    @property
    def history(self) -> IngressHistory: ...

    @property
    def canisters(self) -> Mapping[bytes, HostedCanister]: ...

    def submit_call(self, record: IngressRecord) -> None:
        """Accept a new call: status "received" now, executed in a coming round."""
        ...

    def certified_status(self, request_id: bytes) -> asyncio.Future[bytes | None]:
        """Resolves, in the round that certifies the request's terminal status, with a certificate for
        /request_status/<rid> (None: the request was dropped unexecuted)."""
        ...

    def when_clean(self, task: Callable[[], T]) -> T | asyncio.Future[T]:
        """Run `task` on certified state: at once if nothing changed since the last certification,
        else right after the next one, in the same loop step."""
        ...

    def run_query(self, canister: HostedCanister, method_name: str, arg: bytes, caller: bytes) -> Outcome:
        """Run a query method (on clean state: the canister may ask for its data certificate)."""
        ...


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = HttpResponse.text(status, message.rstrip("\n") + "\n")


@dataclass(frozen=True, slots=True)
class _Envelope:
    """A verified request: its content fields, request id and the envelope's delegations."""

    request_id: bytes
    content: dict[str, Any]
    delegations: list[Any]

    @property
    def sender(self) -> bytes:
        sender: bytes = self.content["sender"]
        return sender


def _cbor(value: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status, core.cbor_encode(value), CBOR)


def _text_id(principal: bytes) -> str:
    return core.principal_to_text(principal)


class IcEndpoints:
    """Routes requests to the IC API, the Candid endpoint and (if enabled) the admin endpoints."""

    def __init__(
        self,
        replica: ReplicaCore,
        config: ReplicaConfig,
        *,
        node_identity: core.Ed25519Identity,
        root_key_der: bytes,
        faults: FaultInjector | None = None,
        admin: AdminEndpoints | None = None,
    ) -> None:
        self._replica = replica
        self._config = config
        self._node = node_identity
        self._node_id = node_identity.principal
        self._faults = faults if faults is not None and config.faults.enabled else None
        self._admin = admin
        self._query_delay_s = config.query_delay_ms / 1000
        self._sync_timeout_s = config.sync_call_timeout_ms / 1000
        status: dict[str, object] = {"ic_api_version": IC_API_VERSION, "root_key": root_key_der}
        if config.impl_version is not None:
            status["impl_version"] = config.impl_version
        status["replica_health_status"] = "healthy"
        self._status_body = core.cbor_encode(status)

    # --- routing ----------------------------------------------------------------------------------

    def handle(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s (%d bytes)", request.method, request.path, len(request.body))
        parts = request.path.split("/")
        # "", "api", version, scope, id, kind
        if len(parts) == 6 and parts[1] == "api" and parts[0] == "":
            _, _, version, scope, effective_id, kind = parts
            versions = _ROUTES.get((kind, scope))
            if versions is not None and version in versions:
                if request.method != "POST":
                    return HttpResponse.method_not_allowed("POST")
                if self._faults is not None:
                    fault = self._faults.draw()
                    if fault is not None:
                        return self._faults.respond(fault)
                try:
                    return self._api(
                        request, version, cast(Scope, scope), effective_id, cast(RequestType, kind)
                    )
                except _BadRequest as e:
                    return e.response
        elif request.path == "/api/v2/status":
            if request.method != "GET":
                return HttpResponse.method_not_allowed("GET")
            return HttpResponse(200, self._status_body, CBOR)
        elif len(parts) == 4 and parts[1] == "_" and parts[2] == "candid":
            if request.method != "GET":
                return HttpResponse.method_not_allowed("GET")
            return self._candid(parts[3])
        elif len(parts) == 3 and parts[1] == "_admin" and self._admin is not None:
            return self._admin.handle(request, parts[2])
        return HttpResponse.text(404, f"not found: {request.path}\n")

    def _api(
        self, request: HttpRequest, version: str, scope: Scope, effective_id: str, kind: RequestType
    ) -> HttpResponse | Awaitable[HttpResponse]:
        effective = self._effective_id(scope, effective_id)
        envelope = self._verify(request.body, kind)
        if kind == "call":
            return self._call(envelope, version, scope, effective)
        if kind == "query":
            return self._query(envelope, scope, effective)
        return self._read_state(envelope, version, scope, effective)

    def _effective_id(self, scope: Scope, text: str) -> bytes:
        try:
            effective = core.principal_from_text(text)
        except core.PrincipalError as e:
            raise _BadRequest(400, f"invalid effective {scope} id {text!r}: {e}") from None
        if scope == "subnet" and effective != self._replica.state.subnet.subnet_id:
            raise _BadRequest(
                400,
                f"effective subnet id {text} is not this replica's subnet "
                f"{_text_id(self._replica.state.subnet.subnet_id)}",
            )
        return effective

    def _verify(self, body: bytes, kind: RequestType) -> _Envelope:
        """Authenticate the envelope as the replica does (IC-INTERFACE.md §2); 400 if it fails."""
        try:
            core.verify_envelope(body, self._replica.clock.now_ns())
            envelope = core.cbor_decode(body)
            request_id = core.envelope_request_id(body)
        except core.CoreError as e:
            raise _BadRequest(400, f"invalid {kind} request: {e}") from None
        assert isinstance(envelope, dict)
        content = envelope["content"]
        if content["request_type"] != kind:
            raise _BadRequest(
                400, f"this endpoint takes {kind} requests, not a {content['request_type']} request"
            )
        return _Envelope(request_id, content, envelope.get("sender_delegation") or [])

    def _check_target(self, envelope: _Envelope, scope: Scope, effective: bytes) -> bytes:
        """The content's canister id, checked against the URL's effective id (IC-INTERFACE.md §1)."""
        canister_id: bytes = envelope.content["canister_id"]
        if canister_id == MANAGEMENT_CANISTER:
            return canister_id  # its effective id comes from its argument; it is not emulated anyway
        if scope == "subnet":
            raise _BadRequest(
                400, "subnet-scoped calls and queries are only for the management canister (aaaaa-aa)"
            )
        if canister_id != effective:
            raise _BadRequest(
                400,
                f"Specified CanisterId {_text_id(canister_id)} does not match effective canister id "
                f"in URL {_text_id(effective)}",
            )
        return canister_id

    # --- calls (IC-INTERFACE.md §1) ---------------------------------------------------------------

    def _call(
        self, envelope: _Envelope, version: str, scope: Scope, effective: bytes
    ) -> HttpResponse | Awaitable[HttpResponse]:
        canister_id = self._check_target(envelope, scope, effective)
        content = envelope.content
        canister = self._replica.canisters.get(canister_id)
        if canister is None:
            return self._non_replicated_rejection(version, self._missing_canister(canister_id))
        history = self._replica.history
        if history.get(envelope.request_id) is None:
            # A replay of a known request id is not executed again: it just finds the same status.
            self._replica.submit_call(
                IngressRecord(
                    request_id=envelope.request_id,
                    sender=envelope.sender,
                    canister_id=canister_id,
                    method_name=content["method_name"],
                    arg=content["arg"],
                    ingress_expiry=content["ingress_expiry"],
                )
            )
        if version == "v2":
            return HttpResponse(202)
        return self._sync_call_answer(envelope.request_id)

    async def _sync_call_answer(self, request_id: bytes) -> HttpResponse:
        waiting = self._replica.certified_status(request_id)
        try:
            certificate = await asyncio.wait_for(waiting, self._sync_timeout_s)
        except TimeoutError:
            return HttpResponse(202)
        if certificate is None:
            return HttpResponse(202)
        return _cbor({"status": "replied", "certificate": certificate})

    def _missing_canister(self, canister_id: bytes) -> Reject:
        if canister_id == MANAGEMENT_CANISTER:
            return Reject(
                DESTINATION_INVALID,
                "the emulator has no management canister (aaaaa-aa): canisters cannot be created or managed",
                CANISTER_NOT_FOUND,
            )
        return Reject(DESTINATION_INVALID, f"Canister {_text_id(canister_id)} not found", CANISTER_NOT_FOUND)

    @staticmethod
    def _non_replicated_rejection(version: str, reject: Reject) -> HttpResponse:
        body: dict[str, object] = {}
        if version != "v2":
            body["status"] = "non_replicated_rejection"
        body["reject_code"] = reject.code
        body["reject_message"] = reject.message
        if reject.error_code is not None:
            body["error_code"] = reject.error_code
        return _cbor(body)

    # --- queries (IC-INTERFACE.md §1, §6) ---------------------------------------------------------

    def _query(
        self, envelope: _Envelope, scope: Scope, effective: bytes
    ) -> HttpResponse | Awaitable[HttpResponse]:
        canister_id = self._check_target(envelope, scope, effective)
        content = envelope.content
        method_name: str = content["method_name"]
        canister = self._replica.canisters.get(canister_id)

        def execute() -> HttpResponse:
            outcome: Outcome
            if canister is None:
                outcome = self._missing_canister(canister_id)
            elif canister.method_kind(method_name) != "query":
                outcome = Reject(
                    DESTINATION_INVALID,
                    f"Canister {_text_id(canister_id)} has no query method '{method_name}'",
                    METHOD_NOT_FOUND,
                )
            else:
                outcome = self._replica.run_query(canister, method_name, content["arg"], envelope.sender)
            return self.signed_query_response(envelope.request_id, outcome)

        if self._query_delay_s > 0:
            return self._delayed(execute)
        return self._replica.when_clean(execute)

    async def _delayed(self, execute: Callable[[], HttpResponse]) -> HttpResponse:
        await asyncio.sleep(self._query_delay_s)
        return await _resolved(self._replica.when_clean(execute))

    def signed_query_response(self, request_id: bytes, outcome: Outcome) -> HttpResponse:
        """The query answer with the node's signature over its representation-independent hash."""
        timestamp = self._replica.clock.now_ns()
        signed: dict[str, object]
        body: dict[str, object]
        if isinstance(outcome, Reply):
            reply = {"arg": outcome.arg}
            signed = {"status": "replied", "reply": reply, "timestamp": timestamp, "request_id": request_id}
            body = {"status": "replied", "reply": reply}
        else:
            body = {
                "status": "rejected",
                "reject_code": outcome.code,
                "reject_message": outcome.message,
            }
            if outcome.error_code is not None:
                body["error_code"] = outcome.error_code
            signed = {**body, "timestamp": timestamp, "request_id": request_id}
        signature = self._node.sign(QUERY_RESPONSE_DOMAIN + core.request_id(signed))
        body["signatures"] = [{"timestamp": timestamp, "signature": signature, "identity": self._node_id}]
        return _cbor(body)

    # --- read_state (IC-INTERFACE.md §1, §7) ------------------------------------------------------

    def _read_state(
        self, envelope: _Envelope, version: str, scope: Scope, effective: bytes
    ) -> HttpResponse | Awaitable[HttpResponse]:
        paths: list[list[bytes]] = envelope.content["paths"]
        self._check_delegation_targets(envelope, scope, effective)
        self._check_paths(paths, envelope.sender, version, scope, effective)
        state = self._replica.state
        return self._replica.when_clean(lambda: _cbor({"certificate": state.certificate(paths)}))

    @staticmethod
    def _check_delegation_targets(envelope: _Envelope, scope: Scope, effective: bytes) -> None:
        # verify_envelope checks targets against a call's or query's canister_id; a read_state has
        # none, so its effective canister id must be in every delegation's targets instead.
        if scope != "canister":
            return
        for signed in envelope.delegations:
            targets = signed["delegation"].get("targets")
            if targets is not None and effective not in targets:
                raise _BadRequest(400, f"canister {_text_id(effective)} is not one of the delegation targets")

    def _check_paths(
        self, paths: Sequence[Sequence[bytes]], sender: bytes, version: str, scope: Scope, effective: bytes
    ) -> None:
        """The read_state permission rules of IC-INTERFACE.md §1; raises the replica's answer."""
        subnet_id = self._replica.state.subnet.subnet_id
        request_ids: set[bytes] = set()
        range_subnets: set[bytes] = set()
        for path in paths:
            n = len(path)
            head = path[0] if n else b""
            if (head == b"time" and n == 1) or head == b"api_boundary_nodes":
                continue
            if head == b"subnet" and self._subnet_path_allowed(path, version, scope, effective, subnet_id):
                continue
            if head == b"canister_ranges" and scope == "subnet" and n >= 2:
                range_subnets.add(path[1])
                continue
            if head == b"request_status" and (n == 2 or (n == 3 and path[2] in _REQUEST_STATUS_FIELDS)):
                request_ids.add(path[1])
                self._check_request_status_reader(path[1], sender, scope, effective)
                continue
            if head == b"canister" and (
                (n == 3 and path[2] in _CANISTER_INFO) or (n == 4 and path[2] == b"metadata")
            ):
                if scope != "canister" or path[1] != effective:
                    raise _BadRequest(
                        400,
                        f"Effective principal id in URL {_text_id(effective)} does not match requested "
                        f"principal id: {_text_id(path[1])}",
                    )
                continue
            raise _BadRequest(404, f"Invalid path requested: /{'/'.join(_label_text(x) for x in path)}")
        if len(request_ids) > 1:
            raise _BadRequest(400, "Can only request a single request ID in request_status paths.")
        if len(range_subnets) > 1:
            raise _BadRequest(400, "All /canister_ranges paths of one request must name the same subnet.")

    @staticmethod
    def _subnet_path_allowed(
        path: Sequence[bytes], version: str, scope: Scope, effective: bytes, subnet_id: bytes
    ) -> bool:
        n = len(path)
        if n <= 2:
            return True
        what = path[2]
        if n == 3 and what in (b"public_key", b"type"):
            return True
        if what == b"node":
            return n <= 4 or (n == 5 and path[4] == b"public_key")
        if n == 3 and what == b"canister_ranges":
            return path[1] == subnet_id or version == "v2"
        if n == 3 and what == b"metrics":
            return scope == "subnet" and path[1] == effective
        return False

    def _check_request_status_reader(
        self, request_id: bytes, sender: bytes, scope: Scope, effective: bytes
    ) -> None:
        record = self._replica.history.get(request_id)
        if record is None:
            return  # unknown yet: anybody may see that it is absent
        if record.sender != sender:
            raise _BadRequest(403, "Request IDs must be for requests signed by the caller.")
        if scope == "canister" and record.canister_id != effective:
            raise _BadRequest(
                403,
                f"Request {request_id.hex()} was sent to canister {_text_id(record.canister_id)}, "
                f"not to the effective canister id {_text_id(effective)}",
            )

    # --- the Candid endpoint ------------------------------------------------------------------------

    def _candid(self, text: str) -> HttpResponse:
        try:
            canister_id = core.principal_from_text(text)
        except core.PrincipalError as e:
            return HttpResponse.text(400, f"invalid canister id {text!r}: {e}\n")
        canister = self._replica.canisters.get(canister_id)
        if canister is None:
            return HttpResponse.text(404, f"no canister {text} on this replica\n")
        return HttpResponse(200, canister.candid_interface.encode(), "text/plain; charset=utf-8")


def _label_text(label: bytes) -> str:
    try:
        text = label.decode("ascii")
    except UnicodeDecodeError:
        return label.hex()
    return text if text.isprintable() else label.hex()


async def _resolved(value: T | asyncio.Future[T]) -> T:
    if isinstance(value, asyncio.Future):
        return await value
    return value
