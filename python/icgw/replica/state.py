"""The replicated state the emulator certifies: its hash tree, the ingress history, certification.

The state tree (IC-INTERFACE.md §5, §7, §11) is

    /canister/<cid>/{certified_data, metadata/candid:service}
    /canister_ranges/<sid>/<first canister of the shard>        (sharded range layout)
    /request_status/<rid>/{status, reply, reject_code, reject_message, error_code}
    /subnet/<sid>/{canister_ranges, node/<nid>/public_key, public_key}
    /time

It is kept as nested labeled maps whose digests are computed here with hashlib, so that a round only
rehashes what changed: small maps (a handful of labels) are rehashed whole and shaped like the
replica's trees (neighbours paired bottom-up), while the request statuses, which grow with traffic,
live in `merkle.CertifiedMap`, a treap whose node hashes are cached and recomputed only along changed
paths (O(log n) per change, one signature per round however many changes).

Witnesses are rendered straight into the CBOR array form of a hash tree (`[1, l, r]`, `[2, label, t]`,
`[3, value]`, `[4, hash]`): requested paths are revealed, everything else is pruned, and a requested
label that does not exist is proven absent by revealing its neighbours. Labels are always sorted and
an Empty node never appears inside a Fork (an empty map is left out by its parent).

A witness is only valid for the tree that was certified, so certificates are produced only while the
state is *clean* (no change since the last certification); the round engine arranges that.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, Union

from icgw import core
from icgw.leb128 import encode_unsigned
from icgw.replica.interfaces import Outcome, Reply
from icgw.replica.merkle import CertifiedMap, HashTree

# --- hash-tree digests (IC-INTERFACE.md §5.2) -----------------------------------------------------

_FORK = b"\x10ic-hashtree-fork"
_LABELED = b"\x13ic-hashtree-labeled"
_LEAF = b"\x10ic-hashtree-leaf"
EMPTY_DIGEST = hashlib.sha256(b"\x11ic-hashtree-empty").digest()
STATE_ROOT_DOMAIN = b"\x0dic-state-root"

_sha256 = hashlib.sha256


def fork_digest(left: bytes, right: bytes) -> bytes:
    return _sha256(_FORK + left + right).digest()


def labeled_digest(label: bytes, subtree_digest: bytes) -> bytes:
    return _sha256(_LABELED + label + subtree_digest).digest()


def leaf_digest(value: bytes) -> bytes:
    return _sha256(_LEAF + value).digest()


# A witness node in CBOR array form; `Tree` is what `core.cbor_encode` turns into hash-tree CBOR.
Tree: TypeAlias = list[object]


def pruned(digest: bytes) -> Tree:
    return [4, digest]


# --- which parts of the tree a certificate reveals --------------------------------------------------

# A request for part of a map: label -> what to reveal below it; `WHOLE` reveals the whole subtree.
# A label whose value is `NEIGHBOUR` is revealed with its subtree pruned (to prove another label
# absent).
Reveal: TypeAlias = Union["PathSet", Literal["whole", "neighbour"]]
PathSet: TypeAlias = dict[bytes, Reveal]
WHOLE: Literal["whole"] = "whole"
NEIGHBOUR: Literal["neighbour"] = "neighbour"


def path_set(paths: Iterable[Sequence[bytes]]) -> PathSet:
    """The union of `paths` as a trie; a path that ends at a node reveals everything below it."""
    root: PathSet = {}
    for path in paths:
        if not path:
            raise ValueError("the empty path would reveal the whole state tree")
        node = root
        for i, label in enumerate(path):
            existing = node.get(label)
            if existing == WHOLE:
                break
            if i == len(path) - 1:
                node[label] = WHOLE
                break
            child: PathSet = existing if isinstance(existing, dict) else {}
            node[label] = child
            node = child
    return root


# --- labeled maps ---------------------------------------------------------------------------------

Subtree: TypeAlias = Union[bytes, "LabeledMap"]


def subtree_digest(subtree: Subtree) -> bytes:
    return leaf_digest(subtree) if isinstance(subtree, bytes) else subtree.digest()


def render_subtree(subtree: Subtree, reveal: Reveal) -> Tree:
    if reveal == NEIGHBOUR:
        return pruned(subtree_digest(subtree))
    if isinstance(subtree, bytes):
        return [3, subtree]
    return subtree.render(None if isinstance(reveal, str) else reveal)


class LabeledMap(ABC):
    """A map from labels to subtrees (leaf values or maps), rendered as forks of labeled nodes."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def digest(self) -> bytes: ...

    @abstractmethod
    def render(self, request: PathSet | None) -> Tree:
        """The witness revealing `request` (None: everything); the map must not be empty."""


