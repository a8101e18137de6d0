"""Verification of relayed canister messages, as the SDK's `isMessageBodyValid` does it (PROTOCOL.md §6.3).

A message is genuine when (1) its certificate is signed by the IC for this canister and fresh, (2) the
witness `tree` hashes to the canister's certified data in that certificate, and (3) the tree maps
`websocket/<key>` to the SHA-256 of the message's content. The gateway relays one `ws_get_messages`
batch as many frames that all carry the same `cert` and `tree`, so the expensive part is done once per
distinct `cert` (the BLS check, in the core) and once per distinct `tree` (its root hash in the core,
and a map of the leaves under `websocket`), and kept in small LRU caches; per message only a dict
lookup and one SHA-256 remain. A verifier can be shared by many clients of one canister: a load
generator's thousands of connections then check each batch certificate once.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from icgw.core import (
    CborError,
    CertificateError,
    CoreError,
    cbor_decode,
    cbor_encode,
    hash_tree_root,
    lookup_path,
    verify_certificate,
)
from icgw.leb128 import decode_unsigned

from .errors import VerificationError

NS_PER_MINUTE = 60_000_000_000
# The SDK's `maxCertificateAgeInMinutes` default, and agent-js' fixed tolerance for a certificate time
# ahead of the client's clock.
DEFAULT_MAX_CERTIFICATE_AGE_NS = 5 * NS_PER_MINUTE
MAX_CERTIFICATE_FUTURE_NS = 5 * NS_PER_MINUTE

_WEBSOCKET_LABEL = b"websocket"
_FAILED = "Certificate validation failed"
_TIME_PATH = [b"time"]


class MessageVerifier:
    """Checks that messages were certified by the IC for one canister, under one root key.

    `max_certificate_age_ns=None` switches the freshness check off (for recorded test vectors); `clock`
    gives the client's time in ns since 1970. `cache_size` bounds each of the two caches (certificates,
    trees); the gateway sends a batch's frames back to back, so a few entries are enough.
    """

    def __init__(
        self,
        root_key_der: bytes,
        canister_id: bytes,
        *,
        max_certificate_age_ns: int | None = DEFAULT_MAX_CERTIFICATE_AGE_NS,
        clock: Callable[[], int] = time.time_ns,
        cache_size: int = 16,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.root_key_der = root_key_der
        self.canister_id = canister_id
        self.max_certificate_age_ns = max_certificate_age_ns
        self._clock = clock
        self._cache_size = cache_size
        self._certificates: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self._witnesses: OrderedDict[bytes, _Witness] = OrderedDict()
        self._certified_data_path = [b"canister", canister_id, b"certified_data"]
        # Counters for tests and benchmarks: full certificate checks, and messages checked in all.
        self.certificate_checks = 0
        self.messages_checked = 0

    def verify(self, key: str, content: bytes, cert: bytes, tree: bytes) -> None:
        """Raise VerificationError unless the IC certified `content` under `key` for the canister."""
        self.messages_checked += 1
        certified_data = self._certified_data(cert)
        witness = self._witness(tree)
        if witness.root != certified_data:
            raise VerificationError(f"{_FAILED}: the witness does not match the certified data")
        expected = witness.leaves.get(key.encode(), witness.websocket_leaf)
        if expected is None:
            raise VerificationError(f"{_FAILED}: the witness does not cover key {key!r}")
        if hashlib.sha256(content).digest() != expected:
            raise VerificationError(f"{_FAILED}: the content of {key!r} is not the certified one")

    def _certified_data(self, cert: bytes) -> bytes:
        """The canister's certified data in `cert`, verifying the certificate on first sight and its
        freshness every time (a cached certificate grows old too)."""
        now_ns = self._clock() if self.max_certificate_age_ns is not None else None
        cached = self._certificates.get(cert)
        if cached is not None:
            self._certificates.move_to_end(cert)
            certified_data, time_ns = cached
            if now_ns is not None:
                self._check_fresh(time_ns, now_ns)
            return certified_data
        try:
            verify_certificate(
                cert,
                self.root_key_der,
                canister_id=self.canister_id,
                now_ns=now_ns,
                max_age_ns=self.max_certificate_age_ns,
            )
        except CertificateError as error:
            raise VerificationError(f"{_FAILED}: {error}") from error
        self.certificate_checks += 1
        state_tree = _state_tree(cert)
        found = _found(state_tree, self._certified_data_path)
        if found is None:
            raise VerificationError("Could not find certified data for this canister in the certificate.")
        time_leaf = _found(state_tree, _TIME_PATH)
        if time_leaf is None:
            raise VerificationError(f"{_FAILED}: the certificate has no /time")
        self._certificates[cert] = (found, _time_ns(time_leaf))
        if len(self._certificates) > self._cache_size:
            self._certificates.popitem(last=False)
        return found

    def _check_fresh(self, time_ns: int, now_ns: int) -> None:
        assert self.max_certificate_age_ns is not None
        if time_ns < now_ns - self.max_certificate_age_ns:
            raise VerificationError(f"{_FAILED}: the certificate is too old")
        if time_ns > now_ns + MAX_CERTIFICATE_FUTURE_NS:
            raise VerificationError(f"{_FAILED}: the certificate time is in the future")

    def _witness(self, tree: bytes) -> _Witness:
        witness = self._witnesses.get(tree)
        if witness is None:
            witness = _read_witness(tree)
            self._witnesses[tree] = witness
            if len(self._witnesses) > self._cache_size:
                self._witnesses.popitem(last=False)
        return witness


@dataclass(frozen=True, slots=True)
class _Witness:
    """What a message needs from a witness tree: its root hash and the leaves under `websocket`."""

    root: bytes
    leaves: dict[bytes, bytes]  # key label -> leaf value (the SHA-256 of the message's content)
    # Like the SDK's lookup fallback: a `websocket` label that is itself a leaf stands for every key.
    websocket_leaf: bytes | None


def _read_witness(tree: bytes) -> _Witness:
    """Hash the tree (the core also checks its shape) and collect the leaves `websocket/<key>`, as the
    spec's lookup_path finds them: through forks, the first of equal labels, leaves only."""
    try:
        root = hash_tree_root(tree)
        node = cbor_decode(tree)
    except CoreError as error:
        raise VerificationError(f"{_FAILED}: bad witness tree: {error}") from error
    websocket = next((sub for label, sub in _labeled(node) if label == _WEBSOCKET_LABEL), None)
    if websocket is None:
        return _Witness(root, {}, None)
    if websocket[0] == _LEAF:
        return _Witness(root, {}, websocket[1])
    leaves: dict[bytes, bytes] = {}
    for label, sub in _labeled(websocket):
        if sub[0] == _LEAF:
            leaves.setdefault(label, sub[1])
    return _Witness(root, leaves, None)


