"""The IC hash tree (IC-INTERFACE.md §5.2) over a sorted map, kept up to date incrementally.

`CertifiedMap` maps labels (bytes, ordered byte-wise) to values (a leaf's bytes, or a whole hash tree)
and can at any time give the root hash of the hash tree that represents it, or a witness: the same
tree with everything a reader does not need replaced by `Pruned` nodes.

The map is a treap whose priorities are a hash of the label. Its shape therefore depends only on the set
of labels, not on the order they were inserted or deleted in: the same contents always give the same
root hash, and a naive rebuild from the sorted items can check it. Expected depth is O(log n) for any
insertion pattern, including the CDK's (append at the end, trim at the front) and the replica's
(random 32-byte request ids). Each node caches the hash of its subtree; a change only invalidates the
path from the root to the changed node, and `root_hash()` recomputes just the invalidated nodes, so a
burst of changes between two certifications shares the work near the root.

Tree shape: a node with label k and subtrees L, R is represented as `fork(L, fork(labeled(k, v), R))`
with the missing parts left out, so labels read left to right in sorted order and a `Fork` never holds
an `Empty` (an empty map is a lone `Empty`).

Trees are nested tuples, the form `icgw.core.hash_tree_encode`/`hash_tree_digest` take:
`("empty",)`, `("fork", l, r)`, `("labeled", label, t)`, `("leaf", value)`, `("pruned", hash32)`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias

# A hash tree as nested tuples (see the module docstring); `Any` because the shapes are recursive and
# heterogeneous, which tuple types cannot express without making every construction site a cast.
HashTree: TypeAlias = tuple[Any, ...]
# A map value: the bytes of a leaf, or a hash tree placed under the label as it is.
MapValue: TypeAlias = bytes | HashTree

EMPTY: HashTree = ("empty",)

_EMPTY_DOMAIN = b"\x11ic-hashtree-empty"
_FORK_DOMAIN = b"\x10ic-hashtree-fork"
_LABELED_DOMAIN = b"\x13ic-hashtree-labeled"
_LEAF_DOMAIN = b"\x10ic-hashtree-leaf"
_PRIORITY_DOMAIN = b"\x0eicgw-treap-prio"

EMPTY_HASH = hashlib.sha256(_EMPTY_DOMAIN).digest()


def fork_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_FORK_DOMAIN + left + right).digest()


def labeled_hash(label: bytes, subtree_hash: bytes) -> bytes:
    return hashlib.sha256(_LABELED_DOMAIN + label + subtree_hash).digest()


def leaf_hash(value: bytes) -> bytes:
    return hashlib.sha256(_LEAF_DOMAIN + value).digest()


def tree_digest(tree: HashTree) -> bytes:
    """The root hash (`reconstruct`) of a tree given as nested tuples."""
    kind = tree[0]
    if kind == "fork":
        return fork_hash(tree_digest(tree[1]), tree_digest(tree[2]))
    if kind == "labeled":
        return labeled_hash(tree[1], tree_digest(tree[2]))
    if kind == "leaf":
        return leaf_hash(tree[1])
    if kind == "pruned":
        return bytes(tree[1])
    if kind == "empty":
        return EMPTY_HASH
    raise ValueError(f"not a hash tree node: {kind!r}")


def check_well_formed(tree: HashTree) -> None:
    """Raise ValueError unless `tree` is a hash tree a real replica could produce.

    That is: known node kinds with bytes fields, 32-byte pruned hashes, no `Empty` inside a `Fork`
    (lookups in agent-js and ic-certification give wrong answers there), labels strictly increasing
    within each flattened fork, and no leaf mixed with labeled nodes.
    """
    _check_node(tree, 0)


def _check_node(tree: HashTree, depth: int) -> None:
    if depth > 256:
        raise ValueError("hash tree nests too deeply")
    if not isinstance(tree, tuple) or not tree:
        raise ValueError(f"not a hash tree node: {tree!r}")
    kind = tree[0]
    if kind == "empty":
        if len(tree) != 1:
            raise ValueError("empty node with fields")
        return
    if kind == "leaf":
        if len(tree) != 2 or not isinstance(tree[1], bytes):
            raise ValueError("leaf must hold bytes")
        return
    if kind == "pruned":
        if len(tree) != 2 or not isinstance(tree[1], bytes) or len(tree[1]) != 32:
            raise ValueError("pruned node must hold a 32-byte hash")
        return
    if kind in ("fork", "labeled"):
        children = _flatten_forks(tree)
        if any(child[0] == "empty" for child in children) and len(children) > 1:
            raise ValueError("Empty inside a Fork")
        labels = [child[1] for child in children if child[0] == "labeled"]
        if labels and any(child[0] == "leaf" for child in children):
            raise ValueError("leaf mixed with labeled nodes")
        for child in children:
            if child[0] == "labeled":
                if len(child) != 3 or not isinstance(child[1], bytes):
                    raise ValueError("labeled node must hold a bytes label and a subtree")
                _check_node(child[2], depth + 1)
            else:
                _check_node(child, depth + 1)
        if any(a >= b for a, b in itertools.pairwise(labels)):
            raise ValueError("labels are not strictly increasing")
        return
    raise ValueError(f"not a hash tree node: {kind!r}")


def _flatten_forks(tree: HashTree) -> list[HashTree]:
    if tree[0] != "fork":
        return [tree]
    if len(tree) != 3:
        raise ValueError("fork node must have two children")
    return _flatten_forks(tree[1]) + _flatten_forks(tree[2])


def label_priority(label: bytes) -> int:
    """The treap priority of a label (a hash, so the tree shape depends on the labels only)."""
    return int.from_bytes(hashlib.sha256(_PRIORITY_DOMAIN + label).digest()[:16], "big")


def _value_hash(value: MapValue) -> bytes:
    if isinstance(value, bytes):
        return leaf_hash(value)
    check_well_formed(value)
    return tree_digest(value)


def _value_tree(value: MapValue) -> HashTree:
    return ("leaf", value) if isinstance(value, bytes) else value


class _Node:
    __slots__ = ("hash", "label", "left", "own_hash", "priority", "right", "value", "value_hash")

    def __init__(self, label: bytes, value: MapValue) -> None:
        self.label = label
        self.priority = label_priority(label)
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.value = value
        self.value_hash = _value_hash(value)
        self.own_hash = labeled_hash(label, self.value_hash)
        # Hash of the whole subtree rooted here; None while invalidated by a change below.
        self.hash: bytes | None = None


def _rotate_right(node: _Node) -> _Node:
    pivot = node.left
    assert pivot is not None
    node.left = pivot.right
    pivot.right = node
    node.hash = pivot.hash = None
    return pivot


def _rotate_left(node: _Node) -> _Node:
    pivot = node.right
    assert pivot is not None
    node.right = pivot.left
    pivot.left = node
    node.hash = pivot.hash = None
    return pivot


def _merge(left: _Node | None, right: _Node | None) -> _Node | None:
    """Join two treaps whose labels are all smaller (left) than all labels of the other (right)."""
    if left is None:
        return right
    if right is None:
        return left
    if left.priority > right.priority:
        left.right = _merge(left.right, right)
        left.hash = None
        return left
    right.left = _merge(left, right.left)
    right.hash = None
    return right


def _subtree_hash(node: _Node) -> bytes:
    if node.hash is not None:
        return node.hash
    h = node.own_hash
    if node.right is not None:
        h = fork_hash(h, _subtree_hash(node.right))
    if node.left is not None:
        h = fork_hash(_subtree_hash(node.left), h)
    node.hash = h
    return h


def _fork(left: HashTree, right: HashTree) -> HashTree:
    # Two pruned halves make one pruned node: same hash, smaller witness.
    if left[0] == "pruned" and right[0] == "pruned":
        return ("pruned", fork_hash(left[1], right[1]))
    return ("fork", left, right)


def _join(left: HashTree | None, own: HashTree, right: HashTree | None) -> HashTree:
    """The tree of one node; must mirror `_subtree_hash`."""
    tree = own if right is None else _fork(own, right)
    return tree if left is None else _fork(left, tree)


# How much of a node a witness reveals; a higher mode includes the lower ones.
_ANCESTOR = 1  # only on the way to something revealed: its own label/value stay pruned
_NEIGHBOUR = 2  # the label is revealed (to prove absence of its neighbours), the value pruned
_FULL = 3  # label and value revealed


class CertifiedMap:
    """A sorted map from labels to values with an incrementally maintained IC hash tree."""

    def __init__(self, items: Iterable[tuple[bytes, MapValue]] = ()) -> None:
        self._root: _Node | None = None
        self._len = 0
        for label, value in items:
            self.set(label, value)

    # --- reading ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __contains__(self, label: object) -> bool:
        return isinstance(label, bytes) and self._find(label) is not None

    def __getitem__(self, label: bytes) -> MapValue:
        node = self._find(label)
        if node is None:
            raise KeyError(label)
        return node.value

    def get(self, label: bytes, default: MapValue | None = None) -> MapValue | None:
        node = self._find(label)
        return default if node is None else node.value

    def __iter__(self) -> Iterator[bytes]:
        for label, _ in self.items():
            yield label

    def items(
        self, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[tuple[bytes, MapValue]]:
        """(label, value) in label order, from `start` (inclusive) to `stop` (exclusive)."""
        stack: list[_Node] = []
        node = self._root
        while stack or node is not None:
            if node is not None:
                if start is not None and node.label < start:
                    node = node.right  # the node and its left subtree are before the range
                    continue
                stack.append(node)
                node = node.left
                continue
            node = stack.pop()
            if stop is not None and node.label >= stop:
                return
            yield node.label, node.value
            node = node.right

    def first_label(self) -> bytes | None:
        node = self._root
        if node is None:
            return None
        while node.left is not None:
            node = node.left
        return node.label

    def last_label(self) -> bytes | None:
        node = self._root
        if node is None:
            return None
        while node.right is not None:
            node = node.right
        return node.label

    # --- writing ----------------------------------------------------------------------------------

    def set(self, label: bytes, value: MapValue) -> None:
        """Insert or replace `label`'s value: O(log n) expected."""
        if not isinstance(label, bytes):
            raise TypeError(f"labels are bytes, not {type(label).__name__}")
        existing = self._find(label)
        if existing is not None and existing.value == value:
            return
        node = _Node(label, value)  # hashes the value before anything changes: invalid values raise
        self._root = self._insert(self._root, node)

    __setitem__ = set

    def delete(self, label: bytes) -> bool:
        """Remove `label`; whether it was there. O(log n) expected."""
        if self._find(label) is None:
            return False
        self._root = self._delete(self._root, label)
        self._len -= 1
        return True

    def __delitem__(self, label: bytes) -> None:
        if not self.delete(label):
            raise KeyError(label)

    def clear(self) -> None:
        self._root = None
        self._len = 0

    # --- hashing and witnesses --------------------------------------------------------------------

    def root_hash(self) -> bytes:
        """The root hash of `as_hash_tree()`; recomputes only what changed since the last call."""
        return EMPTY_HASH if self._root is None else _subtree_hash(self._root)

    def as_hash_tree(self) -> HashTree:
        """The whole map as a hash tree, nothing pruned."""
        if self._root is None:
            return EMPTY
        return self._reveal_all(self._root)

    def witness(self, labels: Iterable[bytes]) -> HashTree:
        """The tree revealing exactly the given labels' values, everything else pruned.

        A label that is not in the map is proven absent: its two neighbours in label order are
        revealed (their values pruned), so a lookup finds it between two adjacent labels.
        """
        if self._root is None:
            return EMPTY
        self.root_hash()
        marks: dict[int, int] = {}
        for label in labels:
            path, found = self._search_path(label)
            for node in path:
                _raise_mark(marks, node, _ANCESTOR)
            if found:
                _raise_mark(marks, path[-1], _FULL)
                continue
            below = [node for node in path if node.label < label]
            above = [node for node in path if node.label > label]
            # On the search path of a missing label lie both of its neighbours: the last node passed
            # on the right-hand side is the predecessor, the last on the left-hand side the successor.
            if below:
                _raise_mark(marks, below[-1], _NEIGHBOUR)
            if above:
                _raise_mark(marks, above[-1], _NEIGHBOUR)
        return self._reveal(self._root, marks)

    def witness_range(self, first: bytes, last: bytes) -> HashTree:
        """The tree revealing every label in [first, last] with its value, plus the labels just outside
        the range (values pruned), which proves that no other label lies in it."""
        if first > last:
            raise ValueError("the range is empty: first > last")
        if self._root is None:
            return EMPTY
        self.root_hash()
        marks: dict[int, int] = {}
        self._mark_range(self._root, first, last, marks)
        for neighbour in (self._predecessor(first), self._successor(last)):
            if neighbour is not None:
                path, _ = self._search_path(neighbour)
                for node in path:
                    _raise_mark(marks, node, _ANCESTOR)
                _raise_mark(marks, path[-1], _NEIGHBOUR)
        return self._reveal(self._root, marks)

    # --- internals --------------------------------------------------------------------------------

    def _find(self, label: bytes) -> _Node | None:
        node = self._root
        while node is not None:
            if label == node.label:
                return node
            node = node.left if label < node.label else node.right
        return None

    def _search_path(self, label: bytes) -> tuple[list[_Node], bool]:
        path: list[_Node] = []
        node = self._root
        while node is not None:
            path.append(node)
            if label == node.label:
                return path, True
            node = node.left if label < node.label else node.right
        return path, False

    def _predecessor(self, label: bytes) -> bytes | None:
        """The greatest label strictly smaller than `label`."""
        best = None
        node = self._root
        while node is not None:
            if node.label < label:
                best = node.label
                node = node.right
            else:
                node = node.left
        return best

    def _successor(self, label: bytes) -> bytes | None:
        """The smallest label strictly greater than `label`."""
        best = None
        node = self._root
        while node is not None:
            if node.label > label:
                best = node.label
                node = node.left
            else:
                node = node.right
        return best

    def _insert(self, node: _Node | None, new: _Node) -> _Node:
        if node is None:
            self._len += 1
            return new
        node.hash = None
        if new.label == node.label:
            # Replace in place: the subtrees and the priority (a function of the label) stay.
            node.value, node.value_hash, node.own_hash = new.value, new.value_hash, new.own_hash
            return node
        if new.label < node.label:
            node.left = self._insert(node.left, new)
            if node.left.priority > node.priority:
                return _rotate_right(node)
        else:
            node.right = self._insert(node.right, new)
            if node.right.priority > node.priority:
                return _rotate_left(node)
        return node

    def _delete(self, node: _Node | None, label: bytes) -> _Node | None:
        # Only called for a label that is present.
        assert node is not None
        if label == node.label:
            return _merge(node.left, node.right)
        node.hash = None
        if label < node.label:
            node.left = self._delete(node.left, label)
        else:
            node.right = self._delete(node.right, label)
        return node

    def _mark_range(self, node: _Node | None, first: bytes, last: bytes, marks: dict[int, int]) -> bool:
        """Mark every node in [first, last] as revealed and their ancestors; whether any was found."""
        if node is None:
            return False
        hit = False
        if first < node.label and self._mark_range(node.left, first, last, marks):
            hit = True
        if node.label < last and self._mark_range(node.right, first, last, marks):
            hit = True
        if first <= node.label <= last:
            _raise_mark(marks, node, _FULL)
            return True
        if hit:
            _raise_mark(marks, node, _ANCESTOR)
        return hit

    def _reveal(self, node: _Node, marks: dict[int, int]) -> HashTree:
        mode = marks.get(id(node))
        if mode is None:
            assert node.hash is not None
            return ("pruned", node.hash)
        left = None if node.left is None else self._reveal(node.left, marks)
        right = None if node.right is None else self._reveal(node.right, marks)
        own: HashTree
        if mode == _FULL:
            own = ("labeled", node.label, _value_tree(node.value))
        elif mode == _NEIGHBOUR:
            own = ("labeled", node.label, ("pruned", node.value_hash))
        else:
            own = ("pruned", node.own_hash)
        return _join(left, own, right)

    def _reveal_all(self, node: _Node) -> HashTree:
        left = None if node.left is None else self._reveal_all(node.left)
        right = None if node.right is None else self._reveal_all(node.right)
        own = ("labeled", node.label, _value_tree(node.value))
        tree = own if right is None else ("fork", own, right)
        return tree if left is None else ("fork", left, tree)


def _raise_mark(marks: dict[int, int], node: _Node, mode: int) -> None:
    key = id(node)
    if marks.get(key, 0) < mode:
        marks[key] = mode
