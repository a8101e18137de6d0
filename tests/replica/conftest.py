"""Fixtures for the replica side: an echo canister, a replica on loopback and a small test agent.

The echo canister implements `HostedCanister` directly, so these tests exercise the replica's HTTP
interface, authentication and certification without the CDK. Its methods take and return Candid
`text` (or raw bytes where noted):

- `greet` (query): "Hello, <name>" (the synthetic vectors' method)
- `echo` (update): the argument bytes unchanged
- `set_data` (update): certified_data = sha256(argument); replies the digest
- `data_certificate` (query): the data certificate the replica gives the canister
- `reject` (update and query via `reject_query`): a canister reject (code 4, IC0406)
- `trap` (update): raises, as a panicking canister would
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest

from icgw import core
from icgw.replica import Replica, merkle
from icgw.replica.clock import ManualClock
from icgw.replica.config import ReplicaConfig
from icgw.replica.interfaces import CanisterHost, HostedCanister, MethodKind, Outcome, Reject, Reply

from ..conftest import load_vector

SYNTHETIC = load_vector("synthetic_emulator_vectors.json")
KEYS = SYNTHETIC["keys"]
VECTOR_ROOT_SECRET = bytes.fromhex(
    KEYS["emulator_root_bls_secret_hex (from verify-bls-signatures test generates_expected_signature)"]
)
VECTOR_NODE_SECRET = bytes.fromhex(KEYS["node_ed25519_secret_hex (RFC 8032 test 1)"])
VECTOR_USER_SECRET = bytes.fromhex(KEYS["user_ed25519_secret_hex (RFC 8032 test 2)"])
VECTOR_CANISTER = core.principal_from_text("ivg37-qiaaa-aaaab-aaaga-cai")

MINUTE_NS = 60 * 1_000_000_000
ANONYMOUS = b"\x04"
REQUEST_DOMAIN = b"\x0aic-request"
RESPONSE_DOMAIN = b"\x0bic-response"
DELEGATION_DOMAIN = b"\x1aic-request-auth-delegation"

CANDID_TEXT_HEADER = b"DIDL\x00\x01\x71"


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def candid_text(text: str) -> bytes:
    """`("text")` in Candid: the one encoding these tests need."""
    data = text.encode()
    return CANDID_TEXT_HEADER + _leb128(len(data)) + data


def decode_candid_text(arg: bytes) -> str:
    if not arg.startswith(CANDID_TEXT_HEADER):
        raise ValueError("not a Candid text argument")
    rest = arg[len(CANDID_TEXT_HEADER) :]
    length, shift, i = 0, 0, 0
    while True:
        byte = rest[i]
        length |= (byte & 0x7F) << shift
        shift, i = shift + 7, i + 1
        if not byte & 0x80:
            break
    return rest[i : i + length].decode()


class EchoCanister:
    """A `HostedCanister` for replica tests; counts how often each update ran."""

    METHODS: Mapping[str, MethodKind] = {
        "greet": "query",
        "echo": "update",
        "set_data": "update",
        "data_certificate": "query",
        "reject": "update",
        "reject_query": "query",
        "trap": "update",
    }

    def __init__(self, canister_id: bytes, host: CanisterHost) -> None:
        self._canister_id = canister_id
        self._host = host
        self._certified_data = b""
        self.update_calls: list[tuple[str, bytes, bytes]] = []

    @property
    def canister_id(self) -> bytes:
        return self._canister_id

    @property
    def certified_data(self) -> bytes:
        return self._certified_data

    @property
    def candid_interface(self) -> str:
        return "service : {\n  greet : (text) -> (text) query;\n  echo : (blob) -> (blob);\n}\n"

    def method_kind(self, method_name: str) -> MethodKind | None:
        return self.METHODS.get(method_name)

    def handle_update(self, method_name: str, arg: bytes, caller: bytes) -> Outcome:
        self.update_calls.append((method_name, arg, caller))
        if method_name == "greet":  # a query method called as an update runs replicated
            return self.handle_query(method_name, arg, caller)
        if method_name == "echo":
            return Reply(arg)
        if method_name == "set_data":
            self._certified_data = hashlib.sha256(arg).digest()
            self._host.certified_data_changed(self._canister_id)
            return Reply(self._certified_data)
        if method_name == "reject":
            return Reject(4, "no", "IC0406")
        if method_name == "trap":
            raise RuntimeError("boom")
        raise AssertionError(f"the replica called an unknown update {method_name}")

    def handle_query(self, method_name: str, arg: bytes, caller: bytes) -> Outcome:
        if method_name == "greet":
            return Reply(candid_text(f"Hello, {decode_candid_text(arg)}"))
        if method_name == "data_certificate":
            return Reply(self._host.data_certificate(self._canister_id))
        if method_name == "reject_query":
            return Reject(4, "no", "IC0406")
        raise AssertionError(f"the replica called an unknown query {method_name}")


def echo_canister_id(index: int) -> bytes:
    return (0x10 + index).to_bytes(8, "big") + b"\x01\x01"


@dataclass
class EchoCanisters:
    """A canister factory that remembers what it made."""

    ids: Callable[[int], bytes] = echo_canister_id
    made: dict[bytes, EchoCanister] = field(default_factory=dict)

    def __call__(self, index: int, host: CanisterHost) -> HostedCanister:
        canister = EchoCanister(self.ids(index), host)
        self.made[canister.canister_id] = canister
        return canister


def make_config(**overrides: Any) -> ReplicaConfig:
    return replace(ReplicaConfig(port=0, round_ms=2.0), **overrides)


@dataclass
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def cbor(self) -> dict[str, Any]:
        assert self.body.startswith(b"\xd9\xd9\xf7"), f"not tagged CBOR: {self.status} {self.body[:80]!r}"
        value = core.cbor_decode(self.body)
        assert isinstance(value, dict)
        return value

    @property
    def text(self) -> str:
        return self.body.decode()


class TestAgent:
    """Builds envelopes the way agents do and posts them to a replica."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, replica: Replica, session: aiohttp.ClientSession) -> None:
        self.replica = replica
        self.session = session

    @property
    def now_ns(self) -> int:
        return self.replica.clock.now_ns()

    def content(
        self,
        request_type: str,
        sender: bytes = ANONYMOUS,
        *,
        expiry_ns: int | None = None,
        nonce: bytes | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        content: dict[str, Any] = {
            "request_type": request_type,
            "sender": sender,
            "ingress_expiry": self.now_ns + 3 * MINUTE_NS if expiry_ns is None else expiry_ns,
        }
        if nonce is not None:
            content["nonce"] = nonce
        content.update(fields)
        return content

    def envelope(self, content: Mapping[str, Any], identity: core.Ed25519Identity | None = None) -> bytes:
        if identity is None:
            return core.cbor_encode({"content": dict(content)})
        return core.sign_envelope(identity, content)

    async def post(self, path: str, body: bytes) -> Response:
        async with self.session.post(
            self.replica.url + path, data=body, headers={"Content-Type": "application/cbor"}
        ) as r:
            return Response(r.status, await r.read(), dict(r.headers))

    async def get(self, path: str) -> Response:
        async with self.session.get(self.replica.url + path) as r:
            return Response(r.status, await r.read(), dict(r.headers))

    async def call(
        self,
        canister_id: bytes,
        method: str,
        arg: bytes = b"",
        *,
        version: str = "v3",
        identity: core.Ed25519Identity | None = None,
        nonce: bytes | None = None,
        expiry_ns: int | None = None,
    ) -> tuple[bytes, Response]:
        """(request id, response) of an update call."""
        sender = ANONYMOUS if identity is None else identity.principal
        content = self.content(
            "call",
            sender,
            nonce=nonce,
            expiry_ns=expiry_ns,
            canister_id=canister_id,
            method_name=method,
            arg=arg,
        )
        body = self.envelope(content, identity)
        text = core.principal_to_text(canister_id)
        return core.request_id(content), await self.post(f"/api/{version}/canister/{text}/call", body)

    async def query(
        self,
        canister_id: bytes,
        method: str,
        arg: bytes = b"",
        *,
        version: str = "v2",
        identity: core.Ed25519Identity | None = None,
    ) -> tuple[bytes, Response]:
        sender = ANONYMOUS if identity is None else identity.principal
        content = self.content("query", sender, canister_id=canister_id, method_name=method, arg=arg)
        body = self.envelope(content, identity)
        text = core.principal_to_text(canister_id)
        return core.request_id(content), await self.post(f"/api/{version}/canister/{text}/query", body)

    async def read_state(
        self,
        effective_id: bytes,
        paths: list[list[bytes]],
        *,
        version: str = "v2",
        scope: str = "canister",
        identity: core.Ed25519Identity | None = None,
    ) -> Response:
        sender = ANONYMOUS if identity is None else identity.principal
        body = self.envelope(self.content("read_state", sender, paths=paths), identity)
        text = core.principal_to_text(effective_id)
        return await self.post(f"/api/{version}/{scope}/{text}/read_state", body)


def certificate_tree(certificate: bytes) -> bytes:
    """The certificate's hash tree as CBOR, for `core.lookup_path`."""
    decoded = core.cbor_decode(certificate)
    assert isinstance(decoded, dict)
    return core.cbor_encode(decoded["tree"])


def _tuple_tree(node: Any) -> tuple[Any, ...]:
    kind = node[0]
    if kind == 1:
        return ("fork", _tuple_tree(node[1]), _tuple_tree(node[2]))
    if kind == 2:
        return ("labeled", node[1], _tuple_tree(node[2]))
    return {0: ("empty",), 3: ("leaf", *node[1:]), 4: ("pruned", *node[1:])}[kind]


def check_well_formed(certificate: bytes) -> None:
    """Raise unless the certificate's tree is one a replica produces: sorted labels, no Empty in a Fork."""
    decoded = core.cbor_decode(certificate)
    assert isinstance(decoded, dict)
    merkle.check_well_formed(_tuple_tree(decoded["tree"]))


def lookup(certificate: bytes, *path: bytes) -> tuple[str, bytes | None]:
    return core.lookup_path(certificate_tree(certificate), list(path))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def echo_canisters() -> EchoCanisters:
    return EchoCanisters()


@pytest.fixture
def replica_config() -> ReplicaConfig:
    return make_config()


@pytest.fixture
async def replica(
    replica_config: ReplicaConfig, echo_canisters: EchoCanisters, clock: ManualClock
) -> AsyncIterator[Replica]:
    replica = Replica(replica_config, canister_factory=echo_canisters, clock=clock)
    await replica.start()
    try:
        yield replica
    finally:
        await replica.stop()


@pytest.fixture
async def agent(replica: Replica) -> AsyncIterator[TestAgent]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield TestAgent(replica, session)
