"""Certified ws_get_messages replies built the way the CDK and the IC build them, with a known BLS key."""

from __future__ import annotations

import hashlib
import time

from icgw.core import (
    bls_der_public_key,
    bls_public_key,
    bls_sign,
    candid_encode_values,
    cbor_decode,
    cbor_encode,
    encode_websocket_message,
    hash_tree_digest,
    hash_tree_encode,
    principal_from_text,
)
from icgw.leb128 import encode_unsigned as leb128

SECRET = bytes(range(1, 33))
ROOT_KEY = bls_der_public_key(bls_public_key(SECRET))
CANISTER = principal_from_text("rrkah-fqaaa-aaaaa-aaaaq-cai")
CLIENT = bytes(range(29))
GATEWAY_TEXT = "sqdfl-mr4km-2hfjy-gajqo-xqvh7-hf4mf-nra4i-3it6l-neaw4-soolw-tae"


def build_reply(
    contents: list[bytes],
    *,
    first_nonce: int = 0,
    clients: list[tuple[bytes, int]] | None = None,
    is_end_of_queue: bool = True,
    canister: bytes = CANISTER,
    tamper: bytes | None = None,
    time_ns: int | None = None,
) -> bytes:
    """A ws_get_messages reply certified like the CDK and the IC do, signed with a known BLS key."""
    keys = [f"{GATEWAY_TEXT}_{first_nonce + i:020d}" for i in range(len(contents))]
    leaves: list[object] = [
        ("labeled", k.encode(), ("leaf", hashlib.sha256(c).digest()))
        for k, c in zip(keys, contents, strict=True)
    ]
    while len(leaves) > 1:
        leaves = [
            ("fork", leaves[i], leaves[i + 1]) if i + 1 < len(leaves) else leaves[i]
            for i in range(0, len(leaves), 2)
        ]
    witness = ("labeled", b"websocket", leaves[0])
    certified_data = hash_tree_digest(witness)
    now = time.time_ns() if time_ns is None else time_ns
    state = (
        "fork",
        (
            "labeled",
            b"canister",
            ("labeled", canister, ("labeled", b"certified_data", ("leaf", certified_data))),
        ),
        ("labeled", b"time", ("leaf", leb128(now))),
    )
    signature = bls_sign(SECRET, b"\x0dic-state-root" + hash_tree_digest(state))
    cert = cbor_encode({"tree": cbor_decode(hash_tree_encode(state)), "signature": signature})
    routes = clients or [(CLIENT, 7)] * len(contents)
    messages = [
        {
            "client_key": {"client_principal": principal, "client_nonce": nonce},
            "key": key,
            "content": tamper or content,
        }
        for key, content, (principal, nonce) in zip(keys, contents, routes, strict=True)
    ]
    ok = {
        "messages": messages,
        "cert": cert,
        "tree": hash_tree_encode(witness),
        "is_end_of_queue": is_end_of_queue,
    }
    return candid_encode_values("(CanisterWsGetMessagesResult)", [{"Ok": ok}])


def contents(n: int) -> list[bytes]:
    return [encode_websocket_message(CLIENT, 7, i + 1, 1, False, b"DIDL\x00\x00") for i in range(n)]


def empty_reply() -> bytes:
    ok = {"messages": [], "cert": b"", "tree": b"", "is_end_of_queue": True}
    return candid_encode_values("(CanisterWsGetMessagesResult)", [{"Ok": ok}])
