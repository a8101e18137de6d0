"""The replica's IC HTTP interface over real HTTP on loopback (IC-INTERFACE.md §1, §2, §5, §6, §7)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest
import uvloop

from icgw import core
from icgw.leb128 import decode_unsigned
from icgw.leb128 import encode_unsigned as leb128
from icgw.replica import Replica
from icgw.replica.clock import ManualClock
from icgw.replica.config import FaultConfig, ReplicaConfig
from icgw.replica.interfaces import Outcome, Reject, Reply
from icgw.replica.state import (
    STATE_ROOT_DOMAIN,
    TERMINAL_STATUS_KEPT_NS,
    IngressRecord,
    SmallMap,
    SubnetInfo,
    request_status_subtree,
    subnet_subtrees,
)

from .conftest import (
    ANONYMOUS,
    DELEGATION_DOMAIN,
    MINUTE_NS,
    REQUEST_DOMAIN,
    RESPONSE_DOMAIN,
    SYNTHETIC,
    VECTOR_CANISTER,
    VECTOR_NODE_SECRET,
    VECTOR_ROOT_SECRET,
    EchoCanister,
    EchoCanisters,
    Response,
    TestAgent,
    candid_text,
    check_well_formed,
    decode_candid_text,
    echo_canister_id,
    lookup,
    make_config,
)

CANISTER = echo_canister_id(0)
OTHER_CANISTER = echo_canister_id(1)  # in the subnet's range, but not hosted


# The emulator runs on uvloop (`python -m icgw.replica`), so these tests run there too (uvloop's
# transports differ from asyncio's). A module-level policy keeps the choice to this module; the
# pytest-asyncio replacement (a loop-factory hook) would apply to the whole directory.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture:DeprecationWarning'
)


@pytest.fixture(scope="module")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy()


def verify(replica: Replica, certificate: bytes, **scope: Any) -> None:
    core.verify_certificate(certificate, replica.root_key_der, now_ns=replica.clock.now_ns(), **scope)
    check_well_formed(certificate)


async def sync_call(agent: TestAgent, method: str, arg: bytes = b"", **kw: Any) -> tuple[bytes, bytes]:
    """(request id, verified certificate) of a v3 call that completed."""
    request_id, response = await agent.call(CANISTER, method, arg, **kw)
    assert response.status == 200, response.body
    body = response.cbor()
    assert body["status"] == "replied"
    verify(agent.replica, body["certificate"], canister_id=CANISTER)
    return request_id, body["certificate"]


async def node_public_key(agent: TestAgent, node_id: bytes, version: str = "v2") -> bytes:
    """The node key as an agent finds it: from the /subnet certificate, after checking the ranges."""
    response = await agent.read_state(CANISTER, [[b"subnet"]], version=version)
    assert response.status == 200, response.body
    certificate = response.cbor()["certificate"]
    verify(agent.replica, certificate, canister_id=CANISTER)
    subnet_id = core.self_authenticating_principal(agent.replica.root_key_der)
    status, ranges = lookup(certificate, b"subnet", subnet_id, b"canister_ranges")
    assert status == "found"
    assert ranges is not None
    assert any(lo <= CANISTER <= hi for lo, hi in core.cbor_decode(ranges))  # type: ignore[attr-defined]
    status, key = lookup(certificate, b"subnet", subnet_id, b"node", node_id, b"public_key")
    assert status == "found"
    assert key is not None
    assert core.self_authenticating_principal(key) == node_id
    status, subnet_key = lookup(certificate, b"subnet", subnet_id, b"public_key")
    assert (status, subnet_key) == ("found", agent.replica.root_key_der)
    return key


async def verified_query(agent: TestAgent, request_id: bytes, response: Response) -> dict[str, Any]:
    """The query body after checking its node signature like agent-rs (IC-INTERFACE.md §6)."""
    assert response.status == 200, response.body
    body = response.cbor()
    (signature,) = body["signatures"]
    signed: dict[str, Any] = {"status": body["status"]}
    if body["status"] == "replied":
        signed["reply"] = body["reply"]
    else:
        for name in ("reject_code", "reject_message", "error_code"):
            if name in body:
                signed[name] = body[name]
    signed["timestamp"] = signature["timestamp"]
    signed["request_id"] = request_id
    key = await node_public_key(agent, signature["identity"])
    message = RESPONSE_DOMAIN + core.request_id(signed)
    assert core.verify_signature(key, message, signature["signature"])
    assert not core.verify_signature(key, message + b"x", signature["signature"])
    return body


# --- status -----------------------------------------------------------------------------------------


async def test_status_serves_the_root_key(agent: TestAgent, replica: Replica) -> None:
    response = await agent.get("/api/v2/status")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/cbor"
    body = response.cbor()
    assert body["root_key"] == replica.root_key_der
    assert body["ic_api_version"] == "0.18.0"
    assert body["replica_health_status"] == "healthy"
    assert body["impl_version"] == "icgw-replica"
    assert core.bls_public_key_from_der(body["root_key"])  # a 133-byte DER BLS key


@pytest.mark.parametrize(
    "replica_config", [make_config(root_key_secret=VECTOR_ROOT_SECRET, impl_version=None)]
)
async def test_status_body_matches_the_synthetic_vector(agent: TestAgent) -> None:
    vector = SYNTHETIC["synthetic_call_certificate"]
    expected = vector["status_response_body_cbor_hex (GET /api/v2/status of such an emulator)"]
    response = await agent.get("/api/v2/status")
    assert response.body.hex() == expected


# --- calls --------------------------------------------------------------------------------------------


async def test_v2_call_is_accepted_then_polled_with_read_state(agent: TestAgent) -> None:
    identity = core.Ed25519Identity.generate()
    request_id, response = await agent.call(CANISTER, "echo", b"payload", version="v2", identity=identity)
    assert (response.status, response.body) == (202, b"")
    for _ in range(200):
        answer = await agent.read_state(CANISTER, [[b"request_status", request_id]], identity=identity)
        assert answer.status == 200, answer.body
        certificate = answer.cbor()["certificate"]
        verify(agent.replica, certificate, canister_id=CANISTER)
        status = lookup(certificate, b"request_status", request_id, b"status")
        if status == ("found", b"replied"):
            break
        assert status in (("absent", None), ("found", b"received"))
        await asyncio.sleep(0.005)
    else:
        pytest.fail("the call never completed")
    assert lookup(certificate, b"request_status", request_id, b"reply") == ("found", b"payload")
    assert lookup(certificate, b"time")[0] == "found"


@pytest.mark.parametrize("version", ["v3", "v4"])
async def test_sync_call_returns_a_certificate_of_the_reply(
    agent: TestAgent, echo_canisters: EchoCanisters, version: str
) -> None:
    identity = core.Ed25519Identity.generate()
    request_id, response = await agent.call(CANISTER, "echo", b"hi", version=version, identity=identity)
    assert response.status == 200
    body = response.cbor()
    assert set(body) == {"status", "certificate"}
    assert body["status"] == "replied"
    certificate = body["certificate"]
    verify(agent.replica, certificate, canister_id=CANISTER)
    assert lookup(certificate, b"request_status", request_id, b"status") == ("found", b"replied")
    assert lookup(certificate, b"request_status", request_id, b"reply") == ("found", b"hi")
    time = lookup(certificate, b"time")
    assert time[0] == "found"
    # Everything else is pruned: no other canister data leaks into a call certificate.
    assert lookup(certificate, b"canister", CANISTER, b"certified_data")[0] == "unknown"
    assert echo_canisters.made[CANISTER].update_calls == [("echo", b"hi", identity.principal)]


async def test_a_rejected_call_is_certified_with_its_reject(agent: TestAgent) -> None:
    request_id, certificate = await sync_call(agent, "reject")
    assert lookup(certificate, b"request_status", request_id, b"status") == ("found", b"rejected")
    assert lookup(certificate, b"request_status", request_id, b"reject_code") == ("found", b"\x04")
    assert lookup(certificate, b"request_status", request_id, b"reject_message") == ("found", b"no")
    assert lookup(certificate, b"request_status", request_id, b"error_code") == ("found", b"IC0406")
    assert lookup(certificate, b"request_status", request_id, b"reply") == ("absent", None)


async def test_an_unknown_method_is_a_certified_rejection(agent: TestAgent) -> None:
    request_id, certificate = await sync_call(agent, "no_such_method")
    assert lookup(certificate, b"request_status", request_id, b"status") == ("found", b"rejected")
    assert lookup(certificate, b"request_status", request_id, b"reject_code") == ("found", b"\x03")
    message = lookup(certificate, b"request_status", request_id, b"reject_message")[1]
    assert message is not None
    assert b"has no update method 'no_such_method'" in message
    assert lookup(certificate, b"request_status", request_id, b"error_code") == ("found", b"IC0536")


async def test_a_trapping_canister_rejects_with_canister_error(agent: TestAgent) -> None:
    request_id, certificate = await sync_call(agent, "trap")
    assert lookup(certificate, b"request_status", request_id, b"reject_code") == ("found", b"\x05")
    message = lookup(certificate, b"request_status", request_id, b"reject_message")[1]
    assert message is not None
    assert b"boom" in message
    assert lookup(certificate, b"request_status", request_id, b"error_code") == ("found", b"IC0503")


async def test_a_replayed_request_is_not_executed_again(
    agent: TestAgent, echo_canisters: EchoCanisters
) -> None:
    identity = core.Ed25519Identity.generate()
    content = agent.content(
        "call", identity.principal, nonce=b"\x01" * 8, canister_id=CANISTER, method_name="echo", arg=b"once"
    )
    envelope = core.sign_envelope(identity, content)
    request_id = core.request_id(content)
    path = f"/api/v3/canister/{core.principal_to_text(CANISTER)}/call"
    answers = [await agent.post(path, envelope) for _ in range(2)]
    answers.append(await agent.post(path.replace("v3", "v2"), envelope))
    assert [a.status for a in answers] == [200, 200, 202]
    for answer in answers[:2]:
        certificate = answer.cbor()["certificate"]
        assert lookup(certificate, b"request_status", request_id, b"reply") == ("found", b"once")
    assert len(echo_canisters.made[CANISTER].update_calls) == 1


async def test_calls_in_one_round_share_one_certification(agent: TestAgent) -> None:
    answers = await asyncio.gather(*(agent.call(CANISTER, "echo", bytes([i])) for i in range(20)))
    signatures = set()
    for request_id, response in answers:
        certificate = response.cbor()["certificate"]
        assert lookup(certificate, b"request_status", request_id, b"status") == ("found", b"replied")
        signatures.add(core.cbor_decode(certificate)["signature"])  # type: ignore[index]
    # Twenty calls sent at once are executed in far fewer rounds than twenty (one signature each).
    assert len(signatures) < 10


@pytest.mark.parametrize("replica_config", [make_config(call_delay_ms=400, sync_call_timeout_ms=50)])
async def test_a_sync_call_that_outlasts_the_timeout_answers_202(agent: TestAgent) -> None:
    request_id, response = await agent.call(CANISTER, "echo", b"late")
    assert (response.status, response.body) == (202, b"")
    answer = await agent.read_state(CANISTER, [[b"request_status", request_id]])
    assert lookup(answer.cbor()["certificate"], b"request_status", request_id, b"status") == (
        "found",
        b"received",
    )
    await asyncio.sleep(0.5)
    answer = await agent.read_state(CANISTER, [[b"request_status", request_id]])
    assert lookup(answer.cbor()["certificate"], b"request_status", request_id, b"reply") == ("found", b"late")


async def test_request_statuses_become_done_then_are_pruned(agent: TestAgent, clock: ManualClock) -> None:
    # Replied statuses turn "done" after 5 minutes; the record stays until its expiry has passed.
    request_id, _ = await sync_call(
        agent, "echo", b"x", expiry_ns=clock.now_ns() + 5 * MINUTE_NS + 20_000_000_000
    )
    clock.advance(TERMINAL_STATUS_KEPT_NS + 1)
    certificate = (await agent.read_state(CANISTER, [[b"request_status", request_id]])).cbor()["certificate"]
    assert lookup(certificate, b"request_status", request_id, b"status") == ("found", b"done")
    assert lookup(certificate, b"request_status", request_id, b"reply") == ("absent", None)
    clock.advance(MINUTE_NS)  # past the call's ingress_expiry
    certificate = (await agent.read_state(CANISTER, [[b"request_status", request_id]])).cbor()["certificate"]
    assert lookup(certificate, b"request_status", request_id, b"status") == ("absent", None)


# --- non-replicated rejections ------------------------------------------------------------------------


async def test_a_call_to_an_unknown_canister_is_a_non_replicated_rejection(agent: TestAgent) -> None:
    _, v2 = await agent.call(OTHER_CANISTER, "echo", version="v2")
    assert v2.status == 200
    text = core.principal_to_text(OTHER_CANISTER)
    assert v2.cbor() == {
        "reject_code": 3,
        "reject_message": f"Canister {text} not found",
        "error_code": "IC0301",
    }
    for version in ("v3", "v4"):
        _, response = await agent.call(OTHER_CANISTER, "echo", version=version)
        assert response.status == 200
        assert response.cbor() == {
            "status": "non_replicated_rejection",
            "reject_code": 3,
            "reject_message": f"Canister {text} not found",
            "error_code": "IC0301",
        }


# --- queries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v2", "v3"])
async def test_query_replies_are_signed_by_the_certified_node_key(agent: TestAgent, version: str) -> None:
    identity = core.Ed25519Identity.generate()
    request_id, response = await agent.query(
        CANISTER, "greet", candid_text("world"), version=version, identity=identity
    )
    body = await verified_query(agent, request_id, response)
    assert body["status"] == "replied"
    assert decode_candid_text(body["reply"]["arg"]) == "Hello, world"
    assert body["signatures"][0]["identity"] == agent.replica.node_identity.principal


async def test_query_rejections_are_signed(agent: TestAgent) -> None:
    request_id, response = await agent.query(CANISTER, "reject_query")
    body = await verified_query(agent, request_id, response)
    assert (body["status"], body["reject_code"], body["reject_message"], body["error_code"]) == (
        "rejected",
        4,
        "no",
        "IC0406",
    )
    request_id, response = await agent.query(CANISTER, "echo")  # an update method
    body = await verified_query(agent, request_id, response)
    assert (body["status"], body["reject_code"], body["error_code"]) == ("rejected", 3, "IC0536")
    assert "has no query method 'echo'" in body["reject_message"]
    request_id, response = await agent.query(OTHER_CANISTER, "greet", candid_text("x"))
    body = await verified_query(agent, request_id, response)
    assert (body["status"], body["reject_code"], body["error_code"]) == ("rejected", 3, "IC0301")


async def test_queries_run_on_certified_state(agent: TestAgent) -> None:
    # An update changes certified_data; a query right after must see a certificate of the new value.
    for i in range(5):
        await sync_call(agent, "set_data", bytes([i]))
        _, response = await agent.query(CANISTER, "data_certificate")
        data_certificate = response.cbor()["reply"]["arg"]
        verify(agent.replica, data_certificate, canister_id=CANISTER)
        expected = hashlib.sha256(bytes([i])).digest()
        assert lookup(data_certificate, b"canister", CANISTER, b"certified_data") == ("found", expected)


async def test_a_data_certificate_is_refused_outside_queries(agent: TestAgent, replica: Replica) -> None:
    with pytest.raises(RuntimeError, match="only available to a query"):
        replica.data_certificate(CANISTER)


@pytest.mark.parametrize("replica_config", [make_config(query_delay_ms=60)])
async def test_query_delay_is_simulated(agent: TestAgent) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, response = await agent.query(CANISTER, "greet", candid_text("slow"))
    assert response.status == 200
    assert loop.time() - started >= 0.06


# --- the synthetic vectors ----------------------------------------------------------------------------


# The vectors' reply bytes, taken as they are: their Candid text length byte says 11 for the 12 bytes of
# "Hello, hello", so no Candid encoder produces them; the vector canister returns them verbatim.
VECTOR_REPLY = bytes.fromhex(SYNTHETIC["query_response_signatures"]["replied"]["reply_arg_hex"])


class VectorCanister(EchoCanister):
    def handle_query(self, method_name: str, arg: bytes, caller: bytes) -> Outcome:
        if method_name == "greet" and decode_candid_text(arg) == "hello":
            return Reply(VECTOR_REPLY)
        return super().handle_query(method_name, arg, caller)


def _vector_replica(clock_ns: int) -> Replica:
    config = make_config(
        root_key_secret=VECTOR_ROOT_SECRET,
        node_identity=core.Ed25519Identity.from_secret_key(VECTOR_NODE_SECRET),
        canisters=1,
    )
    return Replica(
        config,
        canister_factory=lambda _, host: VectorCanister(VECTOR_CANISTER, host),
        clock=ManualClock(clock_ns),
    )


async def test_query_response_bytes_match_the_synthetic_vector() -> None:
    vector = SYNTHETIC["query_response_signatures"]
    replied = vector["replied"]
    replica = _vector_replica(int(replied["timestamp"]))
    await replica.start()
    try:
        async with aiohttp.ClientSession() as session:
            agent = TestAgent(replica, session)
            query = vector["query_content"]
            content = {
                "request_type": "query",
                "sender": bytes.fromhex(query["sender_hex"]),
                "canister_id": core.principal_from_text(query["canister_id"]),
                "method_name": query["method_name"],
                "arg": bytes.fromhex(query["arg_hex"]),
                "ingress_expiry": int(query["ingress_expiry"]),
            }
            assert core.request_id(content).hex() == vector["request_id_hex"]
            response = await agent.post(
                f"/api/v2/canister/{query['canister_id']}/query", core.cbor_encode({"content": content})
            )
            assert response.body.hex() == replied["full_query_response_body_cbor_hex"]

            # The vector's signed query envelope (user key of RFC 8032 test 2) is accepted as it is.
            envelope = bytes.fromhex(SYNTHETIC["signed_query_envelope"]["envelope_cbor_hex"])
            response = await agent.post(f"/api/v2/canister/{query['canister_id']}/query", envelope)
            request_id = bytes.fromhex(SYNTHETIC["signed_query_envelope"]["content_request_id_hex"])
            body = await verified_query(agent, request_id, response)
            assert body["reply"]["arg"].hex() == replied["reply_arg_hex"]
    finally:
        await replica.stop()


async def test_signed_query_rejection_matches_the_synthetic_vector() -> None:
    vector = SYNTHETIC["query_response_signatures"]
    rejected = vector["rejected"]
    replica = _vector_replica(int(rejected["timestamp"]))
    await replica.start()
    try:
        response = replica._endpoints.signed_query_response(
            bytes.fromhex(vector["request_id_hex"]),
            Reject(rejected["reject_code"], rejected["reject_message"], rejected["error_code"]),
        )
        body = core.cbor_decode(response.body)
        assert isinstance(body, dict)
        assert body["signatures"][0]["signature"].hex() == rejected["signature_hex"]
        assert body["signatures"][0]["timestamp"] == int(rejected["timestamp"])
    finally:
        await replica.stop()


async def test_a_call_certificate_reproduces_the_synthetic_request_status() -> None:
    vector = SYNTHETIC["synthetic_call_certificate"]
    replica = _vector_replica(int(vector["time_ns"]))
    await replica.start()
    try:
        async with aiohttp.ClientSession() as session:
            agent = TestAgent(replica, session)
            call = vector["call_content"]
            canister_id = core.principal_from_text(call["canister_id"])
            content = {
                "request_type": "call",
                "sender": bytes.fromhex(call["sender_hex"]),
                "canister_id": canister_id,
                "method_name": call["method_name"],
                "arg": bytes.fromhex(call["arg_hex"]),
                "ingress_expiry": int(call["ingress_expiry"]),
                "nonce": bytes.fromhex(call["nonce_hex"]),
            }
            request_id = bytes.fromhex(vector["request_id_hex"])
            response = await agent.post(
                f"/api/v3/canister/{call['canister_id']}/call", core.cbor_encode({"content": content})
            )
            certificate = response.cbor()["certificate"]
            core.verify_certificate(certificate, replica.root_key_der, canister_id=canister_id)
            expected = vector["expected_lookups"]
            assert lookup(certificate, b"request_status", request_id, b"status") == ("found", b"replied")
            assert lookup(certificate, b"request_status", request_id, b"reply") == (
                "found",
                bytes.fromhex(expected["request_status/<rid>/reply"]),
            )
            assert lookup(certificate, b"time") == ("found", bytes.fromhex("8098ba8fa99ee7cb17"))
            # The revealed /request_status subtree is byte for byte the vector's.
            tree = core.cbor_decode(certificate)["tree"]  # type: ignore[index]
            vector_tree = core.cbor_decode(bytes.fromhex(vector["tree_cbor_hex"]))
            assert _labeled(tree, b"request_status") == _labeled(vector_tree, b"request_status")
    finally:
        await replica.stop()


def _signed_certificate(tree: SmallMap) -> bytes:
    """A certificate of exactly `tree`, signed with the vectors' root key."""
    signature = core.bls_sign(VECTOR_ROOT_SECRET, STATE_ROOT_DOMAIN + tree.digest())
    return core.cbor_encode({"tree": tree.render(None), "signature": signature})


