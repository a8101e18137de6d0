"""The CDK canister, called with Candid as a replica would: the CDK integration suite (PROTOCOL.md §11
a-h) and the CDK unit-test facts, for the Rust and the Motoko flavour.

The suite runs over two transports (the `transport` fixture): "in-process" calls the canister's
methods directly on a fake host; "http" starts a `Replica` on loopback and sends every call as a signed
envelope through `IcAgent`, with canister time moved by the replica's admin endpoint (`HttpDriver`).
Tests of the canister's own machinery (Candid ABI, traps at install, the flavours side by side) run
in process only.

Every `ws_get_messages` reply is checked the way the SDK checks what it receives: a real BLS-signed
certificate over the canister's certified data, the witness in `tree` reconstructing to that data, and
`websocket/<key>` holding the SHA-256 of the message content; over HTTP, each batch also passes
`MessagesBatch.verify` against the replica's root key, as the gateway checks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import cbor2
import pytest

from icgw.core import (
    ANONYMOUS,
    bls_der_public_key,
    bls_public_key,
    bls_sign,
    candid_encode_values,
    hash_tree_digest,
    hash_tree_root,
    lookup_path,
    principal_from_text,
    principal_to_text,
    verify_certificate,
)
from icgw.replica import ReplicaConfig
from icgw.replica.apps import WsApp, candid_method, load_app
from icgw.replica.canister import Canister, canister_id_for_index, render_candid_interface
from icgw.replica.cdk import (
    CLIENT_KEEP_ALIVE_TIMEOUT_MS,
    DEFAULT_MAX_NUMBER_OF_RETURNED_MESSAGES,
    DEFAULT_SEND_ACK_INTERVAL_MS,
    CanisterTrap,
    ClientKey,
    Flavor,
    GatewayQueue,
    IncomingMessage,
    QueuedMessage,
    WebSocketCdk,
    WsInitParams,
    decode_service_message,
    encode_service_message,
)
from icgw.replica.clock import CanisterClock, ManualClock, RealClock
from icgw.replica.interfaces import CANISTER_ERROR, DESTINATION_INVALID, CanisterHost, Reject, Reply
from icgw.replica.merkle import CertifiedMap, labeled_hash
from icgw.replica.test_canister import (
    CANDID_INTERFACE_PATH,
    CallRejected,
    InProcessDriver,
    SilentTestCanister,
    TestCanister,
    TestCanisterCalls,
    TestCanisterDriver,
    decode_app_message,
    encode_app_message,
)

from .http_driver import HttpDriver, Signers

# Every caller of the suite has a key, so that over HTTP its calls can be signed. (The CDK suite's own
# principals, PROTOCOL.md §8, are bare principals that PocketIC accepts unsigned.)
SIGNERS = Signers()
GATEWAY_1 = SIGNERS.principal(b"gateway 1")
GATEWAY_2 = SIGNERS.principal(b"gateway 2")
CLIENT_1 = SIGNERS.principal(b"client 1")
CLIENT_2 = SIGNERS.principal(b"client 2")
CLIENT_1_KEY = ClientKey(CLIENT_1, 1)
CLIENT_2_KEY = ClientKey(CLIENT_2, 2)

T_MS = DEFAULT_SEND_ACK_INTERVAL_MS
KEEP_ALIVE_MS = CLIENT_KEEP_ALIVE_TIMEOUT_MS
START_NS = 1_717_171_717_000_000_000
MS = 1_000_000
EMPTY_RESULT = {"messages": [], "cert": b"", "tree": b"", "is_end_of_queue": True}


def text(principal: bytes) -> str:
    return principal_to_text(principal)


def random_principal(rng: random.Random) -> bytes:
    """A new self-authenticating principal whose key the HTTP driver can sign with."""
    return SIGNERS.principal(rng.randbytes(32))


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def cbor_tree(tree: tuple[Any, ...]) -> list[Any]:
    tags = {"empty": 0, "fork": 1, "labeled": 2, "leaf": 3, "pruned": 4}
    return [tags[tree[0]], *(cbor_tree(part) if isinstance(part, tuple) else part for part in tree[1:])]


class FakeHost:
    """A replica reduced to what a canister asks of it; certificates are real and BLS-signed."""

    def __init__(self, clock: CanisterClock) -> None:
        self.clock = clock
        self.canisters: dict[bytes, Canister] = {}
        self.certified_data_changes = 0
        self.secret_key = (0x1C_DC_E0_01).to_bytes(32, "big")
        self.root_key_der = bls_der_public_key(bls_public_key(self.secret_key))

    def certified_data_changed(self, canister_id: bytes) -> None:
        assert canister_id in self.canisters
        self.certified_data_changes += 1

    def data_certificate(self, canister_id: bytes) -> bytes:
        certified_data = self.canisters[canister_id].certified_data
        state = (
            "fork",
            (
                "labeled",
                b"canister",
                ("labeled", canister_id, ("labeled", b"certified_data", ("leaf", certified_data))),
            ),
            ("labeled", b"time", ("leaf", leb128(self.clock.now_ns()))),
        )
        signature = bls_sign(self.secret_key, b"\x0dic-state-root" + hash_tree_digest(state))
        return cbor2.dumps(cbor2.CBORTag(55799, {"tree": cbor_tree(state), "signature": signature}))


class RecordingApp(SilentTestCanister):
    """The silent test canister, recording its callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bytes]] = []

    def on_open(self, client_principal: bytes) -> None:
        self.events.append(("open", client_principal))

    def on_message(self, client_principal: bytes, message: bytes) -> None:
        self.events.append(("message", client_principal))

    def on_close(self, client_principal: bytes) -> None:
        self.events.append(("close", client_principal))


Transport = Literal["in-process", "http"]