def _absence_neighbours(labels: Sequence[bytes], missing: bytes) -> list[bytes]:
    """The labels right before and after a missing one: revealed, they prove it absent."""
    i = bisect.bisect_left(labels, missing)
    return [labels[j] for j in (i - 1, i) if 0 <= j < len(labels)]


class SmallMap(LabeledMap):
    """A map with few labels, rehashed whole when asked; forks pair neighbours bottom-up, as the
    replica shapes its trees (three labels give Fork(Fork(a, b), c))."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[bytes, Subtree]] = ()) -> None:
        self._entries: dict[bytes, Subtree] = dict(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, label: bytes) -> Subtree | None:
        return self._entries.get(label)

    def set(self, label: bytes, subtree: Subtree) -> None:
        self._entries[label] = subtree

    def _sorted(self) -> list[tuple[bytes, Subtree]]:
        return sorted(self._entries.items())

    def digest(self) -> bytes:
        if not self._entries:
            return EMPTY_DIGEST
        level = [labeled_digest(label, subtree_digest(sub)) for label, sub in self._sorted()]
        while len(level) > 1:
            paired = [fork_digest(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
        return level[0]

    def render(self, request: PathSet | None) -> Tree:
        entries = self._sorted()
        if not entries:
            return [0]
        reveal: dict[bytes, Reveal] = {}
        if request is None:
            reveal = dict.fromkeys(self._entries, WHOLE)
        else:
            labels = [label for label, _ in entries]
            for label, what in request.items():
                if label in self._entries:
                    reveal[label] = what
                else:
                    for neighbour in _absence_neighbours(labels, label):
                        reveal.setdefault(neighbour, NEIGHBOUR)
        # (tree or None when pruned, digest) per node, paired bottom-up like `digest`.
        level: list[tuple[Tree | None, bytes]] = []
        for label, sub in entries:
            shown = reveal.get(label)
            digest = labeled_digest(label, subtree_digest(sub))
            level.append(
                ([2, label, render_subtree(sub, shown)], digest) if shown is not None else (None, digest)
            )
        while len(level) > 1:
            paired: list[tuple[Tree | None, bytes]] = []
            for i in range(0, len(level) - 1, 2):
                (lt, ld), (rt, rd) = level[i], level[i + 1]
                digest = fork_digest(ld, rd)
                if lt is None and rt is None:
                    paired.append((None, digest))
                else:
                    paired.append(([1, lt or pruned(ld), rt or pruned(rd)], digest))
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
        tree, digest = level[0]
        return tree if tree is not None else pruned(digest)


def _as_tuple_tree(tree: Tree) -> HashTree:
    """A witness in array form as the nested tuples `merkle` keeps."""
    kind = tree[0]
    if kind == 1:
        return ("fork", _as_tuple_tree(tree[1]), _as_tuple_tree(tree[2]))  # type: ignore[arg-type]
    if kind == 2:
        return ("labeled", tree[1], _as_tuple_tree(tree[2]))  # type: ignore[arg-type]
    if kind == 3:
        return ("leaf", tree[1])
    if kind == 4:
        return ("pruned", tree[1])
    return ("empty",)


def _as_array_tree(tree: HashTree) -> Tree:
    kind = tree[0]
    if kind == "fork":
        return [1, _as_array_tree(tree[1]), _as_array_tree(tree[2])]
    if kind == "labeled":
        return [2, tree[1], _as_array_tree(tree[2])]
    if kind == "leaf":
        return [3, tree[1]]
    if kind == "pruned":
        return [4, tree[1]]
    return [0]


class LargeMap(LabeledMap):
    """A map that grows with traffic (the request statuses): `merkle.CertifiedMap`, an incremental
    treap whose hashes are recomputed only along changed paths (O(log n) per change).

    Its values are small maps, stored as their whole hash trees; a witness reveals a requested label's
    whole value (a request for /request_status/<rid>/status also shows the other fields of <rid>).
    """

    def __init__(self) -> None:
        self._map = CertifiedMap()

    def __len__(self) -> int:
        return len(self._map)

    def set(self, label: bytes, value: SmallMap) -> None:
        self._map.set(label, _as_tuple_tree(value.render(None)))

    def remove(self, label: bytes) -> None:
        self._map.delete(label)

    def digest(self) -> bytes:
        return self._map.root_hash()

    def render(self, request: PathSet | None) -> Tree:
        tree = self._map.as_hash_tree() if request is None else self._map.witness(request)
        return _as_array_tree(tree)


# --- the ingress history (IC-INTERFACE.md §7) -------------------------------------------------------

# "processing" is never certified here: a call executes atomically within one round.
RequestStatus = Literal["received", "replied", "rejected", "done"]

# Replied and rejected statuses stay readable this long, then turn into "done" (IC: at least 5 min).
TERMINAL_STATUS_KEPT_NS = 5 * 60 * 1_000_000_000


@dataclass(slots=True)
class IngressRecord:
    """A call the replica accepted, keyed by its request id."""

    request_id: bytes
    sender: bytes
    canister_id: bytes
    method_name: str
    arg: bytes
    ingress_expiry: int
    status: RequestStatus = "received"
    outcome: Outcome | None = None
    # Canister time at which the call reached replied/rejected (then "done" 5 min later).
    completed_ns: int | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in ("replied", "rejected", "done")


def request_status_subtree(record: IngressRecord) -> SmallMap:
    """The labels under /request_status/<rid> for the record's current status."""
    fields = SmallMap([(b"status", record.status.encode())])
    outcome = record.outcome
    if record.status == "replied" and isinstance(outcome, Reply):
        fields.set(b"reply", outcome.arg)
    elif record.status == "rejected" and outcome is not None and not isinstance(outcome, Reply):
        fields.set(b"reject_code", encode_unsigned(outcome.code))
        fields.set(b"reject_message", outcome.message.encode())
        if outcome.error_code is not None:
            fields.set(b"error_code", outcome.error_code.encode())
    return fields