def test_the_state_tree_builders_reproduce_the_synthetic_certificates() -> None:
    """The synthetic certificates each hold a whole (tiny) state tree; the emulator's builders for
    those parts, its tree shapes and its certificate encoding give the same bytes."""
    root_key = bytes.fromhex(SYNTHETIC["keys"]["emulator_root_key_der_hex"])
    node_key = bytes.fromhex(SYNTHETIC["keys"]["node_ed25519_public_der_hex"])
    vector = SYNTHETIC["synthetic_subnet_certificate"]
    subnet = SubnetInfo(
        subnet_id=core.self_authenticating_principal(root_key),
        public_key_der=root_key,
        node_id=core.self_authenticating_principal(node_key),
        node_public_key_der=node_key,
        canister_ranges=(
            (bytes.fromhex(vector["canister_range"][0]), bytes.fromhex(vector["canister_range"][1])),
        ),
    )
    assert subnet.subnet_id.hex() == vector["subnet_id_hex"]
    tree = SmallMap(
        [(b"subnet", subnet_subtrees(subnet)[b"subnet"]), (b"time", leb128(int(vector["time_ns"])))]
    )
    certificate = _signed_certificate(tree)
    assert certificate.hex() == vector["certificate_cbor_hex"]
    assert core.cbor_encode({"certificate": certificate}).hex() == vector["read_state_response_body_cbor_hex"]

    vector = SYNTHETIC["synthetic_call_certificate"]
    record = IngressRecord(
        request_id=bytes.fromhex(vector["request_id_hex"]),
        sender=ANONYMOUS,
        canister_id=VECTOR_CANISTER,
        method_name="greet",
        arg=b"",
        ingress_expiry=0,
        status="replied",
        outcome=Reply(VECTOR_REPLY),
    )
    statuses = SmallMap([(record.request_id, request_status_subtree(record))])
    tree = SmallMap([(b"request_status", statuses), (b"time", leb128(int(vector["time_ns"])))])
    assert tree.digest().hex() == vector["root_hash_hex"]
    certificate = _signed_certificate(tree)
    assert certificate.hex() == vector["certificate_cbor_hex"]
    body = core.cbor_encode({"status": "replied", "certificate": certificate})
    assert body.hex() == vector["v3_call_response_body_cbor_hex"]