@dataclass
class Env:
    """One canister with a frozen clock, and a driver speaking Candid to it over `transport`.

    In process the canister sits on a `FakeHost`; over HTTP on a `Replica`, and `host` is None.
    """

    flavor: Flavor
    transport: Transport
    clock: ManualClock
    canister: Canister
    driver: TestCanisterDriver
    root_key_der: bytes
    close: Callable[[], None]
    host: FakeHost | None = None

    @property
    def canister_id(self) -> bytes:
        return self.canister.canister_id

    # --- calls, asserting the happy path --------------------------------------------------------------

    def open(self, key: ClientKey, gateway: bytes = GATEWAY_1) -> None:
        assert self.driver.ws_open(key.client_principal, key.client_nonce, gateway) == {"Ok": None}

    def message(self, key: ClientKey, seq: int, content: bytes, *, service: bool = False) -> Any:
        message = IncomingMessage(key, seq, self.clock.now_ns(), service, content)
        return self.driver.ws_message(key.client_principal, message)

    def keep_alive(self, key: ClientKey, seq: int) -> Any:
        content = encode_service_message({"KeepAliveMessage": {"last_incoming_sequence_num": 0}})
        return self.message(key, seq, content, service=True)

    def send_texts(self, principal: bytes, first: int, count: int) -> None:
        blobs = [encode_app_message(f"test{i}", self.clock.now_ns()) for i in range(first, first + count)]
        assert self.driver.send(principal, blobs) == {"Ok": None}

    def poll(self, gateway: bytes, nonce: int) -> dict[str, Any]:
        result = self.driver.ws_get_messages(gateway, nonce)
        assert set(result) == {"Ok"}
        ok: dict[str, Any] = result["Ok"]
        return ok

    def queue_len(self, gateway: bytes) -> int:
        """How many messages the gateway's queue holds, as polling it from its start shows."""
        count, nonce = 0, 0
        while True:
            result = self.poll(gateway, nonce)
            count += len(result["messages"])
            if result["is_end_of_queue"]:
                return count
            nonce = nonce_of(result["messages"][-1]["key"]) + 1

    def advance_ms(self, ms: int) -> None:
        self.driver.advance_ms(ms)

    def advance_ns(self, ns: int) -> None:
        self.driver.advance_ns(ns)

    # --- checks -----------------------------------------------------------------------------------------

    def assert_certified(self, result: dict[str, Any]) -> None:
        """The SDK's check for every message of a batch, plus the certificate's own validity."""
        cert, tree = result["cert"], result["tree"]
        verify_certificate(cert, self.root_key_der, canister_id=self.canister_id, now_ns=self.clock.now_ns())
        state_tree = cbor2.dumps(cbor2.loads(cert)["tree"])
        path = [b"canister", self.canister_id, b"certified_data"]
        assert lookup_path(state_tree, path) == ("found", hash_tree_root(tree))
        assert hash_tree_root(tree) == self.canister.certified_data
        for message in result["messages"]:
            digest = hashlib.sha256(message["content"]).digest()
            assert lookup_path(tree, [b"websocket", message["key"].encode()]) == ("found", digest)

    def assert_messages(self, result: dict[str, Any], key: ClientKey, first_seq: int) -> list[dict[str, Any]]:
        """verify_messages of the suite: right client, consecutive sequence numbers from `first_seq`,
        timestamps not in the future, content in the flavour's CBOR; returns the decoded messages."""
        decoded = []
        for offset, message in enumerate(result["messages"]):
            assert ClientKey.from_candid(message["client_key"]) == key
            content = message["content"]
            assert content.startswith(b"\xd9\xd9\xf7\xa5") if self.flavor == "rust" else content[0] == 0xA5
            websocket_message = cbor2.loads(content)
            assert list(websocket_message) == [
                "client_key",
                "sequence_num",
                "timestamp",
                "is_service_message",
                "content",
            ]
            assert websocket_message["client_key"] == key.to_candid()
            assert websocket_message["sequence_num"] == first_seq + offset
            assert websocket_message["timestamp"] <= self.clock.now_ns()
            decoded.append(websocket_message)
        self.assert_certified(result)
        return decoded


def service(websocket_message: dict[str, Any]) -> dict[str, Any]:
    assert websocket_message["is_service_message"] is True
    return decode_service_message(websocket_message["content"])


def app_text(websocket_message: dict[str, Any]) -> str:
    assert websocket_message["is_service_message"] is False
    return str(decode_app_message(websocket_message["content"])["text"])


def open_message(key: ClientKey) -> dict[str, Any]:
    return {"OpenMessage": {"client_key": key.to_candid()}}


def ack_message(n: int) -> dict[str, Any]:
    return {"AckMessage": {"last_incoming_sequence_num": n}}


def close_message(reason: str) -> dict[str, Any]:
    return {"CloseMessage": {"reason": {reason: None}}}


def key_of(gateway: bytes, nonce: int) -> str:
    return f"{text(gateway)}_{nonce:020d}"


