"""Hash trees: root hashes, spec lookups, the tuple builder, and hostile input."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import (
    CborError,
    HashTreeError,
    cbor_decode,
    cbor_encode,
    hash_tree_digest,
    hash_tree_encode,
    hash_tree_root,
    lookup_path,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
HASH_TREE = json.loads((VECTORS / "hash_tree.json").read_text())
SPEC = HASH_TREE["spec_example"]
AGENT_JS = HASH_TREE["agent_js_lookup_tree"]
SELF_DESCRIBE = bytes.fromhex("d9d9f7")

Tree = tuple[Any, ...]


def tree_from_cbor(node: Any) -> Tree:
    """The builder's tuple form of a CBOR-decoded tree (nested lists)."""
    kind = node[0]
    if kind == 0:
        return ("empty",)
    if kind == 1:
        return ("fork", tree_from_cbor(node[1]), tree_from_cbor(node[2]))
    if kind == 2:
        return ("labeled", node[1], tree_from_cbor(node[2]))
    if kind == 3:
        return ("leaf", node[1])
    assert kind == 4
    return ("pruned", node[1])


def expected_lookup(entry: dict[str, Any]) -> tuple[str, bytes | None]:
    result = entry["result"].lower()
    if result == "found":
        return ("found", entry["value_utf8"].encode())
    return (result, None)


def lookup_cases(tree_hex: str, entries: list[dict[str, Any]]) -> list[Any]:
    return [
        pytest.param(bytes.fromhex(tree_hex), e, id="/".join(e["path_utf8"]) + "->" + e["result"])
        for e in entries
    ]


# --- the spec's vectors -----------------------------------------------------------------------------


def test_domain_separators_and_empty_hash() -> None:
    seps = {k: bytes.fromhex(v) for k, v in HASH_TREE["domain_separators_hex"].items()}
    for name, sep in seps.items():
        assert sep == bytes([len(name)]) + name.encode()
    assert hash_tree_digest(("empty",)).hex() == HASH_TREE["empty_tree_hash_hex"]
    assert hashlib.sha256(seps["ic-hashtree-empty"]).hexdigest() == HASH_TREE["empty_tree_hash_hex"]
    assert hash_tree_digest(("leaf", b"v")) == hashlib.sha256(seps["ic-hashtree-leaf"] + b"v").digest()
    leaf = hash_tree_digest(("leaf", b"v"))
    assert (
        hash_tree_digest(("labeled", b"k", ("leaf", b"v")))
        == hashlib.sha256(seps["ic-hashtree-labeled"] + b"k" + leaf).digest()
    )
    assert (
        hash_tree_digest(("fork", ("leaf", b"v"), ("pruned", leaf)))
        == hashlib.sha256(seps["ic-hashtree-fork"] + leaf + leaf).digest()
    )


@pytest.mark.parametrize("key", ["full_tree_cbor_hex", "pruned_tree_cbor_hex"])
def test_spec_example_root_hash(key: str) -> None:
    tree = bytes.fromhex(SPEC[key])
    assert hash_tree_root(tree).hex() == SPEC["root_hash_hex"]
    assert hash_tree_root(SELF_DESCRIBE + tree).hex() == SPEC["root_hash_hex"]


def test_spec_example_pruned_hashes_are_the_full_subtrees() -> None:
    pruned = tree_from_cbor(cbor_decode(bytes.fromhex(SPEC["pruned_tree_cbor_hex"])))
    found: list[str] = []

    def collect(node: Tree) -> None:
        if node[0] == "pruned":
            found.append(node[1].hex())
        for child in node[1:]:
            if isinstance(child, tuple):
                collect(child)

    collect(pruned)
    assert found == SPEC["pruned_subtree_hashes_hex"]


@pytest.mark.parametrize(
    ("tree", "entry"), lookup_cases(SPEC["full_tree_cbor_hex"], SPEC["lookups_on_full_tree"])
)
def test_spec_example_lookups_full(tree: bytes, entry: dict[str, Any]) -> None:
    path = [label.encode() for label in entry["path_utf8"]]
    assert lookup_path(tree, path) == expected_lookup(entry)


@pytest.mark.parametrize(
    ("tree", "entry"),
    lookup_cases(SPEC["pruned_tree_cbor_hex"], SPEC["lookups_on_pruned_tree (from spec)"]),
)
def test_spec_example_lookups_pruned(tree: bytes, entry: dict[str, Any]) -> None:
    path = [label.encode() for label in entry["path_utf8"]]
    assert lookup_path(tree, path) == expected_lookup(entry)