def _labeled(tree: Any, label: bytes) -> Any:
    """The subtree under a top-level label of a (pruned) tree in CBOR array form."""
    if tree[0] == 1:
        return _labeled(tree[1], label) or _labeled(tree[2], label)
    if tree[0] == 2 and tree[1] == label:
        return tree[2]
    return None


# --- read_state -----------------------------------------------------------------------------------------


async def test_unknown_request_ids_are_provably_absent(agent: TestAgent) -> None:
    unknown = hashlib.sha256(b"never sent").digest()
    # With no request status at all, and then among many.
    for _ in range(2):
        response = await agent.read_state(CANISTER, [[b"request_status", unknown]])
        certificate = response.cbor()["certificate"]
        verify(agent.replica, certificate, canister_id=CANISTER)
        assert lookup(certificate, b"request_status", unknown, b"status") == ("absent", None)
        assert lookup(certificate, b"request_status", unknown) == ("absent", None)
        await asyncio.gather(*(agent.call(CANISTER, "echo", bytes([i])) for i in range(30)))
    for label in (b"\x00" * 32, b"\xff" * 32):
        certificate = (await agent.read_state(CANISTER, [[b"request_status", label]])).cbor()["certificate"]
        assert lookup(certificate, b"request_status", label, b"status") == ("absent", None)


