"""`IcAgent` against a scriptable IC endpoint on 127.0.0.1 (real HTTP, real certificates and signatures).

`FakeReplica` answers like a one-subnet replica whose root key it holds: it checks every envelope as the
IC does, runs a tiny canister, certifies request statuses and `/subnet` in hash trees signed with BLS,
and signs query responses with an Ed25519 node key. Knobs make it misbehave (forged certificates, bad
node signatures, missing endpoint versions, errors, hangs), so each failure class can be provoked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from icgw import core
from icgw.ic import (
    MAINNET_ROOT_KEY_DER,
    IcAgent,
    IcHttpError,
    IcProtocolError,
    IcRejectError,
    IcTimeoutError,
    IcTransportError,
    IcVerificationError,
    PollingPolicy,
    Timeouts,
    is_mainnet_url,
)

from ..conftest import load_vector

STATE_ROOT_DOMAIN = b"\x0dic-state-root"
RESPONSE_DOMAIN = b"\x0bic-response"
CANISTER = core.principal_from_text("ivg37-qiaaa-aaaab-aaaga-cai")  # 00000000000000070101
RANGE = (bytes.fromhex("00000000000000000101"), bytes.fromhex("00000000002fffff0101"))
OUTSIDE_CANISTER = bytes.fromhex("00000000003000000101")
FAST_POLLING = PollingPolicy(initial_delay=0.01, multiplier=1.5, max_delay=0.05, deadline=2.0)
MINUTE_NS = 60_000_000_000


# --- building what a replica serves ----------------------------------------------------------------


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def hash_tree(node: dict[bytes, Any] | bytes) -> tuple[Any, ...]:
    """A well-formed hash tree for nested {label: subtree | leaf value}: sorted labels, balanced forks."""
    if isinstance(node, bytes):
        return ("leaf", node)
    labeled = [("labeled", label, hash_tree(child)) for label, child in sorted(node.items())]
    if not labeled:
        return ("empty",)

    def forks(items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        if len(items) == 1:
            return items[0]
        middle = len(items) // 2
        return ("fork", forks(items[:middle]), forks(items[middle:]))

    return forks(labeled)


def certificate(state: dict[bytes, Any], bls_secret: bytes) -> bytes:
    tree = hash_tree(state)
    signature = core.bls_sign(bls_secret, STATE_ROOT_DOMAIN + core.hash_tree_digest(tree))
    tree_value = core.cbor_decode(core.hash_tree_encode(tree, self_describe=False))
    return core.cbor_encode({"tree": tree_value, "signature": signature})


def cbor_response(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=core.cbor_encode(value), content_type="application/cbor")


@dataclass
class RequestLog:
    kind: str
    version: int
    canister: str
    body: bytes
    content: dict[str, Any]
    missing: bool  # answered 404: this endpoint version does not exist here


@dataclass
class FakeReplica:
    """A one-subnet IC endpoint with a small canister.

    Update methods: "echo" replies with its argument; "fail" is rejected (4, IC0503); "refuse" is
    refused before consensus; "slow" answers 202 and completes after `slow_polls` status reads;
    "forever" never completes; "boom" answers HTTP 500. Query methods: "echo", "fail", "hang".
    """

    bls_secret: bytes = bytes(31) + b"\x2a"
    node: core.Ed25519Identity = field(
        default_factory=lambda: core.Ed25519Identity.from_secret_key(b"\x07" * 32)
    )
    canister_ranges: tuple[bytes, bytes] = RANGE
    missing: set[tuple[str, int]] = field(default_factory=set)
    slow_polls: int = 3
    overloaded_answers: int = 0
    hang_seconds: float = 5.0
    time_offset_ns: int = 0
    forge_certificates: bool = False
    query_signer: core.Ed25519Identity | None = None
    query_signature_offset_ns: int = 0
    corrupt_query_signature: bool = False
    canned: dict[str, bytes] = field(default_factory=dict)
    log: list[RequestLog] = field(default_factory=list)
    statuses: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    status_reads: dict[bytes, int] = field(default_factory=dict)

    @property
    def root_key(self) -> bytes:
        return core.bls_der_public_key(core.bls_public_key(self.bls_secret))

    @property
    def subnet_id(self) -> bytes:
        return core.self_authenticating_principal(self.root_key)

    def now_ns(self) -> int:
        return time.time_ns() + self.time_offset_ns

    def requests(self, kind: str) -> list[RequestLog]:
        return [entry for entry in self.log if entry.kind == kind]

    # --- HTTP ----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v2/status", self.status)
        app.router.add_post("/api/v{version:[0-9]+}/canister/{canister}/{kind}", self.canister_endpoint)
        return app

    async def status(self, request: web.Request) -> web.Response:
        if "status" in self.canned:
            return web.Response(body=self.canned["status"], content_type="application/cbor")
        return cbor_response({"ic_api_version": "0.18.0", "root_key": self.root_key})

    async def canister_endpoint(self, request: web.Request) -> web.StreamResponse:
        version, kind = int(request.match_info["version"]), request.match_info["kind"]
        body = await request.read()
        content = core.cbor_decode(body)["content"]
        missing = (kind, version) in self.missing
        self.log.append(RequestLog(kind, version, request.match_info["canister"], body, content, missing))
        if missing:
            return web.Response(status=404, text="not found")
        if self.overloaded_answers > 0:
            self.overloaded_answers -= 1
            return web.Response(status=429, text="rate limited")
        if kind in self.canned:
            return web.Response(body=self.canned[kind], content_type="application/cbor")
        try:
            core.verify_envelope(body, self.now_ns())
        except core.EnvelopeError as e:
            return web.Response(status=400, text=f"invalid envelope: {e}")
        if kind == "call":
            return await self.call(version, content, core.request_id(content))
        if kind == "query":
            return await self.query(content, core.request_id(content))
        return self.read_state(content)

    async def call(self, version: int, content: dict[str, Any], rid: bytes) -> web.Response:
        method = content["method_name"]
        if method == "boom":
            return web.Response(status=500, text="internal error: the replica fell over")
        if method == "refuse":
            rejection: dict[str, object] = {
                "reject_code": 4,
                "reject_message": "inspect_message refused the call",
                "error_code": "IC0406",
            }
            if version == 3:
                rejection["status"] = "non_replicated_rejection"
            return cbor_response(rejection)
        if method == "echo":
            self.statuses[rid] = {b"status": b"replied", b"reply": content["arg"]}
        elif method == "fail":
            self.statuses[rid] = {
                b"status": b"rejected",
                b"reject_code": leb128(4),
                b"reject_message": b"the canister said no",
                b"error_code": b"IC0503",
            }
        elif method in ("slow", "forever"):
            self.statuses[rid] = {b"status": b"received"}
            self.status_reads[rid] = 0 if method == "slow" else -(10**9)
        else:
            return web.Response(status=400, text=f"no update method {method!r}")
        if version == 2 or method in ("slow", "forever"):
            return web.Response(status=202)
        return cbor_response({"status": "replied", "certificate": self.certify_request(rid)})

    async def query(self, content: dict[str, Any], rid: bytes) -> web.Response:
        method = content["method_name"]
        response: dict[str, Any]
        if method == "echo":
            response = {"status": "replied", "reply": {"arg": content["arg"]}}
        elif method == "fail":
            response = {"status": "rejected", "reject_code": 3, "reject_message": "no query method 'fail'"}
        elif method == "hang":
            await asyncio.sleep(self.hang_seconds)
            response = {"status": "replied", "reply": {"arg": b""}}
        else:
            return web.Response(status=400, text=f"no query method {method!r}")
        signer = self.query_signer or self.node
        timestamp = self.now_ns() + self.query_signature_offset_ns
        signature = signer.sign(
            RESPONSE_DOMAIN + core.request_id({**response, "timestamp": timestamp, "request_id": rid})
        )
        if self.corrupt_query_signature:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        response["signatures"] = [
            {"timestamp": timestamp, "signature": signature, "identity": signer.principal}
        ]
        return cbor_response(response)

    def read_state(self, content: dict[str, Any]) -> web.Response:
        state: dict[bytes, Any] = {}
        for path in content["paths"]:
            if path == [b"subnet"]:
                state[b"subnet"] = self.subnet_state()
            elif len(path) == 2 and path[0] == b"request_status":
                rid = path[1]
                if rid in self.statuses:
                    self.advance(rid)
                    state[b"request_status"] = {rid: self.statuses[rid]}
            else:
                return web.Response(status=400, text=f"path {path!r} is not served here")
        return cbor_response({"certificate": self.certify(state)})

    # --- state ---------------------------------------------------------------------------------------

    def advance(self, rid: bytes) -> None:
        """A "slow" call moves to processing, then replies after `slow_polls` reads of its status."""
        if rid not in self.status_reads:
            return
        self.status_reads[rid] += 1
        if self.status_reads[rid] >= self.slow_polls:
            self.statuses[rid] = {b"status": b"replied", b"reply": b"DIDL\x00\x00"}
            del self.status_reads[rid]
        else:
            self.statuses[rid] = {b"status": b"processing"}

    def subnet_state(self) -> dict[bytes, Any]:
        ranges = core.cbor_encode([list(self.canister_ranges)])
        return {
            self.subnet_id: {
                b"canister_ranges": ranges,
                b"public_key": self.root_key,
                b"node": {self.node.principal: {b"public_key": self.node.der_public_key}},
            }
        }

    def certify_request(self, rid: bytes) -> bytes:
        return self.certify({b"request_status": {rid: self.statuses[rid]}})

    def certify(self, state: dict[bytes, Any]) -> bytes:
        state = {**state, b"time": leb128(self.now_ns())}
        # A forger signs with a key of his own: a valid signature, but not under the trusted root key.
        secret = bytes(31) + b"\x2b" if self.forge_certificates else self.bls_secret
        return certificate(state, secret)


@dataclass
class Endpoint:
    replica: FakeReplica
    url: str


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    replica = FakeReplica()
    runner = web.AppRunner(replica.app())
    await runner.setup()
    # A deep accept queue: tests open hundreds of connections at once, and a dropped SYN costs 1 s.
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Endpoint(replica, f"http://{host}:{port}")
    finally:
        await runner.cleanup()


@pytest.fixture
async def agent(endpoint: Endpoint) -> AsyncIterator[IcAgent]:
    async with IcAgent(endpoint.url, polling=FAST_POLLING) as agent:
        yield agent


@pytest.fixture
def identity() -> core.Ed25519Identity:
    return core.Ed25519Identity.from_secret_key(b"\x11" * 32)


def signed_call(identity: core.Ed25519Identity, method: str, arg: bytes = b"DIDL\x00\x00") -> bytes:
    """A call envelope as a client would sign it (the gateway relays such envelopes unchanged)."""
    return core.sign_envelope(
        identity,
        {
            "request_type": "call",
            "sender": identity.principal,
            "nonce": b"\x01" * 16,
            "ingress_expiry": time.time_ns() + 2 * MINUTE_NS,
            "canister_id": CANISTER,
            "method_name": method,
            "arg": arg,
        },
    )


# --- root key --------------------------------------------------------------------------------------


async def test_root_key_of_a_local_endpoint_is_fetched_once(endpoint: Endpoint, agent: IcAgent) -> None:
    assert await agent.fetch_root_key() == endpoint.replica.root_key
    assert await agent.root_key() == endpoint.replica.root_key
    await agent.call(core.Ed25519Identity.generate(), CANISTER, "echo", b"x")
    assert await agent.root_key() == endpoint.replica.root_key


@pytest.mark.parametrize(
    "url",
    [
        "https://icp-api.io",
        "https://icp-api.io/",
        "https://ICP-API.io.",
        "https://ic0.app",
        "https://boundary.ic0.app/",
        "https://icp0.io:443/api",
    ],
)
def test_mainnet_urls_are_recognised_in_any_spelling(url: str) -> None:
    assert is_mainnet_url(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:4943", "http://localhost:8000", "https://icp-api.io.evil.example", "https://xic0.app"],
)
def test_other_urls_are_not_mainnet(url: str) -> None:
    assert not is_mainnet_url(url)


async def test_a_mainnet_url_trusts_the_pinned_key_without_asking_the_network() -> None:
    # Nothing listens on this name from the test; the key must come without any request.
    async with IcAgent("https://icp-api.io/") as agent:
        assert await agent.root_key() == MAINNET_ROOT_KEY_DER


async def test_a_status_without_root_key_is_a_protocol_error(endpoint: Endpoint, agent: IcAgent) -> None:
    endpoint.replica.canned["status"] = core.cbor_encode({"ic_api_version": "0.18.0"})
    with pytest.raises(IcProtocolError, match="no root_key"):
        await agent.root_key()


def test_a_malformed_configured_root_key_is_refused() -> None:
    with pytest.raises(ValueError, match="DER"):
        IcAgent("http://127.0.0.1:1", root_key=b"\x30" * 40)


# --- calls -----------------------------------------------------------------------------------------


async def test_call_returns_the_certified_reply_of_a_synchronous_call(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    assert (
        await agent.call(identity, CANISTER, "echo", b"DIDL\x00\x01\x71\x02hi") == b"DIDL\x00\x01\x71\x02hi"
    )
    (sent,) = endpoint.replica.requests("call")
    assert (sent.version, sent.canister) == (3, "ivg37-qiaaa-aaaab-aaaga-cai")
    assert sent.content["sender"] == identity.principal
    assert len(sent.content["nonce"]) == 16
    expiry_in = sent.content["ingress_expiry"] - time.time_ns()
    assert 3 * MINUTE_NS - 10**9 < expiry_in <= 4 * MINUTE_NS


async def test_each_call_is_a_new_request(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    await agent.call(identity, CANISTER, "echo", b"same")
    await agent.call(identity, CANISTER, "echo", b"same")
    first, second = endpoint.replica.requests("call")
    assert first.content["nonce"] != second.content["nonce"]


async def test_submit_call_relays_the_envelope_byte_for_byte(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    envelope = signed_call(identity, "echo", b"DIDL\x00\x00relayed")
    outcome = await agent.submit_call(CANISTER, envelope)
    assert endpoint.replica.requests("call")[0].body == envelope
    assert outcome.status == "replied"
    assert outcome.reply == b"DIDL\x00\x00relayed"
    assert outcome.request_id == core.envelope_request_id(envelope)
    assert outcome.certificate is not None


async def test_a_certified_reject_raises_with_code_message_and_error_code(
    agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    with pytest.raises(IcRejectError) as caught:
        await agent.call(identity, CANISTER, "fail", b"")
    error = caught.value
    assert (error.code, error.message, error.error_code, error.kind) == (
        4,
        "the canister said no",
        "IC0503",
        "replicated",
    )
    assert not error.retryable


async def test_a_certified_reject_is_an_outcome_of_submit_call(
    agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    outcome = await agent.submit_call(CANISTER, signed_call(identity, "fail"))
    assert (outcome.status, outcome.reject_code, outcome.reject_message, outcome.error_code) == (
        "rejected",
        4,
        "the canister said no",
        "IC0503",
    )


@pytest.mark.parametrize("version", [3, 2])
async def test_a_non_replicated_rejection_is_reported_as_such(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity, version: int
) -> None:
    if version == 2:
        endpoint.replica.missing.add(("call", 3))
    outcome = await agent.submit_call(CANISTER, signed_call(identity, "refuse"))
    assert outcome.status == "non_replicated_rejection"
    assert (outcome.reject_code, outcome.error_code) == (4, "IC0406")
    with pytest.raises(IcRejectError) as caught:
        outcome.reply_or_raise()
    assert caught.value.kind == "non_replicated"
    assert caught.value.message == "inspect_message refused the call"


async def test_v3_call_falls_back_to_v2_and_remembers_it(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.missing.add(("call", 3))
    assert await agent.call(identity, CANISTER, "echo", b"one") == b"one"
    assert await agent.call(identity, CANISTER, "echo", b"two") == b"two"
    calls = [(entry.version, entry.content["arg"]) for entry in endpoint.replica.requests("call")]
    assert calls == [(3, b"one"), (2, b"one"), (2, b"two")]
    # v2 is asynchronous: each outcome came from read_state polling of its request status.
    reads = endpoint.replica.requests("read_state")
    assert {bytes(entry.content["paths"][0][1]) for entry in reads} == {
        core.request_id(entry.content) for entry in endpoint.replica.requests("call")
    }


async def test_a_202_is_followed_by_read_state_polling_until_the_reply(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.slow_polls = 4
    assert await agent.call(identity, CANISTER, "slow", b"") == b"DIDL\x00\x00"
    reads = endpoint.replica.requests("read_state")
    assert len(reads) == 4
    # The IC shows a request's status to its sender only, so the polls are signed by the caller.
    assert all(entry.content["sender"] == identity.principal for entry in reads)


async def test_polling_gives_up_at_the_deadline(endpoint: Endpoint, identity: core.Ed25519Identity) -> None:
    policy = PollingPolicy(initial_delay=0.01, multiplier=1.0, max_delay=0.01, deadline=0.3)
    async with IcAgent(endpoint.url, polling=policy) as agent:
        started = time.monotonic()
        with pytest.raises(IcTimeoutError, match="no final status"):
            await agent.call(identity, CANISTER, "forever", b"")
        assert 0.3 <= time.monotonic() - started < 2.0
    assert len(endpoint.replica.requests("read_state")) >= 5


async def test_a_relayed_call_of_another_sender_is_accepted_without_polling(
    endpoint: Endpoint, agent: IcAgent
) -> None:
    client = core.Ed25519Identity.from_secret_key(b"\x22" * 32)
    outcome = await agent.submit_call(CANISTER, signed_call(client, "slow"))
    assert outcome.status == "accepted"
    assert endpoint.replica.requests("read_state") == []
    with pytest.raises(IcProtocolError, match="no reply"):
        outcome.reply_or_raise()


async def test_an_anonymous_relayed_call_is_awaited_with_anonymous_polls(
    endpoint: Endpoint, agent: IcAgent
) -> None:
    content = {
        "request_type": "call",
        "sender": core.ANONYMOUS,
        "nonce": b"\x02" * 16,
        "ingress_expiry": time.time_ns() + 2 * MINUTE_NS,
        "canister_id": CANISTER,
        "method_name": "slow",
        "arg": b"",
    }
    outcome = await agent.submit_call(CANISTER, core.cbor_encode({"content": content}))
    assert outcome.status == "replied"
    reads = endpoint.replica.requests("read_state")
    assert reads
    assert {entry.content["sender"] for entry in reads} == {core.ANONYMOUS}


async def test_submit_call_polls_as_the_sender_when_given_its_identity(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    outcome = await agent.submit_call(CANISTER, signed_call(identity, "slow"), read_state_identity=identity)
    assert outcome.status == "replied"
    with pytest.raises(ValueError, match="not the sender"):
        await agent.submit_call(
            CANISTER, signed_call(identity, "slow"), read_state_identity=core.Ed25519Identity.generate()
        )


async def test_submit_call_without_wait_returns_at_acceptance(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    outcome = await agent.submit_call(CANISTER, signed_call(identity, "slow"), wait=False)
    assert outcome.status == "accepted"
    assert endpoint.replica.requests("read_state") == []


async def test_a_server_error_raises_with_status_and_body(
    agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    with pytest.raises(IcHttpError) as caught:
        await agent.call(identity, CANISTER, "boom", b"")
    assert caught.value.status == 500
    assert caught.value.body == "internal error: the replica fell over"
    assert caught.value.retryable


async def test_a_client_error_is_not_retryable(agent: IcAgent, identity: core.Ed25519Identity) -> None:
    with pytest.raises(IcHttpError) as caught:
        await agent.call(identity, CANISTER, "no_such_method", b"")
    assert caught.value.status == 400
    assert "no update method" in caught.value.body
    assert not caught.value.retryable


async def test_a_rate_limited_call_is_sent_again(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.overloaded_answers = 2
    assert await agent.call(identity, CANISTER, "echo", b"x") == b"x"
    bodies = [entry.body for entry in endpoint.replica.requests("call")]
    assert len(bodies) == 3
    assert len(set(bodies)) == 1


async def test_a_forged_call_certificate_is_rejected(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.forge_certificates = True
    with pytest.raises(IcVerificationError, match="certificate"):
        await agent.call(identity, CANISTER, "echo", b"x")


async def test_a_stale_certificate_is_rejected(endpoint: Endpoint, identity: core.Ed25519Identity) -> None:
    async with IcAgent(endpoint.url, root_key=endpoint.replica.root_key) as agent:
        endpoint.replica.time_offset_ns = -10 * MINUTE_NS  # the replica's state is ten minutes old
        # Its envelope check then sees our expiry as too far ahead; only the certificate matters here.
        endpoint.replica.canned["call"] = core.cbor_encode(
            {"status": "replied", "certificate": endpoint.replica.certify({})}
        )
        with pytest.raises(IcVerificationError, match="certificate"):
            await agent.submit_call(CANISTER, signed_call(identity, "echo"))


# --- read_state ------------------------------------------------------------------------------------


async def test_read_state_returns_a_verified_certificate(endpoint: Endpoint, agent: IcAgent) -> None:
    cert = await agent.read_state(None, CANISTER, [[b"subnet"]])
    tree = core.cbor_encode(core.cbor_decode(cert)["tree"])
    path = [b"subnet", endpoint.replica.subnet_id, b"node", endpoint.replica.node.principal, b"public_key"]
    assert core.lookup_path(tree, path) == ("found", endpoint.replica.node.der_public_key)
    (sent,) = endpoint.replica.requests("read_state")
    assert sent.content["sender"] == core.ANONYMOUS
    assert "sender_sig" not in core.cbor_decode(sent.body)


async def test_read_state_with_a_forged_certificate_is_rejected(endpoint: Endpoint, agent: IcAgent) -> None:
    endpoint.replica.forge_certificates = True
    with pytest.raises(IcVerificationError):
        await agent.read_state(None, CANISTER, [[b"subnet"]])


async def test_read_state_falls_back_to_v3(endpoint: Endpoint, agent: IcAgent) -> None:
    endpoint.replica.missing.add(("read_state", 2))
    await agent.read_state(core.Ed25519Identity.generate(), CANISTER, [[b"subnet"]])
    await agent.read_state(None, CANISTER, [[b"subnet"]])
    assert [entry.version for entry in endpoint.replica.requests("read_state")] == [2, 3, 3]


# --- queries ---------------------------------------------------------------------------------------


async def test_a_query_reply_is_checked_against_the_certified_node_key(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    assert await agent.query(identity, CANISTER, "echo", b"DIDL\x00\x00a") == b"DIDL\x00\x00a"
    assert await agent.query(identity, CANISTER, "echo", b"DIDL\x00\x00b") == b"DIDL\x00\x00b"
    # The node keys were read once (anonymously, through the canister's endpoint) and then cached.
    (subnet_read,) = endpoint.replica.requests("read_state")
    assert subnet_read.content["paths"] == [[b"subnet"]]
    assert [entry.version for entry in endpoint.replica.requests("query")] == [2, 2]


async def test_a_query_reject_raises(agent: IcAgent, identity: core.Ed25519Identity) -> None:
    with pytest.raises(IcRejectError) as caught:
        await agent.query(identity, CANISTER, "fail", b"")
    assert (caught.value.code, caught.value.kind, caught.value.error_code) == (3, "query", None)
    assert caught.value.message == "no query method 'fail'"


async def test_a_bad_node_signature_is_rejected(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.corrupt_query_signature = True
    with pytest.raises(IcVerificationError, match="invalid"):
        await agent.query(identity, CANISTER, "echo", b"")


async def test_a_signature_by_a_node_outside_the_subnet_is_rejected_after_one_refetch(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    await agent.query(identity, CANISTER, "echo", b"")  # caches the subnet's node keys
    endpoint.replica.query_signer = core.Ed25519Identity.from_secret_key(b"\x66" * 32)
    with pytest.raises(IcVerificationError, match="not a node of subnet"):
        await agent.query(identity, CANISTER, "echo", b"")
    with pytest.raises(IcVerificationError, match="not a node of subnet"):
        await agent.query(identity, CANISTER, "echo", b"")
    # The first query fetched the keys; the cache was fresh, so unknown nodes did not refetch them.
    assert len(endpoint.replica.requests("read_state")) == 1


async def test_a_new_node_is_found_by_refetching_the_keys(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("icgw.ic.agent.NODE_KEYS_MIN_REFETCH_S", 0.0)
    await agent.query(identity, CANISTER, "echo", b"")
    endpoint.replica.node = core.Ed25519Identity.from_secret_key(b"\x77" * 32)  # the subnet's node changed
    assert await agent.query(identity, CANISTER, "echo", b"x") == b"x"
    assert len(endpoint.replica.requests("read_state")) == 2


async def test_query_signatures_can_be_skipped(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.corrupt_query_signature = True
    assert await agent.query(identity, CANISTER, "echo", b"x", verify_signature=False) == b"x"
    assert endpoint.replica.requests("read_state") == []


async def test_an_old_query_signature_is_rejected(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.query_signature_offset_ns = -6 * MINUTE_NS
    with pytest.raises(IcVerificationError, match="not recent"):
        await agent.query(identity, CANISTER, "echo", b"")


async def test_a_query_without_signatures_is_rejected(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.canned["query"] = core.cbor_encode(
        {"status": "replied", "reply": {"arg": b""}, "signatures": []}
    )
    with pytest.raises(IcVerificationError, match="no node signature"):
        await agent.query(identity, CANISTER, "echo", b"")


async def test_a_canister_outside_the_root_subnet_ranges_is_rejected(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    with pytest.raises(IcVerificationError, match="outside the ranges"):
        await agent.query(identity, OUTSIDE_CANISTER, "echo", b"")


async def test_an_idle_poll_reuses_its_signed_envelope_within_the_minute(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    before = time.time_ns()
    for arg in (b"nonce 0", b"nonce 0", b"nonce 1"):
        await agent.query(identity, CANISTER, "echo", arg)
    after = time.time_ns()
    first, second, third = (entry.body for entry in endpoint.replica.requests("query"))
    if before // MINUTE_NS == after // MINUTE_NS:  # the expiry (rounded to the minute) did not change
        assert first == second
    assert third != second


async def test_query_falls_back_to_v3(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.missing.add(("query", 2))
    assert await agent.query(identity, CANISTER, "echo", b"1") == b"1"
    assert await agent.query(identity, CANISTER, "echo", b"2") == b"2"
    assert [entry.version for entry in endpoint.replica.requests("query")] == [2, 3, 3]


async def test_a_hanging_query_times_out(endpoint: Endpoint, identity: core.Ed25519Identity) -> None:
    endpoint.replica.hang_seconds = 1.0
    async with IcAgent(endpoint.url, timeouts=Timeouts(query=0.2)) as agent:
        started = time.monotonic()
        with pytest.raises(IcTimeoutError) as caught:
            await agent.query(identity, CANISTER, "hang", b"", verify_signature=False)
        assert time.monotonic() - started < 1.5
        assert caught.value.retryable
        assert isinstance(caught.value, TimeoutError)


async def test_an_unreachable_endpoint_is_a_transport_error(identity: core.Ed25519Identity) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with IcAgent(f"http://127.0.0.1:{port}", root_key=MAINNET_ROOT_KEY_DER) as agent:
        with pytest.raises(IcTransportError) as caught:
            await agent.query(identity, CANISTER, "echo", b"", verify_signature=False)
    assert caught.value.retryable
    assert not isinstance(caught.value, IcTimeoutError)


async def test_an_undecodable_response_is_a_protocol_error(
    endpoint: Endpoint, agent: IcAgent, identity: core.Ed25519Identity
) -> None:
    endpoint.replica.canned["query"] = b"<html>502 Bad Gateway</html>"
    with pytest.raises(IcProtocolError, match="CBOR"):
        await agent.query(identity, CANISTER, "echo", b"")


async def test_an_oversized_response_is_refused(endpoint: Endpoint, identity: core.Ed25519Identity) -> None:
    endpoint.replica.canned["query"] = core.cbor_encode({"status": "replied", "reply": {"arg": bytes(4096)}})
    async with IcAgent(endpoint.url, max_response_bytes=1024) as agent:
        with pytest.raises(IcProtocolError, match="limit"):
            await agent.query(identity, CANISTER, "echo", b"", verify_signature=False)


async def test_a_closed_agent_refuses_requests(endpoint: Endpoint, identity: core.Ed25519Identity) -> None:
    agent = IcAgent(endpoint.url)
    await agent.query(identity, CANISTER, "echo", b"", verify_signature=False)
    await agent.close()
    with pytest.raises(RuntimeError, match="closed"):
        await agent.query(identity, CANISTER, "echo", b"", verify_signature=False)


async def test_many_concurrent_queries_share_the_pool(endpoint: Endpoint, agent: IcAgent) -> None:
    identities = [core.Ed25519Identity.generate() for _ in range(8)]
    replies = await asyncio.gather(
        *(agent.query(identities[i % 8], CANISTER, "echo", b"%d" % i) for i in range(200))
    )
    assert replies == [b"%d" % i for i in range(200)]
    # Concurrent first queries share one fetch of the node keys.
    assert len(endpoint.replica.requests("read_state")) == 1


# --- interoperability: published synthetic vectors -------------------------------------------------


def synthetic() -> dict[str, Any]:
    return load_vector("synthetic_emulator_vectors.json")  # type: ignore[no-any-return]


def vector_clock(vectors: dict[str, Any]) -> Callable[[], int]:
    """A clock shortly after the vectors were made, so their certificates and signatures are fresh."""
    signed_at = int(vectors["synthetic_subnet_certificate"]["time_ns"])
    return lambda: signed_at + 30 * 10**9


async def test_a_published_node_signed_query_response_verifies(endpoint: Endpoint) -> None:
    vectors = synthetic()
    queries = vectors["query_response_signatures"]
    call_vector = vectors["synthetic_call_certificate"]
    endpoint.replica.canned.update(
        status=bytes.fromhex(
            call_vector["status_response_body_cbor_hex (GET /api/v2/status of such an emulator)"]
        ),
        read_state=bytes.fromhex(
            vectors["synthetic_subnet_certificate"]["read_state_response_body_cbor_hex"]
        ),
        query=bytes.fromhex(queries["replied"]["full_query_response_body_cbor_hex"]),
    )
    q = queries["query_content"]
    content = {
        "request_type": "query",
        "sender": bytes.fromhex(q["sender_hex"]),
        "ingress_expiry": int(q["ingress_expiry"]),
        "canister_id": core.principal_from_text(q["canister_id"]),
        "method_name": q["method_name"],
        "arg": bytes.fromhex(q["arg_hex"]),
    }
    envelope = core.cbor_encode({"content": content})
    assert core.envelope_request_id(envelope).hex() == queries["request_id_hex"]
    async with IcAgent(endpoint.url, clock=vector_clock(vectors)) as agent:
        assert await agent.root_key() == bytes.fromhex(vectors["keys"]["emulator_root_key_der_hex"])
        reply = await agent.submit_query(content["canister_id"], envelope)
        assert reply.hex() == queries["replied"]["reply_arg_hex"]
        # The same bytes answer a different request: its signature cannot match.
        other = core.cbor_encode({"content": {**content, "arg": b"DIDL\x00\x00"}})
        with pytest.raises(IcVerificationError, match="invalid"):
            await agent.submit_query(content["canister_id"], other)


async def test_a_published_synchronous_call_certificate_verifies(endpoint: Endpoint) -> None:
    vectors = synthetic()
    call_vector = vectors["synthetic_call_certificate"]
    endpoint.replica.canned["call"] = bytes.fromhex(call_vector["v3_call_response_body_cbor_hex"])
    c = call_vector["call_content"]
    content = {
        "request_type": "call",
        "sender": bytes.fromhex(c["sender_hex"]),
        "nonce": bytes.fromhex(c["nonce_hex"]),
        "ingress_expiry": int(c["ingress_expiry"]),
        "canister_id": core.principal_from_text(c["canister_id"]),
        "method_name": c["method_name"],
        "arg": bytes.fromhex(c["arg_hex"]),
    }
    envelope = core.cbor_encode({"content": content})
    root_key = bytes.fromhex(vectors["keys"]["emulator_root_key_der_hex"])
    async with IcAgent(endpoint.url, root_key=root_key, clock=vector_clock(vectors)) as agent:
        outcome = await agent.submit_call(content["canister_id"], envelope)
    assert outcome.request_id.hex() == call_vector["request_id_hex"]
    assert outcome.status == "replied"
    assert outcome.reply is not None
    assert outcome.reply.hex() == call_vector["expected_lookups"]["request_status/<rid>/reply"]
    # Against any other root key, the same response is a forgery.
    async with IcAgent(
        endpoint.url, root_key=endpoint.replica.root_key, clock=vector_clock(vectors)
    ) as agent:
        with pytest.raises(IcVerificationError):
            await agent.submit_call(content["canister_id"], envelope)


async def test_node_keys_of_an_application_subnet_come_from_its_delegated_certificate(
    endpoint: Endpoint,
) -> None:
    # A real mainnet answer to read_state ["subnet"] through canister 224od: a certificate delegated
    # to subnet o3ow2, whose 13 node keys it carries. No published query response goes with it, so
    # the query responses are made here: one by a node of o3ow2 (its key is found, the forged
    # signature fails) and one by a node of another subnet (unknown to o3ow2).
    vector = load_vector("cert_mainnet_224od_subnet_v3_2025.json")
    o3ow2 = vector["expected"]["delegation"]["subnet_id"]
    canister = core.principal_from_text(vector["expected"]["accept_for_effective_canister_ids"][0])
    endpoint.replica.canned["read_state"] = bytes.fromhex(vector["response_body_hex"])

    def response_signed_by(node: str) -> bytes:
        signature = {"timestamp": 1, "signature": bytes(64), "identity": core.principal_from_text(node)}
        return core.cbor_encode(
            {"status": "replied", "reply": {"arg": b"DIDL\x00\x00"}, "signatures": [signature]}
        )

    # The certificate is from 2025: its freshness cannot be checked, its signatures can.
    async with IcAgent(endpoint.url, root_key=MAINNET_ROOT_KEY_DER, certificate_max_age_ns=None) as agent:
        endpoint.replica.canned["query"] = response_signed_by(
            "5jbfj-wygyf-jzcjw-s6ali-nlazr-nbejd-sfw6h-v44fg-hh34c-khde2-lqe"
        )
        with pytest.raises(IcVerificationError, match=r"signature of node 5jbfj-.*(invalid|malformed)"):
            await agent.query(None, canister, "ws_get_messages", b"DIDL\x00\x00")
        endpoint.replica.canned["query"] = response_signed_by(
            "oo4np-rrvnz-5vram-kglex-enhkp-uew6q-vdf6z-whj4x-v44jd-tebaw-nqe"
        )
        with pytest.raises(IcVerificationError, match=f"not a node of subnet {o3ow2}"):
            await agent.query(None, canister, "ws_get_messages", b"DIDL\x00\x00")
        # The same certificate does not vouch for a canister outside the delegation's ranges.
        outside = core.principal_from_text(vector["expected"]["reject_for_effective_canister_ids"][0])
        with pytest.raises(IcVerificationError, match="certificate"):
            await agent.query(None, outside, "ws_get_messages", b"DIDL\x00\x00")
    assert len(endpoint.replica.requests("read_state")) == 2