# Hash-tree node tags: [0] empty, [1, left, right] fork, [2, label, subtree] labeled, [3, value] leaf,
# [4, hash] pruned.
_FORK, _LABELED, _LEAF = 1, 2, 3


def _labeled(node: Any) -> Iterator[tuple[bytes, Any]]:
    """The labeled nodes of one level, left to right, looking through forks (the spec's flatten_forks).
    The core validated the shape while hashing, so the nodes are well-formed lists."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current[0] == _FORK:
            stack.append(current[2])
            stack.append(current[1])
        elif current[0] == _LABELED:
            yield current[1], current[2]


def _state_tree(cert: bytes) -> bytes:
    try:
        decoded = cbor_decode(cert)
    except CborError as error:  # verify_certificate decoded it already; kept for a clear error
        raise VerificationError(f"{_FAILED}: {error}") from error
    assert isinstance(decoded, dict)
    return cbor_encode(decoded["tree"])


def _found(tree: bytes, path: list[bytes]) -> bytes | None:
    status, value = lookup_path(tree, path)
    return value if status == "found" else None


def _time_ns(leaf: bytes) -> int:
    try:
        return decode_unsigned(leaf)
    except ValueError as error:
        raise VerificationError(f"{_FAILED}: /time is not LEB128 ({error})") from error