def test_agent_js_tree_root_hash() -> None:
    assert hash_tree_root(bytes.fromhex(AGENT_JS["tree_cbor_hex"])).hex() == AGENT_JS["root_hash_hex"]


@pytest.mark.parametrize(("tree", "entry"), lookup_cases(AGENT_JS["tree_cbor_hex"], AGENT_JS["lookups"]))
def test_agent_js_tree_lookups(tree: bytes, entry: dict[str, Any]) -> None:
    path = [label.encode() for label in entry["path_utf8"]]
    assert lookup_path(tree, path) == expected_lookup(entry)


@pytest.mark.parametrize(
    "tree_hex", [SPEC["full_tree_cbor_hex"], SPEC["pruned_tree_cbor_hex"], AGENT_JS["tree_cbor_hex"]]
)
def test_builder_reproduces_the_vector_bytes(tree_hex: str) -> None:
    tree_bytes = bytes.fromhex(tree_hex)
    tree = tree_from_cbor(cbor_decode(tree_bytes))
    assert hash_tree_encode(tree, self_describe=False) == tree_bytes
    assert hash_tree_encode(tree) == SELF_DESCRIBE + tree_bytes
    assert hash_tree_digest(tree) == hash_tree_root(tree_bytes)


def test_empty_path_classifies_the_root() -> None:
    assert lookup_path(hash_tree_encode(("leaf", b"x")), []) == ("found", b"x")
    assert lookup_path(hash_tree_encode(("empty",)), []) == ("absent", None)
    assert lookup_path(hash_tree_encode(("pruned", bytes(32))), []) == ("unknown", None)
    assert lookup_path(hash_tree_encode(("labeled", b"a", ("empty",))), []) == ("error", None)
    assert lookup_path(hash_tree_encode(("fork", ("empty",), ("empty",))), []) == ("error", None)


def test_lookup_accepts_any_sequence_of_bytes_but_not_a_single_label() -> None:
    tree = hash_tree_encode(("labeled", b"a", ("leaf", b"x")))
    assert lookup_path(tree, (b"a",)) == ("found", b"x")
    # Any iterable works at run time; the declared type stays Sequence[bytes].
    assert lookup_path(tree, iter([b"a"])) == ("found", b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lookup_path(tree, b"a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lookup_path(tree, "a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lookup_path(tree, ["a"])  # type: ignore[list-item]


# --- malformed trees --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree_hex", "message"),
    [
        ("80", "empty array"),
        ("8105", "unknown node tag 5"),
        ("820100", "needs 2 fields"),
        ("8302616181 00", "label must be a byte string"),
        ("82045801 00", "32 bytes"),
        ("820301", "leaf value must be a byte string"),
        ("a0", "must be an array"),
        ("8261 6103", "integer tag"),
    ],
)
def test_malformed_nodes_raise_hash_tree_error(tree_hex: str, message: str) -> None:
    with pytest.raises(HashTreeError, match=message):
        hash_tree_root(bytes.fromhex(tree_hex.replace(" ", "")))


def test_malformed_cbor_raises_cbor_error() -> None:
    with pytest.raises(CborError):
        hash_tree_root(b"")
    with pytest.raises(CborError):
        hash_tree_root(bytes.fromhex("830183"))
    with pytest.raises(CborError, match="trailing"):
        hash_tree_root(bytes.fromhex("810000"))


def test_deep_nesting_is_rejected_not_a_crash() -> None:
    deep = bytes.fromhex("8301") * 5000 + bytes.fromhex("8100") * 5001
    with pytest.raises(ValueError, match="too deep"):
        hash_tree_root(deep)
    tree: Tree = ("empty",)
    for _ in range(5000):
        tree = ("fork", tree, ("empty",))
    with pytest.raises(HashTreeError, match="deeper"):
        hash_tree_encode(tree)
    with pytest.raises(HashTreeError, match="deeper"):
        hash_tree_digest(tree)


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (("fork", ("empty",)), "cannot have 1 fields"),
        (("labeled", "a", ("empty",)), "label must be bytes"),
        (("leaf", bytearray(b"x")), "leaf value must be bytes"),
        (("pruned", bytes(31)), "32 bytes"),
        (("branch",), "unknown node kind"),
        ((), "empty tuple"),
        ((1, 2), "kind"),
        ("empty", "must be a tuple"),
        (None, "must be a tuple"),
    ],
)
def test_builder_rejects_malformed_structures(tree: object, message: str) -> None:
    with pytest.raises(HashTreeError, match=message):
        hash_tree_encode(tree)
    with pytest.raises(HashTreeError, match=message):
        hash_tree_digest(tree)