@pytest.mark.parametrize("version", ["v2", "v3"])
async def test_read_state_reveals_only_what_was_asked(
    agent: TestAgent, replica: Replica, version: str
) -> None:
    candid_path = [b"canister", CANISTER, b"metadata", b"candid:service"]
    response = await agent.read_state(CANISTER, [[b"time"], candid_path], version=version)
    certificate = response.cbor()["certificate"]
    verify(replica, certificate, canister_id=CANISTER)
    candid = lookup(certificate, *candid_path)
    assert candid == ("found", replica.canisters[CANISTER].candid_interface.encode())
    assert core.cbor_decode(certificate).keys() == {"tree", "signature"}  # type: ignore[attr-defined]
    assert lookup(certificate, b"subnet", replica.subnet.subnet_id, b"public_key")[0] == "unknown"
    assert lookup(certificate, b"canister", CANISTER, b"certified_data")[0] == "unknown"


async def test_subnet_read_state_serves_both_range_layouts(agent: TestAgent, replica: Replica) -> None:
    subnet_id = replica.subnet.subnet_id
    response = await agent.read_state(
        subnet_id, [[b"canister_ranges", subnet_id], [b"subnet", subnet_id]], version="v3", scope="subnet"
    )
    assert response.status == 200, response.body
    certificate = response.cbor()["certificate"]
    verify(replica, certificate, subnet_id=subnet_id)
    lo, hi = replica.config.canister_range
    assert lookup(certificate, b"canister_ranges", subnet_id, lo) == ("found", core.cbor_encode([[lo, hi]]))
    assert lookup(certificate, b"subnet", subnet_id, b"canister_ranges") == (
        "found",
        core.cbor_encode([[lo, hi]]),
    )
    node_id = replica.node_identity.principal
    assert lookup(certificate, b"subnet", subnet_id, b"node", node_id, b"public_key") == (
        "found",
        replica.node_identity.der_public_key,
    )