# --- the certified state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubnetInfo:
    """What /subnet/<sid> and /canister_ranges/<sid> describe: one root-signed subnet with one node."""

    subnet_id: bytes
    public_key_der: bytes
    node_id: bytes
    node_public_key_der: bytes
    canister_ranges: tuple[tuple[bytes, bytes], ...]

    def contains(self, canister_id: bytes) -> bool:
        return any(lo <= canister_id <= hi for lo, hi in self.canister_ranges)


@dataclass(frozen=True, slots=True)
class Certified:
    """The outcome of one certification: when, the root hash and its BLS signature."""

    round: int
    time_ns: int
    root_hash: bytes
    signature: bytes


def subnet_subtrees(subnet: SubnetInfo) -> dict[bytes, SmallMap]:
    """The top-level `subnet` and `canister_ranges` maps of a subnet (both range layouts)."""
    ranges = core.cbor_encode([[lo, hi] for lo, hi in subnet.canister_ranges])
    node = SmallMap([(subnet.node_id, SmallMap([(b"public_key", subnet.node_public_key_der)]))])
    subnet_map = SmallMap(
        [
            (b"canister_ranges", ranges),
            (b"node", node),
            (b"public_key", subnet.public_key_der),
        ]
    )
    # Sharded layout: one shard per range, labelled by the range's first canister id.
    shards = SmallMap((lo, core.cbor_encode([[lo, hi]])) for lo, hi in subnet.canister_ranges)
    return {
        b"subnet": SmallMap([(subnet.subnet_id, subnet_map)]),
        b"canister_ranges": SmallMap([(subnet.subnet_id, shards)]),
    }