def test_builder_accepts_lists_as_nodes() -> None:
    assert hash_tree_encode(["labeled", b"a", ["leaf", b"x"]]) == hash_tree_encode(
        ("labeled", b"a", ("leaf", b"x"))
    )


# --- properties -------------------------------------------------------------------------------------

labels = st.binary(min_size=0, max_size=3).map(lambda b: bytes(x % 4 for x in b))
label_maps = st.dictionaries(labels, st.binary(max_size=8), max_size=12)


def balanced(items: list[tuple[bytes, Tree]]) -> Tree:
    """A well-formed tree over sorted labels: balanced forks, no Empty inside a fork."""
    if not items:
        return ("empty",)
    if len(items) == 1:
        label, subtree = items[0]
        return ("labeled", label, subtree)
    mid = len(items) // 2
    return ("fork", balanced(items[:mid]), balanced(items[mid:]))


def map_tree(entries: dict[bytes, bytes]) -> Tree:
    return balanced([(k, ("leaf", v)) for k, v in sorted(entries.items())])


@given(label_maps, labels)
def test_well_formed_trees_prove_presence_and_absence(entries: dict[bytes, bytes], probe: bytes) -> None:
    tree = map_tree(entries)
    encoded = hash_tree_encode(tree)
    assert hash_tree_root(encoded) == hash_tree_digest(tree)
    for key, value in entries.items():
        assert lookup_path(encoded, [key]) == ("found", value)
        assert lookup_path(encoded, [key, b"below a leaf"]) == ("absent", None)
    if probe not in entries:
        assert lookup_path(encoded, [probe]) == ("absent", None)


def prune(tree: Tree, choose: st.DataObject) -> Tree:
    """Replace random subtrees by their hash, as a replica does for paths nobody asked for."""
    if tree[0] != "empty" and choose.draw(st.booleans()):
        return ("pruned", hash_tree_digest(tree))
    if tree[0] == "fork":
        return ("fork", prune(tree[1], choose), prune(tree[2], choose))
    return tree


def visible_labels(tree: Tree) -> set[bytes]:
    if tree[0] == "fork":
        return visible_labels(tree[1]) | visible_labels(tree[2])
    return {tree[1]} if tree[0] == "labeled" else set()


@given(label_maps, labels, st.data())
def test_pruning_keeps_the_root_hash_and_turns_hidden_labels_unknown(
    entries: dict[bytes, bytes], probe: bytes, data: st.DataObject
) -> None:
    full = map_tree(entries)
    pruned = prune(full, data)
    encoded = hash_tree_encode(pruned)
    assert hash_tree_root(encoded) == hash_tree_digest(full)
    visible = visible_labels(pruned)
    for key, value in entries.items():
        expected = ("found", value) if key in visible else ("unknown", None)
        assert lookup_path(encoded, [key]) == expected
    if probe not in entries:
        assert lookup_path(encoded, [probe])[0] in ("absent", "unknown")


cbor_like = st.recursive(
    st.integers(min_value=0, max_value=6) | st.binary(max_size=40) | st.none(),
    lambda children: st.lists(children, max_size=4),
    max_leaves=20,
)


@given(cbor_like)
def test_arbitrary_cbor_is_a_tree_or_a_hash_tree_error(value: object) -> None:
    encoded = cbor_encode(value)
    try:
        root = hash_tree_root(encoded)
    except HashTreeError:
        return
    assert len(root) == 32


@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(HashTreeError, CborError):
        assert len(hash_tree_root(data)) == 32
    with contextlib.suppress(HashTreeError, CborError):
        lookup_path(data, [b"a"])


@settings(max_examples=50)
@given(label_maps, st.data())
def test_truncated_trees_are_rejected(entries: dict[bytes, bytes], data: st.DataObject) -> None:
    encoded = hash_tree_encode(map_tree(entries))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises((CborError, HashTreeError)):
        hash_tree_root(encoded[:cut])
    with pytest.raises((CborError, HashTreeError)):
        lookup_path(encoded[:cut], [b"a"])