# --- read_state permissions (IC-INTERFACE.md §1) ------------------------------------------------------


async def test_only_the_sender_may_read_a_request_status(agent: TestAgent) -> None:
    owner = core.Ed25519Identity.generate()
    request_id, _ = await sync_call(agent, "echo", b"mine", identity=owner)
    stranger = core.Ed25519Identity.generate()
    response = await agent.read_state(CANISTER, [[b"request_status", request_id]], identity=stranger)
    assert response.status == 403
    assert "signed by the caller" in response.text
    anonymous = await agent.read_state(CANISTER, [[b"request_status", request_id]])
    assert anonymous.status == 403
    # ... and only through the canister it was sent to.
    response = await agent.read_state(OTHER_CANISTER, [[b"request_status", request_id]], identity=owner)
    assert response.status == 403
    response = await agent.read_state(CANISTER, [[b"request_status", request_id, b"reply"]], identity=owner)
    assert response.status == 200


@pytest.mark.parametrize(
    ("paths", "status", "message"),
    [
        ([[b"canister", CANISTER, b"certified_data"]], 404, "Invalid path requested"),
        ([[b"canister", CANISTER]], 404, "Invalid path requested"),
        ([[b"request_status"]], 404, "Invalid path requested"),
        ([[b"request_status", b"a" * 32, b"nonsense"]], 404, "Invalid path requested"),
        ([[b"unknown"]], 404, "Invalid path requested"),
        ([[]], 404, "Invalid path requested"),
        ([[b"canister_ranges", b"x"]], 404, "Invalid path requested"),
        ([[b"request_status", b"a" * 32], [b"request_status", b"b" * 32]], 400, "single request ID"),
        ([[b"canister", OTHER_CANISTER, b"metadata", b"candid:service"]], 400, "does not match"),
        ([[b"canister", OTHER_CANISTER, b"module_hash"]], 400, "does not match"),
    ],
)
async def test_forbidden_read_state_paths(
    agent: TestAgent, paths: list[list[bytes]], status: int, message: str
) -> None:
    response = await agent.read_state(CANISTER, paths)
    assert response.status == status, response.body
    assert message in response.text


