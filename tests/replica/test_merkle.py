"""The certified map: incremental root hashes and witnesses, checked against the core's hash-tree code."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import cbor_decode, hash_tree_digest, hash_tree_encode, hash_tree_root, lookup_path
from icgw.replica import merkle
from icgw.replica.merkle import (
    EMPTY,
    EMPTY_HASH,
    CertifiedMap,
    HashTree,
    check_well_formed,
    label_priority,
    tree_digest,
)

from ..conftest import load_vector

# --- independent helpers ------------------------------------------------------------------------------


def tuples_from_cbor(node: Any) -> HashTree:
    """A decoded CBOR hash tree (lists with a numeric tag first) as the nested tuples the map uses."""
    tag = node[0]
    if tag == 0:
        return ("empty",)
    if tag == 1:
        return ("fork", tuples_from_cbor(node[1]), tuples_from_cbor(node[2]))
    if tag == 2:
        return ("labeled", bytes(node[1]), tuples_from_cbor(node[2]))
    if tag == 3:
        return ("leaf", bytes(node[1]))
    assert tag == 4
    return ("pruned", bytes(node[1]))


def naive_tree(items: Iterable[tuple[bytes, bytes]]) -> HashTree:
    """The map's tree rebuilt from scratch: the Cartesian tree of the sorted labels by priority, each
    node as fork(left, fork(labeled, right)) without the missing parts."""
    ordered = sorted(items)
    if not ordered:
        return ("empty",)

    def build(lo: int, hi: int) -> HashTree | None:
        if lo >= hi:
            return None
        top = max(range(lo, hi), key=lambda i: label_priority(ordered[i][0]))
        label, value = ordered[top]
        left, right = build(lo, top), build(top + 1, hi)
        tree: HashTree = ("labeled", label, ("leaf", value))
        if right is not None:
            tree = ("fork", tree, right)
        if left is not None:
            tree = ("fork", left, tree)
        return tree

    tree = build(0, len(ordered))
    assert tree is not None
    return tree


def forks_hold_no_empty(tree: HashTree) -> bool:
    kind = tree[0]
    if kind == "fork":
        return all(child[0] != "empty" and forks_hold_no_empty(child) for child in tree[1:])
    if kind == "labeled":
        return forks_hold_no_empty(tree[2])
    return True


def lookup(tree: HashTree, *path: bytes) -> tuple[str, bytes | None]:
    return lookup_path(hash_tree_encode(tree), list(path))


def depth(tree: HashTree) -> int:
    if tree[0] == "fork":
        return 1 + max(depth(tree[1]), depth(tree[2]))
    if tree[0] == "labeled":
        return 1 + depth(tree[2])
    return 1


# --- hashing ----------------------------------------------------------------------------------------


def test_hashing_matches_the_spec_example() -> None:
    vector = load_vector("hash_tree.json")
    assert EMPTY_HASH.hex() == vector["empty_tree_hash_hex"]
    example = vector["spec_example"]
    for key in ("full_tree_cbor_hex", "pruned_tree_cbor_hex"):
        tree = tuples_from_cbor(cbor_decode(bytes.fromhex(example[key])))
        assert tree_digest(tree).hex() == example["root_hash_hex"]
        assert hash_tree_digest(tree) == tree_digest(tree)
    # The spec's full example has an Empty inside a Fork, which replicas never produce.
    with pytest.raises(ValueError, match="Empty inside a Fork"):
        check_well_formed(tuples_from_cbor(cbor_decode(bytes.fromhex(example["full_tree_cbor_hex"]))))
    check_well_formed(tuples_from_cbor(cbor_decode(bytes.fromhex(example["pruned_tree_cbor_hex"]))))


@pytest.mark.parametrize(
    ("tree", "reason"),
    [
        (("fork", ("leaf", b"a"), ("empty",)), "Empty inside a Fork"),
        (("fork", ("labeled", b"b", ("leaf", b"")), ("labeled", b"a", ("leaf", b""))), "strictly increasing"),
        (("fork", ("labeled", b"a", ("leaf", b"")), ("labeled", b"a", ("leaf", b""))), "strictly increasing"),
        (("fork", ("labeled", b"a", ("leaf", b"")), ("leaf", b"x")), "leaf mixed"),
        (("pruned", b"short"), "32-byte"),
        (("leaf", "text"), "bytes"),
        (("branch",), "not a hash tree node"),
    ],
)
def test_malformed_trees_are_rejected(tree: HashTree, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_well_formed(tree)


def test_empty_map() -> None:
    empty = CertifiedMap()
    assert len(empty) == 0
    assert not empty
    assert empty.root_hash() == EMPTY_HASH == hash_tree_digest(EMPTY)
    assert empty.as_hash_tree() == EMPTY
    assert empty.witness([b"x"]) == EMPTY
    assert empty.witness_range(b"a", b"z") == EMPTY
    assert lookup(empty.witness([b"x"]), b"x") == ("absent", None)
    assert empty.first_label() is None
    assert empty.last_label() is None


def test_root_hash_is_the_core_digest_of_the_tree_and_independent_of_history() -> None:
    items = [(f"key-{i:03d}".encode(), f"value {i}".encode()) for i in range(200)]
    forward = CertifiedMap(items)
    backward = CertifiedMap(reversed(items))
    shuffled = CertifiedMap(sorted(items, key=lambda item: hashlib.sha256(item[0]).digest()))
    tree = forward.as_hash_tree()
    assert tree == naive_tree(items)
    assert forward.root_hash() == hash_tree_digest(tree) == hash_tree_root(hash_tree_encode(tree))
    assert forward.root_hash() == backward.root_hash() == shuffled.root_hash()
    # Deleting and re-inserting gives back the same tree.
    for label, _ in items[50:150]:
        assert forward.delete(label)
    assert forward.root_hash() == hash_tree_digest(naive_tree(items[:50] + items[150:]))
    for label, value in items[50:150]:
        forward[label] = value
    assert forward.root_hash() == backward.root_hash()
    check_well_formed(tree)


def test_replacing_a_value_changes_the_hash_and_setting_the_same_value_does_not() -> None:
    cmap = CertifiedMap([(b"a", b"1"), (b"b", b"2")])
    before = cmap.root_hash()
    cmap.set(b"a", b"1")
    assert cmap.root_hash() == before
    cmap.set(b"a", b"changed")
    assert cmap[b"a"] == b"changed"
    assert cmap.root_hash() == hash_tree_digest(naive_tree([(b"a", b"changed"), (b"b", b"2")]))
    assert len(cmap) == 2


def test_map_reading_api() -> None:
    cmap = CertifiedMap((bytes([c]), bytes([c, c])) for c in b"dbfae")
    assert list(cmap) == [b"a", b"b", b"d", b"e", b"f"]
    assert list(cmap.items(b"b", b"e")) == [(b"b", b"bb"), (b"d", b"dd")]
    assert list(cmap.items(b"c")) == [(b"d", b"dd"), (b"e", b"ee"), (b"f", b"ff")]
    assert list(cmap.items(stop=b"b")) == [(b"a", b"aa")]
    assert b"d" in cmap
    assert b"c" not in cmap
    assert "d" not in cmap
    assert cmap.get(b"c") is None
    assert cmap.get(b"c", b"default") == b"default"
    assert (cmap.first_label(), cmap.last_label()) == (b"a", b"f")
    with pytest.raises(KeyError):
        cmap[b"c"]
    with pytest.raises(KeyError):
        del cmap[b"c"]
    assert not cmap.delete(b"c")
    del cmap[b"d"]
    assert list(cmap) == [b"a", b"b", b"e", b"f"]
    with pytest.raises(TypeError, match="bytes"):
        cmap.set("text", b"")  # type: ignore[arg-type]
    cmap.clear()
    assert len(cmap) == 0
    assert cmap.root_hash() == EMPTY_HASH


def test_subtree_values_are_placed_under_their_label() -> None:
    status = (
        "fork",
        ("labeled", b"reply", ("leaf", b"DIDL\x00\x00")),
        ("labeled", b"status", ("leaf", b"replied")),
    )
    cmap = CertifiedMap(
        [(b"\x01" * 32, status), (b"\x02" * 32, ("labeled", b"status", ("leaf", b"processing")))]
    )
    witness = cmap.witness([b"\x01" * 32])
    assert tree_digest(witness) == cmap.root_hash() == hash_tree_digest(cmap.as_hash_tree())
    assert lookup(witness, b"\x01" * 32, b"status") == ("found", b"replied")
    assert lookup(witness, b"\x01" * 32, b"reply") == ("found", b"DIDL\x00\x00")
    assert lookup(witness, b"\x02" * 32, b"status") == ("unknown", None)
    with pytest.raises(ValueError, match="Empty inside a Fork"):
        cmap.set(b"\x03", ("fork", ("empty",), ("leaf", b"")))
    assert len(cmap) == 2


# --- witnesses --------------------------------------------------------------------------------------


def test_witness_reveals_exactly_the_requested_labels() -> None:
    items = [(f"gw_{i:020d}".encode(), hashlib.sha256(bytes([i])).digest()) for i in range(40)]
    cmap = CertifiedMap(items)
    wanted = [items[3][0], items[4][0], items[30][0]]
    witness = cmap.witness(wanted)
    assert tree_digest(witness) == cmap.root_hash()
    check_well_formed(witness)
    for label, value in items:
        status, found = lookup(witness, label)
        if label in wanted:
            assert (status, found) == ("found", value)
        else:
            # Present labels that were not asked for are never proven absent.
            assert status == "unknown"
    revealed = _revealed_labels(witness)
    assert revealed == set(wanted)


def test_witness_proves_absent_labels_with_their_neighbours() -> None:
    cmap = CertifiedMap((f"k{i:02d}".encode(), b"v") for i in range(0, 100, 10))
    witness = cmap.witness([b"k15", b"a", b"z"])
    assert tree_digest(witness) == cmap.root_hash()
    check_well_formed(witness)
    for label in (b"k15", b"a", b"z"):
        assert lookup(witness, label) == ("absent", None)
    # Neighbours are revealed with pruned values (proof of absence only).
    assert {b"k10", b"k20", b"k00", b"k90"} <= _revealed_labels(witness)
    assert lookup(witness, b"k10") == ("unknown", None)


def test_range_witness_reveals_the_range_and_proves_nothing_else_is_in_it() -> None:
    labels = [f"gw_{i:020d}".encode() for i in range(0, 200, 2)]
    cmap = CertifiedMap((label, hashlib.sha256(label).digest()) for label in labels)
    first, last = labels[20], labels[35]
    witness = cmap.witness_range(first, last)
    assert tree_digest(witness) == cmap.root_hash()
    check_well_formed(witness)
    for label in labels[20:36]:
        assert lookup(witness, label) == ("found", hashlib.sha256(label).digest())
    # Odd nonces between the range's neighbours are provably absent, including at both edges.
    for i in range(39, 72, 2):
        assert lookup(witness, f"gw_{i:020d}".encode()) == ("absent", None)
    assert lookup(witness, labels[19]) == ("unknown", None)  # neighbours: label revealed, value pruned
    assert labels[19] in _revealed_labels(witness)
    assert labels[36] in _revealed_labels(witness)
    with pytest.raises(ValueError, match="empty"):
        cmap.witness_range(last, first)


def _revealed_labels(tree: HashTree) -> set[bytes]:
    kind = tree[0]
    if kind == "fork":
        return _revealed_labels(tree[1]) | _revealed_labels(tree[2])
    if kind == "labeled":
        return {tree[1]}
    return set()


# --- incremental work ---------------------------------------------------------------------------------


def test_a_change_rehashes_a_path_not_the_whole_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    cmap = CertifiedMap((hashlib.sha256(i.to_bytes(4, "big")).digest(), b"status") for i in range(10_000))
    cmap.root_hash()
    calls = 0
    real_fork_hash = merkle.fork_hash

    def counting_fork_hash(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real_fork_hash(left, right)

    monkeypatch.setattr(merkle, "fork_hash", counting_fork_hash)
    cmap.set(b"\x80" + b"\x00" * 31, b"new")
    cmap.delete(cmap.first_label() or b"")
    root = cmap.root_hash()
    assert calls < 200, f"{calls} fork hashes for two changes in 10 000 entries"
    monkeypatch.setattr(merkle, "fork_hash", real_fork_hash)
    assert root == hash_tree_digest(cmap.as_hash_tree())


def test_queue_pattern_keeps_the_tree_shallow() -> None:
    # The CDK appends keys with increasing nonces and trims the oldest ones.
    cmap = CertifiedMap()
    for nonce in range(3_000):
        cmap.set(f"gateway_{nonce:020d}".encode(), hashlib.sha256(nonce.to_bytes(8, "big")).digest())
        if nonce >= 1_000:
            cmap.delete(f"gateway_{nonce - 1_000:020d}".encode())
    assert len(cmap) == 1_000
    assert depth(cmap.as_hash_tree()) < 3 * 2 * 10 * 2  # labeled+forks per level, ~3x log2(1000)
    expected = [
        (f"gateway_{n:020d}".encode(), hashlib.sha256(n.to_bytes(8, "big")).digest())
        for n in range(2_000, 3_000)
    ]
    assert cmap.root_hash() == hash_tree_digest(naive_tree(expected))


# --- properties -----------------------------------------------------------------------------------------


operations = st.lists(
    st.tuples(st.booleans(), st.binary(max_size=3), st.binary(max_size=4)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.lists(st.binary(max_size=3), max_size=6))
def test_random_changes_match_a_model_and_a_full_rebuild(
    ops: list[tuple[bool, bytes, bytes]], probes: list[bytes]
) -> None:
    cmap = CertifiedMap()
    model: dict[bytes, bytes] = {}
    for insert, label, value in ops:
        if insert:
            cmap[label] = value
            model[label] = value
        else:
            assert cmap.delete(label) == (label in model)
            model.pop(label, None)
    assert len(cmap) == len(model)
    assert list(cmap.items()) == sorted(model.items())
    full = cmap.as_hash_tree()
    assert full == naive_tree(model.items())
    assert cmap.root_hash() == hash_tree_digest(full)
    assert forks_hold_no_empty(full)

    witness = cmap.witness(probes)
    assert tree_digest(witness) == cmap.root_hash()
    assert forks_hold_no_empty(witness)
    check_well_formed(witness)
    for probe in probes:
        if probe in model:
            assert lookup(witness, probe) == ("found", model[probe])
        else:
            assert lookup(witness, probe) == ("absent", None)

    if model:
        # A range from the smallest label to the largest probe (or label), so probes land inside.
        lo, hi = min(model), max([*probes, *model])
        ranged = cmap.witness_range(lo, hi)
        assert tree_digest(ranged) == cmap.root_hash()
        assert forks_hold_no_empty(ranged)
        for label, value in model.items():
            if lo <= label <= hi:
                assert lookup(ranged, label) == ("found", value)
        for probe in probes:
            if probe not in model and lo <= probe <= hi:
                assert lookup(ranged, probe) == ("absent", None)
