"""The ws_get_messages fan-out (PROTOCOL.md §3.2, §3.3, §4.4, §5.3, §5.4)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icgw.core import (
    CandidError,
    MessagesBatch,
    MessagesError,
    candid_encode,
    candid_encode_values,
    decode_messages_reply,
    encode_websocket_message,
)

GATEWAY = "sqdfl-mr4km-2hfjy-gajqo-xqvh7-hf4mf-nra4i-3it6l-neaw4-soolw-tae"
CERT = b"\xd9\xd9\xf7\xa2dtree" + bytes(range(200))  # opaque to the fan-out; any non-empty bytes
TREE = b"\xd9\xd9\xf7\x83\x02iwebsocket" + bytes(60)


def key(nonce: int) -> str:
    return f"{GATEWAY}_{nonce:020d}"


def client(i: int) -> bytes:
    return bytes([i % 256]) * 10 + b"\x01"


def message(nonce: int, *, client_index: int | None = None, content: bytes | None = None) -> dict[str, Any]:
    i = nonce if client_index is None else client_index
    if content is None:
        content = encode_websocket_message(
            client(i), 1000 + i, nonce % 1000 + 1, 1_702_143_738_049_473_644, False, b"hi"
        )
    return {
        "client_key": {"client_principal": client(i), "client_nonce": 1000 + i},
        "key": key(nonce),
        "content": content,
    }


def ok_reply(
    messages: list[dict[str, Any]], *, cert: bytes = CERT, tree: bytes = TREE, is_end_of_queue: bool = True
) -> bytes:
    return candid_encode_values(
        "(CanisterWsGetMessagesResult)",
        [{"Ok": {"messages": messages, "cert": cert, "tree": tree, "is_end_of_queue": is_end_of_queue}}],
    )


def test_a_batch_decodes_with_its_routing_information() -> None:
    batch = decode_messages_reply(ok_reply([message(n) for n in range(5, 8)], is_end_of_queue=False), 5)
    assert isinstance(batch, MessagesBatch)
    assert len(batch) == 3
    assert batch.first_nonce == 5
    assert batch.last_nonce == 7
    assert batch.is_end_of_queue is False
    assert batch.cert == CERT
    assert batch.tree == TREE
    assert batch.messages == [(client(n), 1000 + n, key(n), message(n)["content"]) for n in range(5, 8)]
    assert "len=3" in repr(batch)


def test_frames_are_exactly_key_content_cert_tree() -> None:
    messages = [message(n) for n in range(1, 4)]
    batch = decode_messages_reply(ok_reply(messages), 1)
    frames = batch.frames()
    assert len(frames) == 3
    for frame, m in zip(frames, messages, strict=True):
        decoded = cbor2.loads(frame)
        assert decoded == {"key": m["key"], "content": m["content"], "cert": CERT, "tree": TREE}
        # Definite lengths, no self-describe tag, keys in this order: exactly what cbor2 writes for the dict.
        assert frame == cbor2.dumps({"key": m["key"], "content": m["content"], "cert": CERT, "tree": TREE})
        assert frame[0] == 0xA4


def test_routed_frames_pair_each_frame_with_its_client() -> None:
    messages = [message(n, client_index=n % 2) for n in range(10, 14)]
    batch = decode_messages_reply(ok_reply(messages), 10)
    routed = batch.routed_frames()
    assert [(p, n) for p, n, _ in routed] == [(client(n % 2), 1000 + n % 2) for n in range(10, 14)]
    assert [f for _, _, f in routed] == batch.frames()


def test_large_byte_strings_use_long_cbor_heads() -> None:
    big_cert, big_tree, big_content = bytes(70_000), bytes(300), bytes(24)
    batch = decode_messages_reply(ok_reply([message(0, content=big_content)], cert=big_cert, tree=big_tree))
    frame = batch.frames()[0]
    assert cbor2.loads(frame) == {"key": key(0), "content": big_content, "cert": big_cert, "tree": big_tree}
    assert frame == cbor2.dumps({"key": key(0), "content": big_content, "cert": big_cert, "tree": big_tree})


def test_an_empty_batch_is_valid() -> None:
    batch = decode_messages_reply(ok_reply([], cert=b"", tree=b""), 42)
    assert len(batch) == 0
    assert batch.messages == []
    assert batch.frames() == []
    assert batch.routed_frames() == []
    assert batch.first_nonce is None
    assert batch.last_nonce is None
    assert batch.is_end_of_queue is True


def test_err_result_raises_messages_error_with_the_text() -> None:
    reply = candid_encode_values("(CanisterWsGetMessagesResult)", [{"Err": "Gateway is not registered"}])
    with pytest.raises(MessagesError) as excinfo:
        decode_messages_reply(reply)
    assert str(excinfo.value) == "Gateway is not registered"


@pytest.mark.parametrize("expected_nonce", [None, 0, 3])
def test_the_first_nonce_is_checked_unless_polling_starts(expected_nonce: int | None) -> None:
    # None: no expectation. 0: a poller that starts asks for everything still queued, which may begin
    # at any nonce because the CDK deletes old messages (the reference poller skips the check too).
    batch = decode_messages_reply(ok_reply([message(3), message(4)]), expected_nonce)
    assert batch.first_nonce == 3


@pytest.mark.parametrize("expected_nonce", [1, 2, 4, 2**64 - 1])
def test_a_first_nonce_other_than_the_expected_one_is_rejected(expected_nonce: int) -> None:
    with pytest.raises(MessagesError) as excinfo:
        decode_messages_reply(ok_reply([message(3), message(4)]), expected_nonce)
    assert f"expected {expected_nonce}, got 3" in str(excinfo.value)


@pytest.mark.parametrize(
    ("nonces", "expected", "seen"),
    [([1, 3], 2, 3), ([1, 2, 2], 3, 2), ([5, 4], 6, 4), ([1, 2, 3, 9], 4, 9)],
)
def test_nonces_must_be_consecutive_within_a_batch(nonces: list[int], expected: int, seen: int) -> None:
    with pytest.raises(MessagesError) as excinfo:
        decode_messages_reply(ok_reply([message(n) for n in nonces]))
    assert f"expected {expected}, got {seen}" in str(excinfo.value)


@pytest.mark.parametrize("expected_nonce", [-1, 2**64, True])
def test_the_expected_nonce_must_be_a_nat64(expected_nonce: int) -> None:
    with pytest.raises(MessagesError, match="expected_nonce"):
        decode_messages_reply(ok_reply([message(1)]), expected_nonce)


def test_the_nonce_cannot_wrap_around() -> None:
    top = 2**64 - 1
    assert decode_messages_reply(ok_reply([message(top, client_index=0)]), top).last_nonce == top
    with pytest.raises(MessagesError, match="overflow"):
        decode_messages_reply(ok_reply([message(top, client_index=0), message(0)]))


@pytest.mark.parametrize(
    "bad_key",
    [
        "no-underscore",
        f"{GATEWAY}_",
        f"{GATEWAY}_12a",
        f"{GATEWAY}_-1",
        f"{GATEWAY}_18446744073709551616",
        "x_" + "1" * 21,
    ],
)
def test_keys_must_end_in_a_decimal_nonce(bad_key: str) -> None:
    m = message(1)
    m["key"] = bad_key
    with pytest.raises(MessagesError, match="message key"):
        decode_messages_reply(ok_reply([m]))


def test_the_nonce_is_taken_after_the_last_underscore() -> None:
    m = message(1)
    m["key"] = "a_b_c_7"
    assert decode_messages_reply(ok_reply([m]), 7).first_nonce == 7


def test_messages_that_the_sdk_cannot_receive_are_rejected() -> None:
    with pytest.raises(MessagesError, match="empty content"):
        decode_messages_reply(ok_reply([message(1), message(2, content=b"")]))
    with pytest.raises(MessagesError, match="empty cert"):
        decode_messages_reply(ok_reply([message(1)], cert=b""))
    with pytest.raises(MessagesError, match="empty tree"):
        decode_messages_reply(ok_reply([message(1)], tree=b""))


def test_replies_of_old_cdks_without_is_end_of_queue_mean_end_of_queue() -> None:
    reply = candid_encode_values(
        "(variant { Ok : record { messages : vec CanisterOutputMessage; cert : blob; tree : blob };"
        " Err : text })",
        [{"Ok": {"messages": [message(1)], "cert": CERT, "tree": TREE}}],
    )
    batch = decode_messages_reply(reply, 1)
    assert batch.is_end_of_queue is True
    assert batch.messages[0][2] == key(1)


def test_extra_fields_and_arguments_are_ignored() -> None:
    reply = candid_encode_values(
        "(variant { Ok : record { messages : vec record { client_key : ClientKey; key : text;"
        " content : blob; extra : nat }; cert : blob; tree : blob; is_end_of_queue : bool; more : text };"
        " Err : text }, text)",
        [
            {
                "Ok": {
                    "messages": [{**message(1), "extra": 5}],
                    "cert": CERT,
                    "tree": TREE,
                    "is_end_of_queue": False,
                    "more": "x",
                }
            },
            "trailing argument",
        ],
    )
    batch = decode_messages_reply(reply, 1)
    assert batch.frames() == decode_messages_reply(ok_reply([message(1)], is_end_of_queue=False), 1).frames()


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"DIDL",
        candid_encode('("not a result")'),
        candid_encode("()"),
        candid_encode_values("(CanisterWsOpenResult)", [{"Ok": None}]),
        candid_encode_values(
            "(variant { Ok : record { messages : vec CanisterOutputMessage; cert : text; tree : blob;"
            " is_end_of_queue : bool }; Err : text })",
            [{"Ok": {"messages": [], "cert": "x", "tree": b"", "is_end_of_queue": True}}],
        ),
    ],
)
def test_replies_of_the_wrong_type_raise_candid_error(reply: bytes) -> None:
    with pytest.raises(CandidError):
        decode_messages_reply(reply)


def test_a_truncated_reply_raises_candid_error() -> None:
    reply = ok_reply([message(n) for n in range(3)])
    for cut in range(len(reply)):
        with pytest.raises(CandidError):
            decode_messages_reply(reply[:cut])
    with pytest.raises(CandidError):
        decode_messages_reply(reply + b"\x00")


# --- hypothesis ------------------------------------------------------------------------------------

batches = st.tuples(
    st.integers(min_value=0, max_value=2**64 - 60),
    st.lists(
        st.tuples(st.binary(max_size=29), st.integers(0, 2**64 - 1), st.binary(min_size=1, max_size=80)),
        max_size=50,
    ),
    st.binary(min_size=1, max_size=300),
    st.binary(min_size=1, max_size=300),
    st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(batch=batches)
def test_any_valid_batch_becomes_its_frames(
    batch: tuple[int, list[tuple[bytes, int, bytes]], bytes, bytes, bool],
) -> None:
    first, items, cert, tree, end = batch
    messages = [
        {"client_key": {"client_principal": p, "client_nonce": n}, "key": key(first + i), "content": c}
        for i, (p, n, c) in enumerate(items)
    ]
    decoded = decode_messages_reply(ok_reply(messages, cert=cert, tree=tree, is_end_of_queue=end), first)
    assert len(decoded) == len(items)
    assert decoded.is_end_of_queue is end
    assert decoded.first_nonce == (first if items else None)
    assert decoded.last_nonce == (first + len(items) - 1 if items else None)
    expected = [
        {"key": key(first + i), "content": c, "cert": cert, "tree": tree} for i, (_, _, c) in enumerate(items)
    ]
    assert [cbor2.loads(f) for f in decoded.frames()] == expected
    assert [(p, n) for p, n, _ in decoded.routed_frames()] == [(p, n) for p, n, _ in items]


def check_never_crashes(data: bytes, expected_nonce: int | None) -> None:
    try:
        batch = decode_messages_reply(data, expected_nonce)
    except (CandidError, MessagesError):
        return
    # Whatever is accepted can be turned into frames.
    assert len(batch.frames()) == len(batch)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), expected_nonce=st.none() | st.integers(0, 2**64 - 1))
def test_random_bytes_never_crash(data: bytes, expected_nonce: int | None) -> None:
    check_never_crashes(data, expected_nonce)
    check_never_crashes(b"DIDL" + data, expected_nonce)


VALID = ok_reply([message(n) for n in range(4)])


@settings(max_examples=500, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, len(VALID)),
)
def test_mutated_replies_never_crash(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for position, byte in edits:
        data[position] = byte
    check_never_crashes(bytes(data[: max(cut, 1)]), 0)
    check_never_crashes(bytes(data), None)