async def test_foreign_subnet_ranges_are_readable_only_on_v2(agent: TestAgent) -> None:
    foreign = core.principal_from_text("tdb26-jop6k-aogll-7ltgs-eruif-6kk7m-qpktf-gdiqx-mxtrf-vb5e6-eqe")
    path = [[b"subnet", foreign, b"canister_ranges"]]
    v2 = await agent.read_state(CANISTER, path, version="v2")
    assert v2.status == 200
    assert lookup(v2.cbor()["certificate"], b"subnet", foreign, b"canister_ranges") == ("absent", None)
    v3 = await agent.read_state(CANISTER, path, version="v3")
    assert v3.status == 404


async def test_subnet_scoped_requests_name_this_subnet(agent: TestAgent) -> None:
    foreign = core.principal_from_text("tdb26-jop6k-aogll-7ltgs-eruif-6kk7m-qpktf-gdiqx-mxtrf-vb5e6-eqe")
    response = await agent.read_state(foreign, [[b"time"]], scope="subnet", version="v3")
    assert response.status == 400
    assert "not this replica's subnet" in response.text


async def test_read_state_honours_delegation_targets(agent: TestAgent) -> None:
    owner = core.Ed25519Identity.generate()
    session_key = core.Ed25519Identity.generate()
    delegation = {
        "pubkey": session_key.der_public_key,
        "expiration": agent.now_ns + 10 * MINUTE_NS,
        "targets": [OTHER_CANISTER],
    }
    signed_delegation = {
        "delegation": delegation,
        "signature": owner.sign(DELEGATION_DOMAIN + core.request_id(delegation)),
    }
    content = agent.content("read_state", owner.principal, paths=[[b"time"]])
    envelope = core.cbor_encode(
        {
            "content": content,
            "sender_pubkey": owner.der_public_key,
            "sender_delegation": [signed_delegation],
            "sender_sig": session_key.sign(REQUEST_DOMAIN + core.request_id(content)),
        }
    )
    allowed = await agent.post(
        f"/api/v2/canister/{core.principal_to_text(OTHER_CANISTER)}/read_state", envelope
    )
    assert allowed.status == 200, allowed.body
    refused = await agent.post(f"/api/v2/canister/{core.principal_to_text(CANISTER)}/read_state", envelope)
    assert refused.status == 400
    assert "delegation targets" in refused.text


# --- invalid requests ---------------------------------------------------------------------------------


def _signed(
    agent: TestAgent, content: dict[str, Any], identity: core.Ed25519Identity, **envelope: Any
) -> bytes:
    request_id = core.request_id(content)
    fields = {
        "content": content,
        "sender_pubkey": identity.der_public_key,
        "sender_sig": identity.sign(REQUEST_DOMAIN + request_id),
    }
    fields.update(envelope)
    return core.cbor_encode(fields)


async def test_invalid_envelopes_are_400(agent: TestAgent, echo_canisters: EchoCanisters) -> None:
    identity = core.Ed25519Identity.generate()
    other = core.Ed25519Identity.generate()
    path = f"/api/v3/canister/{core.principal_to_text(CANISTER)}/call"

    def call(sender: bytes = identity.principal, **kw: Any) -> dict[str, Any]:
        return agent.content("call", sender, canister_id=CANISTER, method_name="echo", arg=b"", **kw)

    cases = {
        "bad CBOR": (b"\xd9\xd9\xf7\xa1\x67content\xff", "invalid call request"),
        "not a map": (core.cbor_encode([1, 2]), "invalid call request"),
        "bad signature": (
            _signed(agent, call(), identity, sender_sig=identity.sign(b"something else")),
            "invalid call request",
        ),
        "wrong sender": (_signed(agent, call(other.principal), identity), "invalid call request"),
        "expired": (_signed(agent, call(expiry_ns=agent.now_ns - 1), identity), "has passed"),
        "too far ahead": (_signed(agent, call(expiry_ns=agent.now_ns + 10 * MINUTE_NS), identity), "future"),
        "anonymous with signature": (_signed(agent, call(ANONYMOUS), identity), "anonymous"),
        "nonce too long": (_signed(agent, call(nonce=b"n" * 33), identity), "nonce"),
    }
    for name, (body, message) in cases.items():
        response = await agent.post(path, body)
        assert response.status == 400, (name, response.status, response.body)
        assert message.lower() in response.text.lower(), (name, response.text)
        assert response.headers["Content-Type"].startswith("text/plain")
    assert echo_canisters.made[CANISTER].update_calls == []


async def test_requests_that_do_not_fit_the_endpoint_are_400(agent: TestAgent) -> None:
    query = agent.envelope(agent.content("query", canister_id=CANISTER, method_name="greet", arg=b""))
    text = core.principal_to_text(CANISTER)
    response = await agent.post(f"/api/v3/canister/{text}/call", query)
    assert response.status == 400
    assert "takes call requests" in response.text
    response = await agent.post(f"/api/v2/canister/{core.principal_to_text(OTHER_CANISTER)}/query", query)
    assert response.status == 400
    assert "does not match effective canister id" in response.text
    response = await agent.post("/api/v2/canister/not-a-principal/query", query)
    assert response.status == 400
    assert "invalid effective canister id" in response.text


