"""encode_messages_reply: the emulator's direct Candid encoder agrees with the candid crate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icgw.core import MessagesError, candid_decode_values, decode_messages_reply, encode_messages_reply

GATEWAY = "sqdfl-mr4km-2hfjy-gajqo-xqvh7-hf4mf-nra4i-3it6l-neaw4-soolw-tae"

messages = st.integers(min_value=0, max_value=2**40).flatmap(
    lambda first: st.lists(
        st.tuples(
            st.binary(min_size=0, max_size=29), st.integers(0, 2**64 - 1), st.binary(min_size=1, max_size=300)
        ),
        max_size=20,
    ).map(
        lambda items: [
            (principal, nonce, f"{GATEWAY}_{first + i:020d}", content)
            for i, (principal, nonce, content) in enumerate(items)
        ]
    )
)


@given(messages, st.binary(min_size=1, max_size=200), st.binary(min_size=1, max_size=200), st.booleans())
def test_the_generic_decoder_reads_what_it_writes(
    items: list[tuple[bytes, int, str, bytes]], cert: bytes, tree: bytes, end: bool
) -> None:
    encoded = encode_messages_reply(items, cert, tree, end)
    (result,) = candid_decode_values("(CanisterWsGetMessagesResult)", encoded)
    assert result == {
        "Ok": {
            "messages": [
                {"client_key": {"client_principal": p, "client_nonce": n}, "key": k, "content": c}
                for p, n, k, c in items
            ],
            "cert": cert,
            "tree": tree,
            "is_end_of_queue": end,
        }
    }
    batch = decode_messages_reply(encoded)
    assert batch.messages == items
    assert batch.is_end_of_queue is end


def test_an_empty_reply_matches_the_crate_encoding() -> None:
    ours = encode_messages_reply([], b"", b"", True)
    assert len(decode_messages_reply(ours)) == 0


def test_principals_longer_than_29_bytes_are_refused() -> None:
    with pytest.raises(MessagesError, match="too long"):
        encode_messages_reply([(bytes(30), 1, f"{GATEWAY}_{0:020d}", b"x")], b"c", b"t", True)
