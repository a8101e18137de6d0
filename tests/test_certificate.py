"""Certificates: every mainnet vector, the synthetic emulator vectors, a synthetic delegation chain
built with known keys (both range layouts, scope, cache), freshness, and hostile input."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icgw.core import (
    CertificateError,
    bls_der_public_key,
    bls_public_key,
    bls_sign,
    bls_verify,
    cbor_decode,
    cbor_encode,
    certificate_cache_clear,
    certificate_cache_stats,
    hash_tree_digest,
    hash_tree_encode,
    hash_tree_root,
    lookup_path,
    principal_from_text,
    principal_to_text,
    self_authenticating_principal,
    verify_certificate,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
CERT_FILES = sorted(VECTORS.glob("cert_*.json"))
CERTS = {path.stem: json.loads(path.read_text()) for path in CERT_FILES}
SYNTHETIC = json.loads((VECTORS / "synthetic_emulator_vectors.json").read_text())
STATE_ROOT = b"\x0dic-state-root"
MINUTE_NS = 60 * 1_000_000_000
DAY_NS = 24 * 60 * MINUTE_NS

Tree = tuple[Any, ...]


def cert_bytes(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["certificate_hex"])


def root_key(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["root_key_der_hex"])


def tree_cbor(certificate: bytes) -> bytes:
    """The certificate's tree, re-encoded on its own (the root hash does not depend on the layout)."""
    decoded = cbor_decode(certificate)
    assert isinstance(decoded, dict)
    return cbor_encode(decoded["tree"])


def delegation_of(certificate: bytes) -> dict[str, bytes] | None:
    decoded = cbor_decode(certificate)
    assert isinstance(decoded, dict)
    delegation = decoded.get("delegation")
    assert delegation is None or isinstance(delegation, dict)
    return delegation


def leb128_decode(data: bytes) -> int:
    return sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(data))