class CertifiedState:
    """The state tree, its changes since the last certification, and certificates for parts of it."""

    def __init__(self, *, root_secret_key: bytes, subnet: SubnetInfo) -> None:
        self._secret = root_secret_key
        self.subnet = subnet
        self.requests = LargeMap()
        self._canisters = SmallMap()
        self._time = b""
        self._round = 0
        self._dirty = True
        self.certified: Certified | None = None
        self._static = subnet_subtrees(subnet)
        # Certificates asked for repeatedly within one round (data certificates for every poll).
        self._certificate_cache: dict[tuple[tuple[bytes, ...], ...], bytes] = {}

    # --- changes ----------------------------------------------------------------------------------

    @property
    def is_dirty(self) -> bool:
        return self._dirty

    def add_canister(self, canister_id: bytes, certified_data: bytes, candid_interface: str) -> None:
        metadata = SmallMap([(b"candid:service", candid_interface.encode())])
        self._canisters.set(
            canister_id, SmallMap([(b"certified_data", certified_data), (b"metadata", metadata)])
        )
        self._dirty = True

    def invalidate(self) -> None:
        """Something certified is about to change: the next certificate needs a new certification."""
        self._dirty = True

    def set_certified_data(self, canister_id: bytes, certified_data: bytes) -> None:
        entry = self._canisters.get(canister_id)
        if not isinstance(entry, SmallMap):
            raise KeyError(f"no canister {core.principal_to_text(canister_id)}")
        if entry.get(b"certified_data") != certified_data:
            entry.set(b"certified_data", certified_data)
            self._dirty = True

    def set_request_status(self, record: IngressRecord) -> None:
        self.requests.set(record.request_id, request_status_subtree(record))
        self._dirty = True

    def remove_request_status(self, request_id: bytes) -> None:
        self.requests.remove(request_id)
        self._dirty = True

    # --- certification ----------------------------------------------------------------------------

    def _top(self) -> SmallMap:
        top = SmallMap(self._static.items())
        if len(self._canisters):
            top.set(b"canister", self._canisters)
        if len(self.requests):
            top.set(b"request_status", self.requests)
        top.set(b"time", self._time)
        return top

    def certify(self, now_ns: int) -> Certified:
        """Sign the current tree with /time = now: one BLS signature covering every change."""
        if self.certified is not None and now_ns < self.certified.time_ns:
            now_ns = self.certified.time_ns  # certified time never goes backwards
        self._time = encode_unsigned(now_ns)
        root_hash = self._top().digest()
        signature = core.bls_sign(self._secret, STATE_ROOT_DOMAIN + root_hash)
        self._round += 1
        self.certified = Certified(self._round, now_ns, root_hash, signature)
        self._dirty = False
        self._certificate_cache.clear()
        return self.certified

    def certificate(self, paths: Iterable[Sequence[bytes]]) -> bytes:
        """A certificate (CBOR, tag 55799) revealing `paths` and /time; the state must be clean."""
        if self._dirty or self.certified is None:
            raise RuntimeError("certificates exist only for certified state: certify first")
        key = tuple(tuple(p) for p in paths)
        cached = self._certificate_cache.get(key)
        if cached is not None:
            return cached
        request = path_set([*key, (b"time",)])
        tree = self._top().render(request)
        cert = core.cbor_encode({"tree": tree, "signature": self.certified.signature})
        self._certificate_cache[key] = cert
        return cert


class IngressHistory:
    """Request statuses over their lifetime: received -> replied | rejected -> done -> pruned.

    A terminal status turns into "done" (its reply dropped) 5 minutes after completion, and a record
    is pruned once its ingress_expiry has passed as well: until then a replay of the same request id
    finds it and is not executed again. Changes are written through to the state tree.
    """

    def __init__(self, state: CertifiedState) -> None:
        self._state = state
        self._records: dict[bytes, IngressRecord] = {}
        # (due canister time, sequence, request id): when a record is due to become done or pruned.
        self._timeline: list[tuple[int, int, bytes]] = []
        self._seq = 0

    def get(self, request_id: bytes) -> IngressRecord | None:
        return self._records.get(request_id)

    def receive(self, record: IngressRecord) -> None:
        self._records[record.request_id] = record
        self._state.set_request_status(record)

    def complete(self, record: IngressRecord, outcome: Outcome, now_ns: int) -> None:
        record.status = "replied" if isinstance(outcome, Reply) else "rejected"
        record.outcome = outcome
        record.completed_ns = now_ns
        self._state.set_request_status(record)
        self._schedule(now_ns + TERMINAL_STATUS_KEPT_NS, record.request_id)

    def drop(self, request_id: bytes) -> None:
        """Forget a request (it expired before it could execute): its status becomes absent."""
        if self._records.pop(request_id, None) is not None:
            self._state.remove_request_status(request_id)

    def _schedule(self, due_ns: int, request_id: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._timeline, (due_ns, self._seq, request_id))

    def advance(self, now_ns: int) -> None:
        """Apply every transition due by `now_ns`."""
        timeline = self._timeline
        while timeline and timeline[0][0] <= now_ns:
            _, _, request_id = heapq.heappop(timeline)
            record = self._records.get(request_id)
            if record is None:
                continue
            if record.status in ("replied", "rejected"):
                record.status = "done"
                record.outcome = None
                self._state.set_request_status(record)
                if record.ingress_expiry > now_ns:
                    self._schedule(record.ingress_expiry + 1, request_id)
                    continue
            if record.status == "done":
                self.drop(request_id)