async def test_http_errors_for_paths_methods_and_sizes(agent: TestAgent, replica: Replica) -> None:
    text = core.principal_to_text(CANISTER)
    assert (await agent.get("/api/v9/status")).status == 404
    assert (await agent.post(f"/api/v1/canister/{text}/call", b"")).status == 404
    assert (await agent.post(f"/api/v4/canister/{text}/query", b"")).status == 404
    assert (await agent.post(f"/api/v3/canister/{text}/frobnicate", b"")).status == 404
    assert (await agent.post("/_admin/time", b"")).status == 404  # admin is off by default
    wrong_method = await agent.get(f"/api/v3/canister/{text}/call")
    assert wrong_method.status == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert (await agent.post("/api/v2/status", b"")).status == 405
    oversized = await agent.post(f"/api/v3/canister/{text}/call", b"\0" * (replica.config.max_body_bytes + 1))
    assert oversized.status == 413


async def test_the_candid_interface_is_served(agent: TestAgent, replica: Replica) -> None:
    response = await agent.get(f"/_/candid/{core.principal_to_text(CANISTER)}")
    assert response.status == 200
    assert response.text == replica.canisters[CANISTER].candid_interface
    assert (await agent.get(f"/_/candid/{core.principal_to_text(OTHER_CANISTER)}")).status == 404
    assert (await agent.get("/_/candid/zzz")).status == 400


# --- admin and faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("replica_config", [make_config(allow_admin=True)])
async def test_admin_advances_time_and_the_next_certificate_follows(
    agent: TestAgent, clock: ManualClock
) -> None:
    before = clock.now_ns()
    fired: list[int] = []
    clock.call_later(90 * 1_000_000_000, lambda: fired.append(clock.now_ns()))
    response = await agent.post("/_admin/advance_time", b'{"seconds": 120}')
    assert response.status == 200, response.body
    assert fired, "the timer that fell due fired"
    now = int(__import__("orjson").loads(response.body)["now_ns"])
    assert now == before + 120 * 1_000_000_000 == clock.now_ns()
    response = await agent.post("/_admin/advance_time", core.cbor_encode({"ms": 1500}))
    assert response.status == 200
    certificate = (await agent.read_state(CANISTER, [[b"time"]])).cbor()["certificate"]
    certified = lookup(certificate, b"time")[1]
    assert certified is not None
    assert decode_unsigned(certified) == before + 121_500_000_000
    bad = await agent.post("/_admin/advance_time", b'{"seconds": -1}')
    assert bad.status == 400
    assert (await agent.get("/_admin/time")).status == 200


def _fault_config(**fractions: float) -> ReplicaConfig:
    return make_config(faults=FaultConfig(seed=7, timeout_hold_ms=100, **fractions))


@pytest.mark.parametrize("replica_config", [_fault_config(fraction_5xx=1.0)])
async def test_fault_5xx(agent: TestAgent, echo_canisters: EchoCanisters) -> None:
    _, response = await agent.call(CANISTER, "echo", b"x")
    assert response.status == 503
    assert (await agent.get("/api/v2/status")).status == 200  # status is never faulted
    assert echo_canisters.made[CANISTER].update_calls == []


@pytest.mark.parametrize("replica_config", [_fault_config(fraction_drop=1.0)])
async def test_fault_drop_closes_the_connection(agent: TestAgent) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await agent.query(CANISTER, "greet", candid_text("x"))


@pytest.mark.parametrize("replica_config", [_fault_config(fraction_timeout=1.0)])
async def test_fault_timeout_holds_then_closes(agent: TestAgent) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await agent.read_state(CANISTER, [[b"time"]])
    assert loop.time() - started >= 0.1


async def test_faults_are_seeded_and_proportional() -> None:
    from icgw.replica.faults import FaultInjector

    config = FaultConfig(fraction_5xx=0.1, fraction_timeout=0.05, fraction_drop=0.05, seed=42)
    draws = [FaultInjector(config).draw() for _ in range(1)]
    first = FaultInjector(config)
    second = FaultInjector(config)
    sequence = [first.draw() for _ in range(2000)]
    assert sequence == [second.draw() for _ in range(2000)]
    assert draws[0] == sequence[0]
    assert 150 < sequence.count("5xx") < 250
    assert 50 < sequence.count("timeout") < 150
    assert 50 < sequence.count("drop") < 150
    assert first.counts.total == sum(x is not None for x in sequence)
    assert FaultInjector(FaultConfig()).draw() is None


# --- HTTP/1.1 ---------------------------------------------------------------------------------------