def leb128_encode(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def expected_lookup(entry: dict[str, Any]) -> tuple[str, bytes | None]:
    if entry["result"] == "Found":
        return ("found", bytes.fromhex(entry["value_hex"]))
    return (entry["result"].lower(), None)


def verify_in_a_valid_scope(vector: dict[str, Any], certificate: bytes) -> None:
    expected = vector["expected"]
    if expected["verify_mode"] == "subnet":
        subnet = principal_from_text(expected["accept_for_effective_subnet_id"])
        verify_certificate(certificate, root_key(vector), subnet_id=subnet)
    else:
        canister = principal_from_text(expected["accept_for_effective_canister_ids"][0])
        verify_certificate(certificate, root_key(vector), canister_id=canister)


def vector_params(key: str) -> Iterator[Any]:
    for name, vector in CERTS.items():
        for i, entry in enumerate(vector["expected"][key]):
            yield pytest.param(vector, entry, id=f"{name}[{i}]")


def delegation_lookup_params() -> Iterator[Any]:
    for name, vector in CERTS.items():
        delegation = vector["expected"]["delegation"] or {}
        for i, entry in enumerate(delegation.get("lookups", [])):
            yield pytest.param(vector, entry, id=f"{name}.delegation[{i}]")


def canister_params(key: str) -> Iterator[Any]:
    for name, vector in CERTS.items():
        for i, text in enumerate(vector["expected"].get(key, [])):
            yield pytest.param(vector, text, id=f"{name}:{text}[{i}]")


POSITIVE = {name: v for name, v in CERTS.items() if v["expected"]["overall_valid_for_accepted_ids"]}
NEGATIVE = {name: v for name, v in CERTS.items() if not v["expected"]["overall_valid_for_accepted_ids"]}


def test_the_vector_set_is_complete() -> None:
    assert len(CERTS) == 10
    assert len(POSITIVE) == 8
    assert len(NEGATIVE) == 2


# --- every mainnet certificate vector ------------------------------------------------------------


@pytest.mark.parametrize("vector", CERTS.values(), ids=CERTS.keys())
def test_root_hash_signature_and_time(vector: dict[str, Any]) -> None:
    expected = vector["expected"]
    certificate = cert_bytes(vector)
    assert hash_tree_root(tree_cbor(certificate)).hex() == expected["root_hash_hex"]
    decoded = cbor_decode(certificate)
    assert isinstance(decoded, dict)
    assert decoded["signature"].hex() == expected["signature_hex"]
    found, time = lookup_path(tree_cbor(certificate), [b"time"])
    assert found == "found"
    assert time is not None
    assert leb128_decode(time) == int(expected["time_ns"])
    if "response_body_hex" in vector:
        body = cbor_decode(bytes.fromhex(vector["response_body_hex"]))
        assert isinstance(body, dict)
        assert body["certificate"] == certificate


@pytest.mark.parametrize("vector", CERTS.values(), ids=CERTS.keys())
def test_delegation_facts(vector: dict[str, Any]) -> None:
    expected = vector["expected"]["delegation"]
    delegation = delegation_of(cert_bytes(vector))
    if expected is None:
        assert delegation is None
        return
    assert delegation is not None
    assert delegation["subnet_id"].hex() == expected["subnet_id_hex"]
    assert principal_to_text(delegation["subnet_id"]) == expected["subnet_id"]
    inner = delegation["certificate"]
    assert hash_tree_root(tree_cbor(inner)).hex() == expected["certificate_root_hash_hex"]
    inner_decoded = cbor_decode(inner)
    assert isinstance(inner_decoded, dict)
    assert inner_decoded["signature"].hex() == expected["certificate_signature_hex"]
    assert (inner_decoded.get("delegation") is not None) is expected["nested_delegation_present"]
    _, time = lookup_path(tree_cbor(inner), [b"time"])
    assert time is not None
    assert leb128_decode(time) == int(expected["certificate_time_ns"])
    public_key = lookup_path(tree_cbor(inner), [b"subnet", delegation["subnet_id"], b"public_key"])
    assert public_key == ("found", bytes.fromhex(expected["subnet_public_key_der_hex"]))


@pytest.mark.parametrize(("vector", "check"), list(vector_params("bls_checks")))
def test_bls_checks(vector: dict[str, Any], check: dict[str, Any]) -> None:
    message = bytes.fromhex(check["message_hex"])
    valid = bls_verify(
        bytes.fromhex(check["public_key_96_hex"]), bytes.fromhex(check["signature_48_hex"]), message
    )
    assert valid is check["valid"]
    assert vector["expected"]["bls_chain_valid"] is True


@pytest.mark.parametrize(("vector", "canister"), list(canister_params("accept_for_effective_canister_ids")))
def test_accepted_canisters(vector: dict[str, Any], canister: str) -> None:
    assert vector["expected"]["overall_valid_for_accepted_ids"] is True
    verify_certificate(cert_bytes(vector), root_key(vector), canister_id=principal_from_text(canister))


@pytest.mark.parametrize(("vector", "canister"), list(canister_params("reject_for_effective_canister_ids")))
def test_rejected_canisters(vector: dict[str, Any], canister: str) -> None:
    with pytest.raises(CertificateError, match=r"not authorized|canister ranges"):
        verify_certificate(cert_bytes(vector), root_key(vector), canister_id=principal_from_text(canister))


@pytest.mark.parametrize("vector", CERTS.values(), ids=CERTS.keys())
def test_the_signature_chain_alone_verifies_for_every_vector(vector: dict[str, Any]) -> None:
    """Even the negative vectors carry valid signatures: only their scope is unprovable."""
    verify_certificate(cert_bytes(vector), root_key(vector))


SUBNET_SCOPED = [v for v in CERTS.values() if v["expected"]["verify_mode"] == "subnet"]


@pytest.mark.parametrize("vector", SUBNET_SCOPED, ids=lambda v: v["id"])
def test_subnet_scoped_certificates(vector: dict[str, Any]) -> None:
    subnet = principal_from_text(vector["expected"]["accept_for_effective_subnet_id"])
    verify_certificate(cert_bytes(vector), root_key(vector), subnet_id=subnet)
    other = principal_from_text(
        CERTS["cert_mainnet_224od_subnet_v3_2025"]["expected"]["delegation"]["subnet_id"]
    )
    with pytest.raises(CertificateError, match="not authorized: the delegation is for subnet"):
        verify_certificate(cert_bytes(vector), root_key(vector), subnet_id=other)
    # Its delegation carries no ranges, so it proves nothing for a canister-scoped request.
    with pytest.raises(CertificateError, match="canister ranges"):
        verify_certificate(
            cert_bytes(vector),
            root_key(vector),
            canister_id=principal_from_text("rdmx6-jaaaa-aaaaa-aaadq-cai"),
        )


@pytest.mark.parametrize("vector", NEGATIVE.values(), ids=NEGATIVE.keys())
def test_negative_vectors_fail_because_the_ranges_are_pruned(vector: dict[str, Any]) -> None:
    assert "canister ranges" in vector["expected"]["expected_failure_reason"]
    for canister in vector["expected"]["reject_for_effective_canister_ids"]:
        with pytest.raises(CertificateError, match=r"does not reveal the canister ranges .*\(pruned\)"):
            verify_certificate(
                cert_bytes(vector), root_key(vector), canister_id=principal_from_text(canister)
            )


@pytest.mark.parametrize(("vector", "entry"), list(vector_params("lookups")))
def test_certificate_lookups(vector: dict[str, Any], entry: dict[str, Any]) -> None:
    path = [bytes.fromhex(label) for label in entry["path_hex"]]
    assert lookup_path(tree_cbor(cert_bytes(vector)), path) == expected_lookup(entry)
    if "value_decoded_leb128" in entry:
        assert leb128_decode(bytes.fromhex(entry["value_hex"])) == int(entry["value_decoded_leb128"])
    if "value_utf8" in entry:
        assert bytes.fromhex(entry["value_hex"]).decode() == entry["value_utf8"]


@pytest.mark.parametrize(("vector", "entry"), list(delegation_lookup_params()))
def test_delegation_lookups(vector: dict[str, Any], entry: dict[str, Any]) -> None:
    delegation = delegation_of(cert_bytes(vector))
    assert delegation is not None
    path = [bytes.fromhex(label) for label in entry["path_hex"]]
    assert lookup_path(tree_cbor(delegation["certificate"]), path) == expected_lookup(entry)


# --- freshness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", CERTS.values(), ids=CERTS.keys())
def test_freshness(vector: dict[str, Any]) -> None:
    certificate, key = cert_bytes(vector), root_key(vector)
    time_ns = int(vector["expected"]["time_ns"])
    verify_certificate(certificate, key, now_ns=time_ns)
    verify_certificate(certificate, key, now_ns=time_ns + 5 * MINUTE_NS)
    verify_certificate(certificate, key, now_ns=time_ns - 5 * MINUTE_NS)
    with pytest.raises(CertificateError, match=r"too old.*maximum age of 300"):
        verify_certificate(certificate, key, now_ns=time_ns + 5 * MINUTE_NS + 1)
    with pytest.raises(CertificateError, match="too old"):
        verify_certificate(certificate, key, now_ns=time_ns + 365 * DAY_NS)
    with pytest.raises(CertificateError, match="from the future"):
        verify_certificate(certificate, key, now_ns=time_ns - 5 * MINUTE_NS - 1)
    with pytest.raises(CertificateError, match="from the future"):
        verify_certificate(certificate, key, now_ns=time_ns - 365 * DAY_NS)
    verify_certificate(certificate, key, now_ns=time_ns + 60 * MINUTE_NS, max_age_ns=61 * MINUTE_NS)
    with pytest.raises(CertificateError, match=r"maximum age of 60\.000 s"):
        verify_certificate(certificate, key, now_ns=time_ns + 2 * MINUTE_NS, max_age_ns=MINUTE_NS)


# --- tampering ---------------------------------------------------------------------------------------

IVG37 = CERTS["cert_mainnet_ivg37_request_status_rejected_2022"]
IVG37_CANISTER = principal_from_text("ivg37-qiaaa-aaaab-aaaga-cai")
MAINNET_ROOT = root_key(IVG37)


def reencode(certificate: bytes, **changes: object) -> bytes:
    decoded = cbor_decode(certificate)
    assert isinstance(decoded, dict)
    decoded.update(changes)
    return cbor_encode(decoded)


def test_reencoding_keeps_a_certificate_valid() -> None:
    verify_certificate(reencode(cert_bytes(IVG37)), MAINNET_ROOT, canister_id=IVG37_CANISTER)


def test_zero_signature_fails() -> None:
    with pytest.raises(CertificateError, match="does not verify against the subnet key"):
        verify_certificate(reencode(cert_bytes(IVG37), signature=bytes(48)), MAINNET_ROOT)


def test_a_changed_tree_fails() -> None:
    decoded = cbor_decode(cert_bytes(IVG37))
    assert isinstance(decoded, dict)
    tree = hash_tree_encode(tree_from_lists(decoded["tree"]))
    assert lookup_path(tree, [b"time"])[0] == "found"
    changed = replace_leaf(tree_from_lists(decoded["tree"]), b"time", leb128_encode(1))
    with pytest.raises(CertificateError, match="does not verify"):
        verify_certificate(reencode(cert_bytes(IVG37), tree=tree_to_lists(changed)), MAINNET_ROOT)


def test_another_root_key_fails() -> None:
    emulator_root = bytes.fromhex(SYNTHETIC["keys"]["emulator_root_key_der_hex"])
    with pytest.raises(CertificateError, match=r"invalid delegation.*root key"):
        verify_certificate(cert_bytes(IVG37), emulator_root)
    root_signed = cert_bytes(CERTS["cert_mainnet_root_subnet_no_delegation_2023"])
    with pytest.raises(CertificateError, match="does not verify against the root key"):
        verify_certificate(root_signed, emulator_root)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (MAINNET_ROOT[:-1], "133 bytes"),
        (MAINNET_ROOT[37:], "133 bytes"),
        (b"\x00" + MAINNET_ROOT[1:], "prefix"),
    ],
)
def test_malformed_root_keys(key: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=f"invalid root key.*{message}"):
        verify_certificate(cert_bytes(IVG37), key)