def nonce_of(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


# Rounds as often as the replica can: the suite makes its calls one after another.
HTTP_REPLICA_CONFIG = ReplicaConfig(round_ms=0.1)


def make_env(
    flavor: Flavor,
    app: WsApp | None = None,
    params: WsInitParams | None = None,
    *,
    transport: Transport = "in-process",
) -> Env:
    clock = ManualClock(START_NS)
    app = app or SilentTestCanister()
    params = params or WsInitParams(DEFAULT_MAX_NUMBER_OF_RETURNED_MESSAGES, T_MS)

    def create_canister(index: int, host: CanisterHost) -> Canister:
        return Canister(canister_id_for_index(index), host, app, flavor=flavor, params=params)

    if transport == "http":
        driver = HttpDriver.start(create_canister, clock, SIGNERS, HTTP_REPLICA_CONFIG)
        canister = driver.replica.canisters[driver.canister_id]
        assert isinstance(canister, Canister)
        return Env(flavor, transport, clock, canister, driver, driver.replica.root_key_der, driver.stop)
    host = FakeHost(clock)
    canister = create_canister(0, host)
    host.canisters[canister.canister_id] = canister
    driver_in_process = InProcessDriver(canister, clock)
    return Env(
        flavor, transport, clock, canister, driver_in_process, host.root_key_der, canister.shutdown, host
    )


@pytest.fixture(params=["rust", "motoko"])
def flavor(request: pytest.FixtureRequest) -> Flavor:
    value: Flavor = request.param
    return value


@pytest.fixture(params=["in-process", "http"])
def transport(request: pytest.FixtureRequest) -> Transport:
    value: Transport = request.param
    return value


@pytest.fixture
def new_env(flavor: Flavor, transport: Transport) -> Iterator[Callable[..., Env]]:
    """Makes environments of the test's flavour and transport (`new_env(app, params)`), closed after."""
    made: list[Env] = []

    def new(app: WsApp | None = None, params: WsInitParams | None = None) -> Env:
        made.append(make_env(flavor, app, params, transport=transport))
        return made[-1]

    yield new
    for environment in made:
        environment.close()


@pytest.fixture
def env(new_env: Callable[..., Env]) -> Env:
    return new_env()


@pytest.fixture
def local_env(flavor: Flavor) -> Iterator[Env]:
    """An in-process environment, for tests that reach into the fake host."""
    environment = make_env(flavor)
    yield environment
    environment.close()


def wipe(env: Env, max_messages: int = DEFAULT_MAX_NUMBER_OF_RETURNED_MESSAGES, ack_ms: int = T_MS) -> None:
    assert env.driver.wipe(max_messages, ack_ms) is None


# === a_ws_open =============================================================================================


def test_a1_anonymous_principal_cannot_open(env: Env) -> None:
    assert env.driver.ws_open(ANONYMOUS, 1, GATEWAY_1) == {"Err": "Anonymous principal is not allowed"}
    assert not env.canister.cdk.is_gateway_registered(GATEWAY_1)


def test_a2_open_queues_the_open_message_for_the_gateway(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    result = env.poll(GATEWAY_1, 0)
    assert result["is_end_of_queue"] is True
    (first,) = env.assert_messages(result, CLIENT_1_KEY, 1)
    assert service(first) == open_message(CLIENT_1_KEY)
    assert result["messages"][0]["key"] == key_of(GATEWAY_1, 0)


def test_a3_the_same_key_cannot_open_twice(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    assert env.driver.ws_open(CLIENT_1, 1, GATEWAY_1) == {
        "Err": f"Client with key {text(CLIENT_1)}_1 already has an open connection"
    }
    wipe(env)
    assert env.poll(GATEWAY_1, 0) == EMPTY_RESULT


def test_a4_the_same_principal_reopens_with_new_nonces(env: Env) -> None:
    rng = random.Random(4)
    for _ in range(50):
        key = ClientKey(CLIENT_1, rng.getrandbits(64))
        env.open(key)
        assert env.canister.cdk.client_key(CLIENT_1) == key
        queued = [cbor2.loads(m.content) for m in env.canister.cdk.gateway_queue(GATEWAY_1)]
        assert any(service(m) == open_message(key) for m in queued if m["client_key"] == key.to_candid())


# === b_ws_message ==========================================================================================


def test_b1_a_client_that_never_opened_cannot_send(env: Env) -> None:
    assert env.message(CLIENT_2_KEY, 1, b"") == {
        "Err": f"Client with principal {text(CLIENT_2)} doesn't have an open connection"
    }


def test_b2_the_message_key_must_be_the_registered_one(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    other_principal = IncomingMessage(ClientKey(CLIENT_2, 1), 1, 0, False, b"")
    assert env.driver.ws_message(CLIENT_1, other_principal) == {
        "Err": f"Client with principal {text(CLIENT_2)} has a different key than the one used in the message"
    }
    other_nonce = IncomingMessage(ClientKey(CLIENT_1, 99), 1, 0, False, b"")
    assert env.driver.ws_message(CLIENT_1, other_nonce) == {
        "Err": f"Client with principal {text(CLIENT_1)} has a different key than the one used in the message"
    }
    # Nothing else changed: sequence number 1 is still expected.
    assert env.message(CLIENT_1_KEY, 1, encode_app_message("test1", 0)) == {"Ok": None}


def test_b3_an_in_sequence_message_is_accepted(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    assert env.message(CLIENT_1_KEY, 1, encode_app_message("test1", 0)) == {"Ok": None}


def test_b4_a_wrong_sequence_number_closes_the_client(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    assert env.message(CLIENT_1_KEY, 2, encode_app_message("test1", 0)) == {
        "Err": "Expected incoming sequence number 1 but got 2"
    }
    result = env.poll(GATEWAY_1, 1)
    (close,) = env.assert_messages(result, CLIENT_1_KEY, 2)
    assert service(close) == close_message("WrongSequenceNumber")
    assert env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY) == {
        "Err": f"Client with key {CLIENT_1_KEY} doesn't have an open connection"
    }


def test_b5_a_failed_service_message_still_uses_its_sequence_number(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    not_a_service_message = candid_encode_values("(vec int32)", [[1, 2, 3]])
    result = env.message(CLIENT_1_KEY, 1, not_a_service_message, service=True)
    assert result["Err"].startswith("Error decoding service message content:")
    if env.flavor == "motoko":
        assert result == {"Err": "Error decoding service message content: unknown"}
    ack = encode_service_message(ack_message(0))
    assert env.message(CLIENT_1_KEY, 2, ack, service=True) == {"Err": "Invalid service message"}
    # Neither error disconnects the client.
    assert env.canister.cdk.client_key(CLIENT_1) == CLIENT_1_KEY


def test_b6_a_keep_alive_is_accepted(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    assert env.keep_alive(CLIENT_1_KEY, 1) == {"Ok": None}


@pytest.mark.parametrize("variant", ["OpenMessage", "CloseMessage"])
def test_b_canister_service_messages_from_a_client_are_invalid(env: Env, variant: str) -> None:
    env.open(CLIENT_1_KEY)
    content = open_message(CLIENT_1_KEY) if variant == "OpenMessage" else close_message("KeepAliveTimeout")
    result = env.message(CLIENT_1_KEY, 1, encode_service_message(content), service=True)
    assert result == {"Err": "Invalid service message"}


def test_b_service_content_that_is_not_candid(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    if env.flavor == "rust":
        result = env.message(CLIENT_1_KEY, 1, b"not candid", service=True)
        assert result["Err"].startswith("Error decoding service message content: ")
        assert result["Err"] != "Error decoding service message content: unknown"
    else:
        # Motoko's from_candid traps on bytes that are not Candid: the call is rejected.
        with pytest.raises(CallRejected) as rejected:
            env.message(CLIENT_1_KEY, 1, b"not candid", service=True)
        assert rejected.value.reject.code == CANISTER_ERROR
        assert rejected.value.reject.error_code == "IC0503"
    # Either way the sequence number was used and the client stays connected.
    assert env.message(CLIENT_1_KEY, 2, encode_app_message("test1", 0)) == {"Ok": None}


@pytest.mark.parametrize("second_argument", ["opt null", "absent", "app"])
def test_b_ws_message_accepts_every_form_of_the_second_argument(env: Env, second_argument: str) -> None:
    env.open(CLIENT_1_KEY)
    message = IncomingMessage(CLIENT_1_KEY, 1, 0, False, encode_app_message("test1", 0))
    assert env.driver.ws_message(CLIENT_1, message, second_argument=second_argument) == {"Ok": None}


def test_b_app_messages_reach_on_message_and_do_not_refresh_keep_alive(new_env: Callable[..., Env]) -> None:
    app = RecordingApp()
    env = new_env(app)
    env.open(CLIENT_1_KEY)
    env.advance_ms(T_MS)  # ack tick: the client is now checked for keep-alives
    env.message(CLIENT_1_KEY, 1, encode_app_message("test1", 0))
    assert app.events == [("open", CLIENT_1), ("message", CLIENT_1)]
    env.advance_ms(KEEP_ALIVE_MS)
    assert env.canister.cdk.client_key(CLIENT_1) is None
    assert app.events[-1] == ("close", CLIENT_1)


# === c_ws_get_messages =====================================================================================


def test_c1_unregistered_callers_get_the_empty_result(env: Env) -> None:
    rng = random.Random(1)
    env.open(CLIENT_1_KEY)
    for _ in range(10):
        assert env.poll(random_principal(rng), 0) == EMPTY_RESULT


def test_c2_one_open_gives_one_message(env: Env) -> None:
    rng = random.Random(2)
    for _ in range(10):
        wipe(env)
        key = ClientKey(random_principal(rng), rng.getrandbits(64))
        env.open(key)
        assert len(env.poll(GATEWAY_1, 0)["messages"]) == 1


def test_c3_polling_from_each_nonce_returns_at_most_the_maximum(env: Env) -> None:
    rng = random.Random(3)
    for sends in [1, 49, 50, 51, *rng.sample(range(1, 101), 6)]:
        wipe(env)
        env.open(CLIENT_1_KEY)
        env.send_texts(CLIENT_1, 1, sends)
        total = sends + 1
        for nonce in range(total):
            result = env.poll(GATEWAY_1, nonce)
            assert len(result["messages"]) == min(total - nonce, 50)
            assert result["is_end_of_queue"] == (total - nonce <= 50)
            assert result["messages"][0]["key"] == key_of(GATEWAY_1, nonce)
        assert env.poll(GATEWAY_1, total) == EMPTY_RESULT
        assert env.poll(GATEWAY_1, 2**64 - 1) == EMPTY_RESULT


def test_c4_polling_on_from_the_last_key_yields_every_message_certified(env: Env) -> None:
    rng = random.Random(4)
    for sends in rng.sample(range(1, 101), 10):
        wipe(env)
        env.open(CLIENT_1_KEY)
        env.send_texts(CLIENT_1, 1, sends)
        received: list[dict[str, Any]] = []
        nonce = 0
        while True:
            result = env.poll(GATEWAY_1, nonce)
            if not result["messages"]:
                break
            received += env.assert_messages(result, CLIENT_1_KEY, len(received) + 1)
            nonce = nonce_of(result["messages"][-1]["key"]) + 1
        assert len(received) == sends + 1
        assert service(received[0]) == open_message(CLIENT_1_KEY)
        assert [app_text(m) for m in received[1:]] == [f"test{i}" for i in range(1, sends + 1)]


def test_c5_the_ack_send_trims_up_to_five_old_messages(env: Env) -> None:
    rng = random.Random(5)
    for sends in [1, 4, 5, 6, *rng.sample(range(1, 101), 6)]:
        wipe(env, max_messages=1_000)
        env.open(CLIENT_1_KEY)
        env.send_texts(CLIENT_1, 1, sends)
        env.advance_ms(T_MS + 1)
        result = env.poll(GATEWAY_1, 0)
        kept = max(sends + 1 - 5, 0)
        assert len(result["messages"]) == kept + 1
        first_seq = (sends + 1 if sends < 5 else 5) + 1
        decoded = env.assert_messages(result, CLIENT_1_KEY, first_seq)
        assert service(decoded[-1]) == ack_message(0)
        assert [app_text(m) for m in decoded[:-1]] == [f"test{i}" for i in range(first_seq - 1, sends + 1)]
        assert len(env.canister.cdk.certified_keys()) == kept + 1


def test_c6_an_idle_gateway_expires_at_the_first_check_after_an_interval(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    env.send_texts(CLIENT_1, 1, 10)
    assert env.queue_len(GATEWAY_1) == 11
    assert env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY) == {"Ok": None}
    assert env.queue_len(GATEWAY_1) == 11
    env.advance_ms(T_MS)
    assert env.queue_len(GATEWAY_1) == 11
    assert len(env.poll(GATEWAY_1, 0)["messages"]) == 11  # still pollable
    data_before = env.canister.certified_data
    env.advance_ms(KEEP_ALIVE_MS)
    assert env.queue_len(GATEWAY_1) == 0
    assert not env.canister.cdk.is_gateway_registered(GATEWAY_1)
    assert env.poll(GATEWAY_1, 0) == EMPTY_RESULT
    assert env.canister.cdk.certified_keys() == []
    assert env.canister.certified_data != data_before


def test_c7_gateways_are_only_removed_by_keep_alive_checks(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    env.send_texts(CLIENT_1, 1, 10)
    env.advance_ms(T_MS)
    assert env.queue_len(GATEWAY_1) == 12  # the ack was sent, nothing was old enough to trim
    assert env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY) == {"Ok": None}
    assert env.queue_len(GATEWAY_1) == 12
    env.advance_ms(KEEP_ALIVE_MS)
    assert env.queue_len(GATEWAY_1) == 12
    env.advance_ms(T_MS - KEEP_ALIVE_MS)
    assert env.queue_len(GATEWAY_1) == 12
    env.advance_ms(KEEP_ALIVE_MS)
    assert env.queue_len(GATEWAY_1) == 0


def test_c_a_gateway_that_gets_a_client_again_is_not_removed(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY)
    env.open(CLIENT_2_KEY)
    env.advance_ms(T_MS)
    env.advance_ms(KEEP_ALIVE_MS)
    # CLIENT_2 did not answer its ack and was dropped; the gateway's expiry clock restarts only now.
    assert env.canister.cdk.is_gateway_registered(GATEWAY_1)
    result = env.poll(GATEWAY_1, 0)
    # Nonces go on from the first registration (the two OpenMessages were trimmed as too old).
    assert [m["key"] for m in result["messages"]] == [key_of(GATEWAY_1, n) for n in (2, 3)]


def test_c_ws_get_messages_only_works_as_a_query(env: Env) -> None:
    call = replace(TestCanisterCalls.ws_get_messages(0), kind="update")
    # Nothing to return: no certificate needed, so it replies even as an update.
    assert env.driver.call(call, GATEWAY_1) == {"Ok": EMPTY_RESULT}
    env.open(CLIENT_1_KEY)
    outcome = env.driver.outcome(call, GATEWAY_1)
    assert isinstance(outcome, Reject)
    assert (outcome.code, outcome.error_code) == (CANISTER_ERROR, "IC0503")
    assert "data certificate" in outcome.message


# === d_ws_close ============================================================================================


def test_d1_an_unknown_gateway_cannot_close(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    assert env.driver.ws_close(GATEWAY_2, CLIENT_1_KEY) == {
        "Err": f"Gateway with principal {text(GATEWAY_2)} is not registered"
    }


def test_d2_closing_a_client_that_is_not_open(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    assert env.driver.ws_close(GATEWAY_1, CLIENT_2_KEY) == {
        "Err": f"Client with key {text(CLIENT_2)}_2 doesn't have an open connection"
    }


def test_d3_only_the_clients_gateway_can_close_it(env: Env) -> None:
    env.open(CLIENT_1_KEY, GATEWAY_1)
    env.open(CLIENT_2_KEY, GATEWAY_2)
    assert env.driver.ws_close(GATEWAY_2, CLIENT_1_KEY) == {
        "Err": f"Client with key {CLIENT_1_KEY} was not registered to gateway {text(GATEWAY_2)}"
    }


def test_d4_the_gateway_closes_its_client_once(new_env: Callable[..., Env]) -> None:
    app = RecordingApp()
    env = new_env(app)
    env.open(CLIENT_1_KEY)
    assert env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY) == {"Ok": None}
    assert env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY) == {
        "Err": f"Client with key {CLIENT_1_KEY} doesn't have an open connection"
    }
    assert app.events == [("open", CLIENT_1), ("close", CLIENT_1)]
    assert len(env.poll(GATEWAY_1, 0)["messages"]) == 1  # no CloseMessage for a gateway close


# === e_send and f_close ====================================================================================


def test_e_send(env: Env) -> None:
    not_connected = {"Err": f"Client with principal {text(CLIENT_2)} doesn't have an open connection"}
    assert env.driver.send(CLIENT_2, [encode_app_message("test1", 0)]) == not_connected
    env.open(CLIENT_1_KEY)
    assert env.driver.send(CLIENT_1, [encode_app_message("test1", 0)]) == {"Ok": None}


def test_e_send_returns_the_first_error(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    before = env.queue_len(GATEWAY_1)
    assert env.driver.send(CLIENT_2, [b"a", b"b"])["Err"].startswith("Client with principal")
    assert env.queue_len(GATEWAY_1) == before
    assert env.driver.send(CLIENT_1, []) == {"Ok": None}


def test_f_close(new_env: Callable[..., Env]) -> None:
    app = RecordingApp()
    env = new_env(app)
    not_connected = {"Err": f"Client with principal {text(CLIENT_1)} doesn't have an open connection"}
    assert env.driver.close(CLIENT_1) == not_connected
    env.open(CLIENT_1_KEY)
    assert env.driver.close(CLIENT_1) == {"Ok": None}
    assert env.driver.close(CLIENT_1) == not_connected
    decoded = env.assert_messages(env.poll(GATEWAY_1, 0), CLIENT_1_KEY, 1)
    assert service(decoded[-1]) == close_message("ClosedByApplication")
    assert app.events == [("open", CLIENT_1), ("close", CLIENT_1)]


# === g_messages_acknowledgement ============================================================================


def test_g1_the_ack_carries_the_last_received_sequence_number(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    assert env.poll(GATEWAY_1, 1) == EMPTY_RESULT
    assert env.message(CLIENT_1_KEY, 1, encode_app_message("test1", 0)) == {"Ok": None}
    env.advance_ms(T_MS)
    result = env.poll(GATEWAY_1, 1)
    (ack,) = env.assert_messages(result, CLIENT_1_KEY, 2)
    assert service(ack) == ack_message(1)


def test_g2_no_keep_alive_closes_the_client(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    env.advance_ms(T_MS)
    (ack,) = env.assert_messages(env.poll(GATEWAY_1, 1), CLIENT_1_KEY, 2)
    assert service(ack) == ack_message(0)
    env.advance_ms(KEEP_ALIVE_MS)
    decoded = env.assert_messages(env.poll(GATEWAY_1, 1), CLIENT_1_KEY, 2)
    assert [service(m) for m in decoded] == [ack_message(0), close_message("KeepAliveTimeout")]
    assert env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY) == {
        "Err": f"Client with key {CLIENT_1_KEY} doesn't have an open connection"
    }


def test_g3_a_keep_alive_keeps_the_client(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    env.advance_ms(T_MS)
    (ack,) = env.assert_messages(env.poll(GATEWAY_1, 1), CLIENT_1_KEY, 2)
    assert service(ack) == ack_message(0)
    assert env.keep_alive(CLIENT_1_KEY, 1) == {"Ok": None}
    env.advance_ms(KEEP_ALIVE_MS)  # exactly 60 s after the keep-alive: not more than the timeout
    assert env.message(CLIENT_1_KEY, 2, encode_app_message("test1", 0)) == {"Ok": None}
    env.advance_ms(T_MS - KEEP_ALIVE_MS)
    (ack,) = env.assert_messages(env.poll(GATEWAY_1, 2), CLIENT_1_KEY, 3)
    assert service(ack) == ack_message(2)


def test_g4_a_client_that_opened_after_a_tick_is_not_checked_by_it(env: Env) -> None:
    env.advance_ms(T_MS)
    env.open(CLIENT_1_KEY)
    assert env.poll(GATEWAY_1, 1) == EMPTY_RESULT
    assert env.message(CLIENT_1_KEY, 1, encode_app_message("test1", 0)) == {"Ok": None}
    env.advance_ms(KEEP_ALIVE_MS)
    env.advance_ms(T_MS - KEEP_ALIVE_MS)
    (ack,) = env.assert_messages(env.poll(GATEWAY_1, 1), CLIENT_1_KEY, 2)
    assert service(ack) == ack_message(1)


def test_g_the_ack_timer_restarts_on_wipe_and_keeps_its_phase_when_late(env: Env) -> None:
    def last_message() -> dict[str, Any]:
        return dict(cbor2.loads(env.canister.cdk.gateway_queue(GATEWAY_1)[-1].content))

    env.advance_ms(T_MS // 2)
    wipe(env)
    wiped_at = env.clock.now_ns()
    env.open(CLIENT_1_KEY)
    env.advance_ms(T_MS - 1)
    assert service(last_message()) == open_message(CLIENT_1_KEY)
    env.advance_ms(1)
    assert (service(last_message()), last_message()["timestamp"]) == (ack_message(0), wiped_at + T_MS * MS)
    assert env.keep_alive(CLIENT_1_KEY, 1) == {"Ok": None}
    env.advance_ms(KEEP_ALIVE_MS)
    # Time jumps 30 s past the next tick: it runs late...
    env.advance_ms(T_MS - KEEP_ALIVE_MS + 30_000)
    late_tick = wiped_at + 2 * T_MS * MS + 30_000 * MS
    assert (service(last_message()), last_message()["timestamp"]) == (ack_message(1), late_tick)
    assert env.keep_alive(CLIENT_1_KEY, 2) == {"Ok": None}
    env.advance_ms(KEEP_ALIVE_MS)  # the check after the late tick, on time
    # ...and the next tick is still due three intervals after the wipe.
    env.advance_ms(T_MS - 30_000 - KEEP_ALIVE_MS - 1)
    assert last_message()["timestamp"] == late_tick
    env.advance_ms(1)
    assert (service(last_message()), last_message()["timestamp"]) == (
        ack_message(2),
        wiped_at + 3 * T_MS * MS,
    )


# === h_multiple_gateways ===================================================================================


def test_h_a_client_moves_to_another_gateway(env: Env) -> None:
    rng = random.Random(8)
    for _ in range(50):
        wipe(env)
        key = ClientKey(random_principal(rng), rng.getrandbits(64))
        gateway_1, gateway_2 = random_principal(rng), random_principal(rng)
        env.open(key, gateway_1)
        env.send_texts(key.client_principal, 1, 5)
        result = env.poll(gateway_1, 0)
        assert result["is_end_of_queue"] is True
        assert len(env.assert_messages(result, key, 1)) == 6
        assert env.poll(gateway_2, 0) == EMPTY_RESULT
        assert env.driver.ws_close(gateway_1, key) == {"Ok": None}
        env.open(key, gateway_2)
        result = env.poll(gateway_2, 0)
        (opened,) = env.assert_messages(result, key, 1)
        assert service(opened) == open_message(key)
        assert result["messages"][0]["key"] == key_of(gateway_2, 0)
        env.send_texts(key.client_principal, 1, 5)
        decoded = env.assert_messages(env.poll(gateway_2, 0), key, 1)
        assert [app_text(m) for m in decoded[1:]] == [f"test{i}" for i in range(1, 6)]


def test_h_reopening_with_a_new_nonce_replaces_the_old_key_silently(new_env: Callable[..., Env]) -> None:
    app = RecordingApp()
    env = new_env(app)
    env.open(ClientKey(CLIENT_1, 1), GATEWAY_1)
    env.open(ClientKey(CLIENT_1, 2), GATEWAY_2)
    assert app.events == [("open", CLIENT_1), ("close", CLIENT_1), ("open", CLIENT_1)]
    # The old key's messages stay in its gateway's queue; no CloseMessage was queued for it.
    assert [cbor2.loads(m.content)["sequence_num"] for m in env.canister.cdk.gateway_queue(GATEWAY_1)] == [1]
    assert env.driver.ws_close(GATEWAY_1, ClientKey(CLIENT_1, 1))["Err"].endswith(
        "doesn't have an open connection"
    )


# === CDK unit-test facts ===================================================================================


@pytest.mark.parametrize("ack_ms", [5, 60_000])
def test_init_traps_on_an_ack_interval_not_above_the_keep_alive_timeout(flavor: Flavor, ack_ms: int) -> None:
    with pytest.raises(
        CanisterTrap, match=r"^send_ack_interval_ms must be greater than CLIENT_KEEP_ALIVE_TIMEOUT_MS$"
    ):
        make_env(flavor, params=WsInitParams(send_ack_interval_ms=ack_ms))


def test_wipe_with_invalid_parameters_traps_and_changes_nothing(env: Env) -> None:
    env.open(CLIENT_1_KEY)
    with pytest.raises(CallRejected) as rejected:
        env.driver.wipe(50, 60_000)
    assert rejected.value.reject.code == CANISTER_ERROR
    assert (
        "send_ack_interval_ms must be greater than CLIENT_KEEP_ALIVE_TIMEOUT_MS"
        in rejected.value.reject.message
    )
    assert env.canister.cdk.client_key(CLIENT_1) == CLIENT_1_KEY
    assert env.canister.cdk.params.send_ack_interval_ms == T_MS


def test_default_parameters() -> None:
    assert WsInitParams() == WsInitParams(50, 300_000)
    cdk = WebSocketCdk(clock=ManualClock(START_NS), handlers=SilentTestCanister())
    assert cdk.params == WsInitParams(50, 300_000)
    assert cdk.flavor == "rust"
    with pytest.raises(ValueError, match="flavor"):
        WebSocketCdk(clock=ManualClock(START_NS), handlers=SilentTestCanister(), flavor="go")  # type: ignore[arg-type]


def test_message_key_format() -> None:
    gateway = principal_from_text("sqdfl-mr4km-2hfjy-gajqo-xqvh7-hf4mf-nra4i-3it6l-neaw4-soolw-tae")
    queue = GatewayQueue(gateway)
    assert (
        queue.key_for(2)
        == "sqdfl-mr4km-2hfjy-gajqo-xqvh7-hf4mf-nra4i-3it6l-neaw4-soolw-tae_00000000000000000002"
    )
    assert queue.key_for(2**64 - 1).endswith("_18446744073709551615")
    assert str(ClientKey(CLIENT_1, 385892949151814926)) == f"{text(CLIENT_1)}_385892949151814926"


def _queued(queue: GatewayQueue, count: int) -> None:
    for _ in range(count):
        nonce = queue.next_nonce
        queue.append(QueuedMessage(CLIENT_1_KEY, queue.key_for(nonce), b"", 0))
        queue.next_nonce += 1


@pytest.mark.parametrize(
    ("queued", "trimmed", "nonce", "max_count", "expected_nonces", "end"),
    [
        (0, 0, 0, 50, [], True),
        (3, 0, 0, 50, [0, 1, 2], True),
        (3, 0, 2, 50, [2], True),
        (3, 0, 3, 50, [], True),
        (100, 0, 0, 50, list(range(50)), False),
        (100, 0, 50, 50, list(range(50, 100)), True),
        (100, 0, 49, 50, list(range(49, 99)), False),
        (100, 30, 0, 50, list(range(30, 80)), False),  # nonce before the queue: from its start
        (100, 30, 60, 50, list(range(60, 100)), True),
        (100, 30, 500, 50, [], True),
    ],
)
def test_range_of_messages_for_a_poll(
    queued: int, trimmed: int, nonce: int, max_count: int, expected_nonces: list[int], end: bool
) -> None:
    queue = GatewayQueue(GATEWAY_1)
    _queued(queue, queued)
    for _ in range(trimmed):
        queue.pop_oldest()
    messages, is_end_of_queue = queue.messages_from(nonce, max_count)
    assert [m.key for m in messages] == [queue.key_for(n) for n in expected_nonces]
    assert is_end_of_queue is end
    assert queue.first_nonce == trimmed


def test_trimming_keeps_new_plus_old_minus_five(env: Env) -> None:
    for old in [0, 3, 5, 12]:
        wipe(env)
        env.open(CLIENT_1_KEY)
        env.send_texts(CLIENT_1, 1, old - 1 if old else 0)
        queued_old = env.queue_len(GATEWAY_1)
        env.advance_ns(T_MS * MS - 1)  # just before the tick: nothing is too old yet
        env.send_texts(CLIENT_1, 1, 1)
        assert env.queue_len(GATEWAY_1) == queued_old + 1
        env.advance_ns(2)  # the tick sends one ack; every earlier message is now older than T
        assert env.queue_len(GATEWAY_1) == 1 + 1 + max(queued_old - 5, 0)


def test_gateway_client_counting(env: Env) -> None:
    env.open(CLIENT_1_KEY, GATEWAY_1)
    env.open(CLIENT_2_KEY, GATEWAY_1)
    assert env.driver.ws_close(GATEWAY_1, CLIENT_1_KEY) == {"Ok": None}
    env.advance_ms(T_MS)
    env.advance_ms(KEEP_ALIVE_MS)
    # CLIENT_2 kept the gateway alive until its keep-alive timeout; only then did the count reach 0.
    assert env.canister.cdk.client_key(CLIENT_2) is None
    assert env.canister.cdk.is_gateway_registered(GATEWAY_1)
    env.advance_ms(T_MS - KEEP_ALIVE_MS)
    env.advance_ms(KEEP_ALIVE_MS)  # idle for exactly one interval: not yet more than it
    assert env.canister.cdk.is_gateway_registered(GATEWAY_1)
    env.advance_ms(T_MS - KEEP_ALIVE_MS)
    env.advance_ms(KEEP_ALIVE_MS)
    assert not env.canister.cdk.is_gateway_registered(GATEWAY_1)
    # A new registration starts at nonce 0 again.
    env.open(ClientKey(CLIENT_1, 5), GATEWAY_1)
    assert env.poll(GATEWAY_1, 0)["messages"][0]["key"] == key_of(GATEWAY_1, 0)


def test_removing_a_client_with_a_reason_queues_the_close_message_first(new_env: Callable[..., Env]) -> None:
    app = RecordingApp()
    env = new_env(app)
    env.open(CLIENT_1_KEY)

    def on_close(client_principal: bytes) -> None:
        # By the time on_close runs the CloseMessage is certified and the client is gone.
        queue = env.canister.cdk.gateway_queue(GATEWAY_1)
        assert service(cbor2.loads(queue[-1].content)) == close_message("ClosedByApplication")
        assert env.canister.cdk.client_key(client_principal) is None
        app.events.append(("close", client_principal))

    app.on_close = on_close  # type: ignore[method-assign]
    assert env.driver.close(CLIENT_1) == {"Ok": None}
    assert app.events[-1] == ("close", CLIENT_1)


# === flavours ==============================================================================================


def test_flavours_differ_in_content_bytes_and_witness_shape() -> None:
    results = {}
    for flavor in ("rust", "motoko"):
        env = make_env(flavor)
        env.open(CLIENT_1_KEY)
        env.send_texts(CLIENT_1, 1, 20)
        results[flavor] = env.poll(GATEWAY_1, 5)
        env.assert_messages(results[flavor], CLIENT_1_KEY, 6)
    rust, motoko = results["rust"], results["motoko"]
    for rust_message, motoko_message in zip(rust["messages"], motoko["messages"], strict=True):
        assert rust_message["content"][:3] == b"\xd9\xd9\xf7"
        assert rust_message["content"][3:] == motoko_message["content"]
    # Rust reveals the range and the labels next to it, so a label just before the range is provably
    # absent; Motoko reveals only the returned keys, so the same label is unknown.
    just_before = (key_of(GATEWAY_1, 4) + "x").encode()
    assert lookup_path(rust["tree"], [b"websocket", just_before]) == ("absent", None)
    assert lookup_path(motoko["tree"], [b"websocket", just_before]) == ("unknown", None)
    for tree in (rust["tree"], motoko["tree"]):
        assert lookup_path(tree, [b"websocket", key_of(GATEWAY_1, 4).encode()]) == ("unknown", None)
    assert rust["tree"][:3] == motoko["tree"][:3] == b"\xd9\xd9\xf7"


def test_wipe_calls_on_close_in_rust_only() -> None:
    for flavor, expected in (("rust", [("close", CLIENT_1), ("close", CLIENT_2)]), ("motoko", [])):
        app = RecordingApp()
        env = make_env(flavor, app)
        env.open(CLIENT_1_KEY)
        env.open(CLIENT_2_KEY, GATEWAY_2)
        app.events.clear()
        certified = env.canister.certified_data
        wipe(env)
        assert app.events == expected
        assert env.canister.cdk.client_key(CLIENT_1) is None
        assert env.poll(GATEWAY_1, 0) == EMPTY_RESULT
        # The CDK does not set certified data on wipe: the last value stays until the next change.
        assert env.canister.certified_data == certified
        env.open(CLIENT_1_KEY)
        assert env.canister.certified_data != certified


def test_motoko_module_level_close_skips_on_close() -> None:
    app = RecordingApp()
    env = make_env("motoko", app)
    env.open(CLIENT_1_KEY)
    env.canister.cdk.close(CLIENT_1, call_on_close=False)
    assert app.events == [("open", CLIENT_1)]
    assert env.canister.cdk.client_key(CLIENT_1) is None


# === the canister: Candid ABI, methods, certification ======================================================


def test_certified_data_follows_every_change(local_env: Env) -> None:
    env, host = local_env, local_env.host
    assert host is not None
    assert env.canister.certified_data == b""  # nothing certified before the first message
    env.open(CLIENT_1_KEY)
    changes = host.certified_data_changes
    assert changes >= 1
    assert env.canister.certified_data == expected_certified_data(env)
    env.send_texts(CLIENT_1, 1, 3)
    assert host.certified_data_changes == changes + 3
    assert env.canister.certified_data == expected_certified_data(env)
    env.assert_certified(env.poll(GATEWAY_1, 0))


def expected_certified_data(env: Env) -> bytes:
    """labeled_hash("websocket", root) of a map rebuilt from the queues: key -> sha256(content)."""
    queued = env.canister.cdk.gateway_queue(GATEWAY_1) + env.canister.cdk.gateway_queue(GATEWAY_2)
    rebuilt = CertifiedMap((m.key.encode(), hashlib.sha256(m.content).digest()) for m in queued)
    return labeled_hash(b"websocket", rebuilt.root_hash())


def test_undecodable_arguments_are_a_trap(local_env: Env) -> None:
    env = local_env
    for method in ("ws_open", "ws_message", "ws_close", "send", "close", "wipe"):
        outcome = env.canister.handle_update(method, b"DIDL\x00\x01\x71\x03abc", CLIENT_1)
        assert isinstance(outcome, Reject), method
        assert (outcome.code, outcome.error_code) == (CANISTER_ERROR, "IC0503")
        assert f"failed to decode the arguments of {method}" in outcome.message
        assert text(env.canister_id) in outcome.message
    outcome = env.canister.handle_query("ws_get_messages", b"garbage", GATEWAY_1)
    assert isinstance(outcome, Reject)
    assert outcome.error_code == "IC0503"


def test_unknown_methods_and_method_kinds(local_env: Env) -> None:
    env = local_env
    canister_text = "rrkah-fqaaa-aaaaa-aaaaq-cai"
    assert text(env.canister_id) == canister_text
    assert env.canister.handle_update("nope", b"", CLIENT_1) == Reject(
        DESTINATION_INVALID, f"Canister {canister_text} has no update method 'nope'", "IC0536"
    )
    assert env.canister.handle_query("ws_open", b"", CLIENT_1) == Reject(
        DESTINATION_INVALID, f"Canister {canister_text} has no query method 'ws_open'", "IC0536"
    )
    kinds = {name: env.canister.method_kind(name) for name in ("ws_open", "ws_close", "ws_message", "send")}
    assert kinds == dict.fromkeys(kinds, "update")
    assert env.canister.method_kind("ws_get_messages") == "query"
    assert env.canister.method_kind("close") == "update"
    assert env.canister.method_kind("wipe") == "update"
    assert env.canister.method_kind("ws_wipe") is None


def test_callers_are_who_the_cdk_sees(new_env: Callable[..., Env]) -> None:
    app = RecordingApp()
    env = new_env(app)
    # ws_open's caller is the client; ws_close's and ws_get_messages' are the gateway.
    env.open(CLIENT_1_KEY, GATEWAY_2)
    assert app.events == [("open", CLIENT_1)]
    assert env.poll(GATEWAY_1, 0) == EMPTY_RESULT
    assert len(env.poll(GATEWAY_2, 0)["messages"]) == 1
    assert env.driver.ws_close(CLIENT_1, CLIENT_1_KEY)["Err"].startswith("Gateway with principal")
    # send, close and wipe accept any caller.
    assert env.driver.send(CLIENT_1, [b"x"], caller=GATEWAY_1) == {"Ok": None}


def test_an_exception_in_app_code_is_a_trap(new_env: Callable[..., Env]) -> None:
    class Exploding(SilentTestCanister):
        def on_message(self, client_principal: bytes, message: bytes) -> None:
            raise ZeroDivisionError("app bug")

    env = new_env(Exploding())
    env.open(CLIENT_1_KEY)
    with pytest.raises(CallRejected) as rejected:
        env.message(CLIENT_1_KEY, 1, b"")
    assert rejected.value.reject.error_code == "IC0503"
    assert "ZeroDivisionError: app bug" in rejected.value.reject.message


def test_the_sdk_arguments_from_the_protocol_notes_decode() -> None:
    env = make_env("rust")
    assert TestCanisterCalls.ws_get_messages(0).arg.hex() == "4449444c016c01ef9999fe097801000000000000000000"
    # ws_close for the CDK suite's CLIENT_1 (PROTOCOL.md §8) with nonce 1, as the reference gateway
    # encodes it (PROTOCOL.md §9 step 11).
    suite_client_1 = principal_from_text("pmisz-prtlk-b6oe6-bj4fl-6l5fy-h7c2h-so6i7-jiz2h-bgto7-piqfr-7ae")
    close_arg = bytes.fromhex(
        "4449444c026c02fa80a2940568bbd1eacd0e786c01ebb49ce903000101011d335a83e713c14f0abf2fa5c1fe2d1e4ef23e94"
        "674709a6efbd102c7e020100000000000000"
    )
    env.open(ClientKey(suite_client_1, 1))
    assert env.canister.handle_update("ws_close", close_arg, GATEWAY_1) == Reply(
        candid_encode_values("(CanisterWsCloseResult)", [{"Ok": None}])
    )


# === the test canister app =================================================================================


def test_default_app_plays_ping_pong(new_env: Callable[..., Env]) -> None:
    env = new_env(TestCanister())
    env.open(CLIENT_1_KEY)
    decoded = env.assert_messages(env.poll(GATEWAY_1, 0), CLIENT_1_KEY, 1)
    assert service(decoded[0]) == open_message(CLIENT_1_KEY)
    ping = decode_app_message(decoded[1]["content"])
    assert ping == {"text": "ping", "timestamp": START_NS}
    env.advance_ns(5)
    assert env.message(CLIENT_1_KEY, 1, encode_app_message("ping-pong", 0)) == {"Ok": None}
    decoded = env.assert_messages(env.poll(GATEWAY_1, 2), CLIENT_1_KEY, 3)
    assert decode_app_message(decoded[0]["content"]) == {"text": "ping-pong ping", "timestamp": START_NS + 5}


def test_the_candid_interface_file_is_the_rendered_interface() -> None:
    env = make_env("rust", TestCanister())
    shipped = CANDID_INTERFACE_PATH.read_text()
    assert env.canister.candid_interface == shipped
    assert render_candid_interface(TestCanister()) == shipped
    assert "service : (nat64, nat64) -> {" in shipped
    assert (
        "ws_get_messages : (CanisterWsGetMessagesArguments) -> (CanisterWsGetMessagesResult) query;"
        in shipped
    )


def test_a_custom_app_with_its_own_methods() -> None:
    class Counter(WsApp):
        message_type = "Text"
        candid_declarations = "type Text = text;"

        def __init__(self) -> None:
            super().__init__()
            self.opened = 0

        def on_open(self, client_principal: bytes) -> None:
            self.opened += 1
            self.ws.send(client_principal, candid_encode_values("(text)", ["hello"]))

        @candid_method("query", "()", "(nat64)")
        def opened_count(self, caller: bytes) -> tuple[int]:
            return (self.opened,)

    env = make_env("rust", Counter())
    env.open(CLIENT_1_KEY)
    assert env.canister.method_kind("opened_count") == "query"
    outcome = env.canister.handle_query("opened_count", candid_encode_values("()", []), CLIENT_2)
    assert outcome == Reply(candid_encode_values("(nat64)", [1]))
    interface = env.canister.candid_interface
    assert "ws_message : (CanisterWsMessageArguments, opt Text) -> (CanisterWsMessageResult);" in interface
    assert "opened_count : () -> (nat64) query;" in interface
    assert "service : {" in interface

    class Clashing(WsApp):
        @candid_method("update", "()", "()", name="ws_open")
        def my_open(self, caller: bytes) -> tuple[()]:
            return ()

    with pytest.raises(ValueError, match="reserved for the CDK: ws_open"):
        make_env("rust", Clashing())


def test_load_app() -> None:
    assert type(load_app("icgw.replica.test_canister:SilentTestCanister")) is SilentTestCanister
    for spec, reason in [
        ("icgw.replica.test_canister", "module:Class"),
        ("icgw.replica.nope:App", "cannot import"),
        ("icgw.replica.test_canister:InProcessDriver", "not a WsApp subclass"),
        ("icgw.replica.test_canister:Missing", "not a WsApp subclass"),
    ]:
        with pytest.raises(ValueError, match=reason):
            load_app(spec)


def test_canister_ids_for_indexes() -> None:
    assert text(canister_id_for_index(0)) == "rrkah-fqaaa-aaaaa-aaaaq-cai"
    assert canister_id_for_index(1) == b"\x00" * 7 + b"\x02\x01\x01"
    assert text(canister_id_for_index(1)) == "ryjl3-tyaaa-aaaaa-aaaba-cai"
    assert canister_id_for_index(0x2FFFFE) == bytes.fromhex("00000000002fffff0101")
    with pytest.raises(ValueError, match="out of range"):
        canister_id_for_index(-1)
    with pytest.raises(ValueError, match="out of range"):
        canister_id_for_index(2**64 - 1)


async def test_on_a_real_clock_the_cdk_timers_run_by_themselves() -> None:
    clock = RealClock()
    host = FakeHost(clock)
    canister = Canister(canister_id_for_index(0), host, SilentTestCanister())
    host.canisters[canister.canister_id] = canister
    canister.cdk.ws_open(CLIENT_1, 1, GATEWAY_1)
    clock.advance(T_MS * MS)  # an admin jump: the tick that fell due runs at once
    last = canister.cdk.gateway_queue(GATEWAY_1)[-1]
    assert (last.key, service(cbor2.loads(last.content))) == (key_of(GATEWAY_1, 1), ack_message(0))
    # The keep-alive check is now armed on the event loop, one minute of wall time away; moving the
    # clock forward by less than that fires nothing, and a real wait for the remainder fires it.
    clock.advance((KEEP_ALIVE_MS - 20) * MS)
    assert canister.cdk.client_key(CLIENT_1) == CLIENT_1_KEY
    await asyncio.sleep(0.1)
    assert canister.cdk.client_key(CLIENT_1) is None
    canister.shutdown()
    clock.close()


def test_an_app_reaches_the_cdk_only_once_bound() -> None:
    app = SilentTestCanister()
    with pytest.raises(RuntimeError, match="not bound"):
        app.ws.send(CLIENT_1, b"")
    env = make_env("rust", app)
    assert app.context.canister_id == env.canister_id
    assert app.clock is env.clock
    with pytest.raises(RuntimeError, match="already bound"):
        make_env("rust", app)