async def _raw_exchange(replica: Replica, data: bytes, *, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
    try:
        writer.write(data)
        await writer.drain()
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 10)
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def _split_responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in a byte stream of HTTP/1.1 responses with Content-Length."""
    responses = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
        )
        responses.append((status, rest[:length]))
        raw = rest[length:]
    return responses


def _post(path: str, body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


@pytest.mark.parametrize("replica_config", [make_config(query_delay_ms=50)])
async def test_pipelined_requests_are_answered_in_order(agent: TestAgent, replica: Replica) -> None:
    text = core.principal_to_text(CANISTER)
    slow_query = agent.envelope(
        agent.content("query", canister_id=CANISTER, method_name="greet", arg=candid_text("slow"))
    )
    pipeline = (
        _post(f"/api/v2/canister/{text}/query", slow_query)  # answered after 50 ms
        + b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\n\r\n"  # ready at once
        + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    responses = _split_responses(await _raw_exchange(replica, pipeline))
    assert [status for status, _ in responses] == [200, 200, 404, 200]
    first = core.cbor_decode(responses[0][1])
    assert isinstance(first, dict)
    assert decode_candid_text(first["reply"]["arg"]) == "Hello, slow"
    assert core.cbor_decode(responses[1][1])["root_key"] == replica.root_key_der  # type: ignore[index]


async def test_keep_alive_serves_many_requests_on_one_connection(replica: Replica) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
    try:
        for _ in range(50):
            writer.write(b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.close()


async def test_malformed_http_is_400_and_closes(replica: Replica) -> None:
    raw = await _raw_exchange(replica, b"GARBAGE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"malformed HTTP request" in raw
    raw = await _raw_exchange(replica, b"GET /api/v2/status HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    raw = await _raw_exchange(replica, b"GET http://[bad HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"invalid request target" in raw


async def test_chunked_bodies_and_expect_continue(agent: TestAgent, replica: Replica) -> None:
    text = core.principal_to_text(CANISTER)
    body = agent.envelope(
        agent.content("query", canister_id=CANISTER, method_name="greet", arg=candid_text("x"))
    )
    half = len(body) // 2
    chunked = (
        f"POST /api/v2/canister/{text}/query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    for part in (body[:half], body[half:]):
        chunked += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    chunked += b"0\r\n\r\n"
    ((status, answer),) = _split_responses(await _raw_exchange(replica, chunked))
    assert status == 200
    assert decode_candid_text(core.cbor_decode(answer)["reply"]["arg"]) == "Hello, x"  # type: ignore[index]

    reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
    try:
        writer.write(
            f"POST /api/v2/canister/{text}/query HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        ((status, _),) = _split_responses(await asyncio.wait_for(reader.read(), 5))
        assert status == 200
    finally:
        writer.close()


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(replica: Replica) -> None:
    head = f"POST /api/v2/canister/x/call HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n"
    raw = await _raw_exchange(replica, head.encode())
    assert raw.startswith(b"HTTP/1.1 413 ")


async def test_subnet_scoped_calls_and_queries_are_for_the_management_canister(
    agent: TestAgent, replica: Replica
) -> None:
    subnet = core.principal_to_text(replica.subnet.subnet_id)
    call = agent.envelope(agent.content("call", canister_id=CANISTER, method_name="echo", arg=b""))
    response = await agent.post(f"/api/v4/subnet/{subnet}/call", call)
    assert response.status == 400
    assert "only for the management canister" in response.text
    create = agent.envelope(agent.content("call", canister_id=b"", method_name="create_canister", arg=b""))
    response = await agent.post(f"/api/v4/subnet/{subnet}/call", create)
    assert response.status == 200
    body = response.cbor()
    assert (body["status"], body["reject_code"]) == ("non_replicated_rejection", 3)
    assert "no management canister" in body["reject_message"]
    list_canisters = agent.content("query", canister_id=b"", method_name="list_canisters", arg=b"")
    response = await agent.post(f"/api/v3/subnet/{subnet}/query", agent.envelope(list_canisters))
    body = await verified_query(agent, core.request_id(list_canisters), response)
    assert (body["status"], body["reject_code"]) == ("rejected", 3)


async def test_these_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


# --- the built-in CDK test canister ---------------------------------------------------------------


async def test_the_builtin_cdk_canister_over_http(clock: ManualClock) -> None:
    """A client opens a connection with a signed v3 call; the gateway polls with a signed query and
    checks every message as the SDK does: data certificate, tree root = certified data, leaf = hash."""
    from icgw.replica.canister import canister_id_for_index
    from icgw.replica.test_canister import TestCanisterCalls, decode_app_message

    replica = Replica(make_config(canisters=2), clock=clock)
    await replica.start()
    try:
        assert replica.canister_ids == [canister_id_for_index(0), canister_id_for_index(1)]
        canister = replica.canister_ids[1]
        client = core.Ed25519Identity.generate()
        gateway = core.Ed25519Identity.generate()
        async with aiohttp.ClientSession() as session:
            agent = TestAgent(replica, session)
            open_call = TestCanisterCalls.ws_open(client_nonce=7, gateway_principal=gateway.principal)
            request_id, response = await agent.call(canister, "ws_open", open_call.arg, identity=client)
            certificate = response.cbor()["certificate"]
            verify(replica, certificate, canister_id=canister)
            status, reply = lookup(certificate, b"request_status", request_id, b"reply")
            assert status == "found"
            assert reply is not None
            assert open_call.result(Reply(reply)) == {"Ok": None}

            poll = TestCanisterCalls.ws_get_messages(0)
            request_id, response = await agent.query(canister, "ws_get_messages", poll.arg, identity=gateway)
            body = await verified_query(agent, request_id, response)
            batch = poll.result(Reply(body["reply"]["arg"]))["Ok"]
            assert len(batch["messages"]) == 2  # the OpenMessage and the test canister's "ping"
            verify(replica, batch["cert"], canister_id=canister)
            status, certified_data = lookup(batch["cert"], b"canister", canister, b"certified_data")
            assert status == "found"
            assert core.hash_tree_root(batch["tree"]) == certified_data
            for message in batch["messages"]:
                leaf = core.lookup_path(batch["tree"], [b"websocket", message["key"].encode()])
                assert leaf == ("found", hashlib.sha256(message["content"]).digest())
            ping = core.cbor_decode(batch["messages"][1]["content"])
            assert isinstance(ping, dict)
            assert decode_app_message(ping["content"])["text"] == "ping"
    finally:
        await replica.stop()