def test_a_delegation_for_another_subnet_id_fails() -> None:
    delegation = delegation_of(cert_bytes(IVG37))
    assert delegation is not None
    other = dict(
        delegation,
        subnet_id=principal_from_text("tdb26-jop6k-aogll-7ltgs-eruif-6kk7m-qpktf-gdiqx-mxtrf-vb5e6-eqe"),
    )
    with pytest.raises(CertificateError, match="public key of subnet tdb26"):
        verify_certificate(reencode(cert_bytes(IVG37), delegation=other), MAINNET_ROOT)


def test_nested_delegation_is_rejected() -> None:
    """agent-js's vector: a certificate wrapped as its own delegation."""
    vector = CERTS["cert_mainnet_ii_subnet_with_subnet_tree_2023"]
    inner = cert_bytes(vector)
    inner_delegation = delegation_of(inner)
    assert inner_delegation is not None
    wrapped = reencode(inner, delegation={"subnet_id": inner_delegation["subnet_id"], "certificate": inner})
    with pytest.raises(CertificateError, match="nested delegation"):
        verify_certificate(wrapped, root_key(vector))


def test_scope_ids_must_be_principals() -> None:
    with pytest.raises(CertificateError, match=r"invalid canister id: .*at most 29 bytes"):
        verify_certificate(cert_bytes(IVG37), MAINNET_ROOT, canister_id=bytes(30))
    with pytest.raises(CertificateError, match=r"invalid subnet id: .*at most 29 bytes"):
        verify_certificate(cert_bytes(IVG37), MAINNET_ROOT, subnet_id=bytes(30))


def test_both_scopes_at_once_is_an_error() -> None:
    with pytest.raises(CertificateError, match="not both"):
        verify_certificate(cert_bytes(IVG37), MAINNET_ROOT, canister_id=IVG37_CANISTER, subnet_id=b"\x01")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"signature": bytes(47)}, "48 bytes"),
        ({"signature": "sig"}, "not bytes"),
        ({"tree": [9]}, "unknown node tag 9"),
        ({"delegation": {"subnet_id": b"\x01"}}, 'no "certificate"'),
        ({"delegation": {"subnet_id": b"\x01" * 30, "certificate": b""}}, "at most 29 bytes"),
        ({"delegation": [1]}, "not a map"),
        ({"delegation": {"subnet_id": b"\x01", "certificate": b"\x00"}}, "delegation.*malformed"),
    ],
)
def test_malformed_fields(changes: dict[str, object], message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        verify_certificate(reencode(cert_bytes(IVG37), **changes), MAINNET_ROOT)


def test_missing_fields_and_non_maps() -> None:
    for bad in ({"signature": bytes(48)}, {"tree": [0]}, [1, 2], 7):
        with pytest.raises(CertificateError, match="malformed certificate"):
            verify_certificate(cbor_encode(bad), MAINNET_ROOT)


def test_missing_time_fails_only_when_freshness_is_checked() -> None:
    tree: Tree = ("labeled", b"a", ("leaf", b"b"))
    certificate = make_certificate(tree, EMULATOR_SECRET)
    verify_certificate(certificate, EMULATOR_ROOT_DER)
    with pytest.raises(CertificateError, match="no /time"):
        verify_certificate(certificate, EMULATOR_ROOT_DER, now_ns=1)
    bad_time = make_certificate(("labeled", b"time", ("leaf", b"\x80")), EMULATOR_SECRET)
    with pytest.raises(CertificateError, match="LEB128"):
        verify_certificate(bad_time, EMULATOR_ROOT_DER, now_ns=1)


# --- hostile input ------------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_random_bytes_raise_certificate_error(data: bytes) -> None:
    with pytest.raises(CertificateError):
        verify_certificate(data, MAINNET_ROOT)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CERTS)), st.data())
def test_truncated_certificates_raise_certificate_error(name: str, data: st.DataObject) -> None:
    certificate = cert_bytes(CERTS[name])
    cut = data.draw(st.integers(min_value=0, max_value=len(certificate) - 1))
    with pytest.raises(CertificateError):
        verify_certificate(certificate[:cut], root_key(CERTS[name]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(POSITIVE)), st.data())
def test_any_changed_byte_breaks_a_certificate(name: str, data: st.DataObject) -> None:
    vector = CERTS[name]
    certificate = bytearray(cert_bytes(vector))
    index = data.draw(st.integers(min_value=0, max_value=len(certificate) - 1))
    certificate[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(CertificateError):
        verify_in_a_valid_scope(vector, bytes(certificate))


# --- the synthetic emulator vectors --------------------------------------------------------------------

EMULATOR_SECRET = bytes.fromhex(
    SYNTHETIC["keys"][
        "emulator_root_bls_secret_hex (from verify-bls-signatures test generates_expected_signature)"
    ]
)
EMULATOR_ROOT_DER = bytes.fromhex(SYNTHETIC["keys"]["emulator_root_key_der_hex"])
SYNTHETIC_CERTS = ["synthetic_call_certificate", "synthetic_subnet_certificate"]


def tree_from_lists(node: Any) -> Tree:
    kind = node[0]
    if kind == 0:
        return ("empty",)
    if kind == 1:
        return ("fork", tree_from_lists(node[1]), tree_from_lists(node[2]))
    if kind == 2:
        return ("labeled", node[1], tree_from_lists(node[2]))
    return ("leaf", node[1]) if kind == 3 else ("pruned", node[1])


def tree_to_lists(tree: Tree) -> list[Any]:
    kind = tree[0]
    if kind == "empty":
        return [0]
    if kind == "fork":
        return [1, tree_to_lists(tree[1]), tree_to_lists(tree[2])]
    if kind == "labeled":
        return [2, tree[1], tree_to_lists(tree[2])]
    return [3, tree[1]] if kind == "leaf" else [4, tree[1]]


def replace_leaf(tree: Tree, label: bytes, value: bytes) -> Tree:
    if tree[0] == "fork":
        return ("fork", replace_leaf(tree[1], label, value), replace_leaf(tree[2], label, value))
    if tree[0] == "labeled" and tree[1] == label:
        return ("labeled", label, ("leaf", value))
    return tree


def test_emulator_keys() -> None:
    public_key = bls_public_key(EMULATOR_SECRET)
    assert bls_der_public_key(public_key) == EMULATOR_ROOT_DER
    subnet = SYNTHETIC["synthetic_subnet_certificate"]
    assert self_authenticating_principal(EMULATOR_ROOT_DER).hex() == subnet["subnet_id_hex"]
    assert principal_to_text(bytes.fromhex(subnet["subnet_id_hex"])) == subnet["subnet_id"]


@pytest.mark.parametrize("name", SYNTHETIC_CERTS)
def test_emulator_reproduces_the_synthetic_certificate(name: str) -> None:
    vector = SYNTHETIC[name]
    tree_bytes = bytes.fromhex(vector["tree_cbor_hex"])
    tree = tree_from_lists(cbor_decode(tree_bytes))
    assert hash_tree_encode(tree, self_describe=False) == tree_bytes
    assert hash_tree_digest(tree).hex() == vector["root_hash_hex"]
    assert hash_tree_root(tree_bytes).hex() == vector["root_hash_hex"]
    message = STATE_ROOT + hash_tree_digest(tree)
    if "signed_message_hex" in vector:
        assert message.hex() == vector["signed_message_hex"]
    signature = bls_sign(EMULATOR_SECRET, message)
    assert signature.hex() == vector["signature_hex"]
    rebuilt = cbor_encode({"tree": tree_to_lists(tree), "signature": signature})
    assert rebuilt.hex() == vector["certificate_cbor_hex"]


@pytest.mark.parametrize("name", SYNTHETIC_CERTS)
def test_synthetic_certificates_verify(name: str) -> None:
    vector = SYNTHETIC[name]
    certificate = bytes.fromhex(vector["certificate_cbor_hex"])
    time_ns = int(vector["time_ns"])
    for canister in ("ivg37-qiaaa-aaaab-aaaga-cai", "rwlgt-iiaaa-aaaaa-aaaaa-cai"):
        verify_certificate(
            certificate, EMULATOR_ROOT_DER, canister_id=principal_from_text(canister), now_ns=time_ns
        )
    with pytest.raises(CertificateError, match="does not verify against the root key"):
        verify_certificate(certificate, MAINNET_ROOT)


def test_synthetic_call_certificate_lookups() -> None:
    vector = SYNTHETIC["synthetic_call_certificate"]
    tree = bytes.fromhex(vector["tree_cbor_hex"])
    rid = bytes.fromhex(vector["request_id_hex"])
    expected = vector["expected_lookups"]
    assert lookup_path(tree, [b"request_status", rid, b"status"]) == (
        "found",
        expected["request_status/<rid>/status"].encode(),
    )
    assert lookup_path(tree, [b"request_status", rid, b"reply"]) == (
        "found",
        bytes.fromhex(expected["request_status/<rid>/reply"]),
    )
    found, time = lookup_path(tree, [b"time"])
    assert found == "found"
    assert time is not None
    assert leb128_decode(time) == int(expected["time"])
    body = cbor_decode(bytes.fromhex(vector["v3_call_response_body_cbor_hex"]))
    assert isinstance(body, dict)
    assert body["certificate"].hex() == vector["certificate_cbor_hex"]
    status = cbor_decode(
        bytes.fromhex(vector["status_response_body_cbor_hex (GET /api/v2/status of such an emulator)"])
    )
    assert isinstance(status, dict)
    assert status["root_key"] == EMULATOR_ROOT_DER


def test_synthetic_subnet_certificate_lookups() -> None:
    vector = SYNTHETIC["synthetic_subnet_certificate"]
    tree = bytes.fromhex(vector["tree_cbor_hex"])
    sid = bytes.fromhex(vector["subnet_id_hex"])
    assert lookup_path(tree, [b"subnet", sid, b"public_key"]) == ("found", EMULATOR_ROOT_DER)
    lo, hi = (bytes.fromhex(h) for h in vector["canister_range"][:2])
    assert lookup_path(tree, [b"subnet", sid, b"canister_ranges"]) == ("found", cbor_encode([[lo, hi]]))
    node_key = bytes.fromhex(SYNTHETIC["keys"]["node_ed25519_public_der_hex"])
    node_id = principal_from_text(SYNTHETIC["keys"]["node_id"])
    assert lookup_path(tree, [b"subnet", sid, b"node", node_id, b"public_key"]) == ("found", node_key)


# --- a synthetic delegation chain, built with known keys ---------------------------------------------

SUBNET_SECRET = (0x1CE6 << 200 | 0xDE1E6A7E).to_bytes(32, "big")
SUBNET_DER = bls_der_public_key(bls_public_key(SUBNET_SECRET))
SUBNET_ID = bytes(range(1, 29)) + b"\x02"
OTHER_SUBNET_ID = bytes(range(2, 30)) + b"\x02"
T0 = 1_700_000_000_000_000_000


def cid(n: int) -> bytes:
    """A canister id in the IC's 10-byte layout."""
    return n.to_bytes(8, "big") + b"\x01\x01"


def ranges(*pairs: tuple[int, int]) -> bytes:
    return cbor_encode([[cid(lo), cid(hi)] for lo, hi in pairs])


SHARDS = {
    cid(0x100): ranges((0x100, 0x1FF)),
    cid(0x300): ranges((0x300, 0x3FF), (0x500, 0x5FF)),
    cid(0x800): ranges((0x800, 0x8FF)),
}
IN_SHARDS = [0x100, 0x150, 0x1FF, 0x300, 0x3FF, 0x500, 0x5FF, 0x800, 0x8FF]
NOT_IN_SHARDS = [0x0, 0x50, 0xFF, 0x200, 0x2FF, 0x400, 0x4FF, 0x600, 0x7FF, 0x900]
LEGACY = ranges((0x2000, 0x2FFF))


def balanced(items: list[Tree]) -> Tree:
    if not items:
        return ("empty",)
    if len(items) == 1:
        return items[0]
    mid = len(items) // 2
    return ("fork", balanced(items[:mid]), balanced(items[mid:]))


def tree_of(entries: Mapping[bytes, object]) -> Tree:
    """A well-formed tree from nested dicts (bytes values are leaves, trees are kept)."""
    nodes: list[Tree] = []
    for label, value in sorted(entries.items()):
        if isinstance(value, Mapping):
            subtree = tree_of(value)
        elif isinstance(value, bytes):
            subtree = ("leaf", value)
        else:
            assert isinstance(value, tuple)
            subtree = value
        nodes.append(("labeled", label, subtree))
    return balanced(nodes)


def make_certificate(
    tree: Tree, secret: bytes, delegation: object = None, *, with_null: bool = False
) -> bytes:
    signature = bls_sign(secret, STATE_ROOT + hash_tree_digest(tree))
    fields: dict[str, object] = {"tree": tree_to_lists(tree), "signature": signature}
    if delegation is not None or with_null:
        fields["delegation"] = delegation
    return cbor_encode(fields)


def delegation_tree(
    *,
    shards: object = SHARDS,
    legacy: bytes | None = None,
    public_key: bytes | None = SUBNET_DER,
    time_ns: int = T0 - DAY_NS,
) -> Tree:
    subnet: dict[bytes, object] = {}
    if public_key is not None:
        subnet[b"public_key"] = public_key
    if legacy is not None:
        subnet[b"canister_ranges"] = legacy
    entries: dict[bytes, object] = {b"subnet": {SUBNET_ID: subnet}, b"time": leb128_encode(time_ns)}
    if shards is not None:
        entries[b"canister_ranges"] = {SUBNET_ID: shards}
    return tree_of(entries)


def delegated(
    deleg_tree: Tree,
    *,
    outer_time: int = T0,
    signer: bytes = SUBNET_SECRET,
    delegation_signer: bytes = EMULATOR_SECRET,
    subnet_id: bytes = SUBNET_ID,
) -> bytes:
    inner = make_certificate(deleg_tree, delegation_signer)
    outer = tree_of(
        {b"canister": {cid(0x150): {b"certified_data": bytes(32)}}, b"time": leb128_encode(outer_time)}
    )
    return make_certificate(outer, signer, {"subnet_id": subnet_id, "certificate": inner})


SHARDED = delegated(delegation_tree())


def verify_for(certificate: bytes, canister: int, **kwargs: Any) -> None:
    verify_certificate(certificate, EMULATOR_ROOT_DER, canister_id=cid(canister), **kwargs)


@pytest.mark.parametrize("canister", IN_SHARDS, ids=hex)
def test_sharded_ranges_accept(canister: int) -> None:
    verify_for(SHARDED, canister, now_ns=T0)


@pytest.mark.parametrize("canister", NOT_IN_SHARDS, ids=hex)
def test_sharded_ranges_reject(canister: int) -> None:
    with pytest.raises(CertificateError, match="not authorized"):
        verify_for(SHARDED, canister)


def test_legacy_ranges() -> None:
    certificate = delegated(delegation_tree(shards=None, legacy=LEGACY))
    verify_for(certificate, 0x2000)
    verify_for(certificate, 0x2FFF)
    with pytest.raises(CertificateError, match="is not in the canister ranges"):
        verify_for(certificate, 0x3000)


def test_sharded_ranges_take_precedence_over_legacy() -> None:
    certificate = delegated(delegation_tree(legacy=LEGACY))
    verify_for(certificate, 0x150)
    with pytest.raises(CertificateError, match="not authorized"):
        verify_for(certificate, 0x2000)


def test_pruned_shards_fall_back_to_legacy() -> None:
    pruned_shards = ("pruned", hash_tree_digest(tree_of(SHARDS)))
    certificate = delegated(delegation_tree(shards=pruned_shards, legacy=LEGACY))
    verify_for(certificate, 0x2000)
    with pytest.raises(CertificateError, match="not authorized"):
        verify_for(certificate, 0x150)


def test_no_ranges_at_all() -> None:
    with pytest.raises(CertificateError, match="does not contain the canister ranges"):
        verify_for(delegated(delegation_tree(shards=None)), 0x150)


def test_a_pruned_shard_never_lets_a_wrong_shard_decide_in_favour() -> None:
    """With the shard at 0x300 pruned away, 0x350 falls to the 0x100 shard, which does not contain it."""
    shard_nodes: list[Tree] = [("labeled", label, ("leaf", blob)) for label, blob in sorted(SHARDS.items())]
    shard_nodes[1] = ("pruned", hash_tree_digest(shard_nodes[1]))
    certificate = delegated(delegation_tree(shards=balanced(shard_nodes)))
    verify_for(certificate, 0x150)
    verify_for(certificate, 0x800)
    with pytest.raises(CertificateError, match="is not in the canister ranges"):
        verify_for(certificate, 0x350)


def test_a_shard_with_pruned_ranges_is_not_authorized() -> None:
    shards: dict[bytes, object] = dict(SHARDS)
    shards[cid(0x300)] = ("pruned", hash_tree_digest(("leaf", SHARDS[cid(0x300)])))
    certificate = delegated(delegation_tree(shards=shards))
    verify_for(certificate, 0x150)
    with pytest.raises(CertificateError, match=r"not authorized: .* shard .* \(pruned\)"):
        verify_for(certificate, 0x350)


def test_malformed_shard() -> None:
    with pytest.raises(CertificateError, match="canister ranges"):
        verify_for(delegated(delegation_tree(shards={cid(0x100): b"\x00"})), 0x150)
    with pytest.raises(CertificateError, match="not a leaf"):
        verify_for(delegated(delegation_tree(shards={cid(0x100): {b"x": b"y"}})), 0x150)


def test_subnet_scope_with_a_synthetic_delegation() -> None:
    verify_certificate(SHARDED, EMULATOR_ROOT_DER, subnet_id=SUBNET_ID)
    with pytest.raises(CertificateError, match="not authorized"):
        verify_certificate(SHARDED, EMULATOR_ROOT_DER, subnet_id=OTHER_SUBNET_ID)


def test_outer_certificate_signed_by_another_key() -> None:
    with pytest.raises(CertificateError, match="does not verify against the subnet key"):
        verify_for(delegated(delegation_tree(), signer=EMULATOR_SECRET), 0x150)


def test_delegation_signed_by_another_key_is_rejected_and_not_cached() -> None:
    forged = delegated(delegation_tree(), delegation_signer=SUBNET_SECRET)
    certificate_cache_clear()
    for _ in range(2):
        with pytest.raises(CertificateError, match=r"invalid delegation.*root key"):
            verify_for(forged, 0x150)
    stats = certificate_cache_stats()
    assert stats["misses"] == 2
    assert stats["hits"] == 0
    assert stats["entries"] == 0


def test_delegation_without_the_subnet_key() -> None:
    with pytest.raises(CertificateError, match="no public key for subnet"):
        verify_for(delegated(delegation_tree(public_key=None)), 0x150)
    pruned = delegated(delegation_tree(), subnet_id=OTHER_SUBNET_ID)
    with pytest.raises(CertificateError, match="no public key for subnet"):
        verify_for(pruned, 0x150)
    with pytest.raises(CertificateError, match=r"public key of subnet .* must have 133 bytes"):
        verify_for(delegated(delegation_tree(public_key=SUBNET_DER[:-1])), 0x150)


def test_delegation_age() -> None:
    verify_for(delegated(delegation_tree(time_ns=T0 - 29 * DAY_NS)), 0x150, now_ns=T0)
    old = delegated(delegation_tree(time_ns=T0 - 31 * DAY_NS))
    verify_for(old, 0x150)  # no clock, no age checks
    with pytest.raises(CertificateError, match="delegation certificate too old"):
        verify_for(old, 0x150, now_ns=T0)


def test_null_delegation_counts_as_absent() -> None:
    tree = tree_of({b"time": leb128_encode(T0)})
    verify_certificate(make_certificate(tree, EMULATOR_SECRET, with_null=True), EMULATOR_ROOT_DER, now_ns=T0)


def test_the_delegation_cache_saves_the_second_pairing_check() -> None:
    certificate_cache_clear()
    verify_for(SHARDED, 0x150)
    first = certificate_cache_stats()
    assert (first["misses"], first["hits"], first["entries"], first["signature_checks"]) == (1, 0, 1, 2)
    # Another certificate from the same subnet: only its own signature is checked.
    later = delegated(delegation_tree(), outer_time=T0 + MINUTE_NS)
    assert later != SHARDED
    verify_for(later, 0x300)
    second = certificate_cache_stats()
    assert (second["misses"], second["hits"], second["entries"], second["signature_checks"]) == (1, 1, 1, 3)
    assert second["capacity"] >= 1


def test_the_cache_is_keyed_by_the_root_key_too() -> None:
    certificate_cache_clear()
    verify_for(SHARDED, 0x150)
    with pytest.raises(CertificateError, match="root key"):
        verify_certificate(SHARDED, MAINNET_ROOT, canister_id=cid(0x150))
    stats = certificate_cache_stats()
    assert stats["misses"] == 2
    assert stats["entries"] == 1


def test_a_cached_delegation_is_still_scope_checked() -> None:
    certificate_cache_clear()
    verify_for(SHARDED, 0x150)
    # Out of scope: rejected before any signature check, cached or not.
    with pytest.raises(CertificateError, match="not authorized"):
        verify_for(SHARDED, 0x200)
    verify_for(SHARDED, 0x300)
    stats = certificate_cache_stats()
    # The same certificate again: its delegation is a cache hit and its own signature was verified
    # before (the signature cache), so no pairing check at all; the scope was checked anyway.
    assert (stats["misses"], stats["hits"], stats["signature_checks"]) == (1, 1, 2)


def test_the_cache_is_bounded() -> None:
    certificate_cache_clear()
    capacity = certificate_cache_stats()["capacity"]
    for i in range(capacity + 5):
        verify_for(delegated(delegation_tree(time_ns=T0 - DAY_NS + i)), 0x150)
    stats = certificate_cache_stats()
    assert stats["entries"] == capacity
    assert stats["misses"] == capacity + 5


def test_mainnet_vectors_hit_the_cache_on_the_second_verification() -> None:
    certificate_cache_clear()
    verify_certificate(cert_bytes(IVG37), MAINNET_ROOT, canister_id=IVG37_CANISTER)
    verify_certificate(cert_bytes(IVG37), MAINNET_ROOT, canister_id=IVG37_CANISTER)
    stats = certificate_cache_stats()
    # Two pairing checks the first time, none the second (delegation and signature both remembered).
    assert (stats["misses"], stats["hits"], stats["signature_checks"]) == (1, 1, 2)


def test_concurrent_verification() -> None:
    certificate_cache_clear()
    jobs = [(SHARDED, 0x150, True), (SHARDED, 0x200, False)] * 20 + [
        (cert_bytes(IVG37), -1, True),
        (delegated(delegation_tree(), delegation_signer=SUBNET_SECRET), 0x150, False),
    ] * 5

    def run(job: tuple[bytes, int, bool]) -> bool:
        certificate, canister, _ = job
        try:
            if canister < 0:
                verify_certificate(certificate, MAINNET_ROOT, canister_id=IVG37_CANISTER)
            else:
                verify_for(certificate, canister)
        except CertificateError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, jobs))
    assert results == [expected for _, _, expected in jobs]
    assert certificate_cache_stats()["entries"] == 2
