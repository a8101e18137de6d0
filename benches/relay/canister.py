"""The benchmark's canister app: the test canister, plus a record of the upstream scenario's messages.

It behaves exactly like `TestCanister` (ping on open, text + " ping" for every message, `send`, `close`)
except for messages whose text starts with `UPSTREAM_PREFIX`: those are counted instead of answered, so the
upstream scenario measures the client-to-canister direction alone. Each such text carries the message's
index for its client, then padding (`"up 0 xxx"`, `"up 1 xxx"`, ...); the canister checks that every
client's indices arrive without gap or reordering, and `upstream_report` (a query) tells the harness what
arrived and when.
"""

from __future__ import annotations

from typing import ClassVar

from icgw.replica.apps import candid_method
from icgw.replica.test_canister import TestCanister, decode_app_message

UPSTREAM_PREFIX = "up "

UPSTREAM_REPORT_TYPES = (
    "(record { received : nat64; out_of_order : nat64; clients : nat64; first_ns : nat64; last_ns : nat64 })"
)


class RelayBenchCanister(TestCanister):
    """`TestCanister` that counts upstream messages instead of answering them."""

    ping_pong: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._next_index: dict[bytes, int] = {}
        self._received = 0
        self._out_of_order = 0
        self._first_ns = 0
        self._last_ns = 0

    def on_message(self, client_principal: bytes, message: bytes) -> None:
        text = decode_app_message(message)["text"]
        if not text.startswith(UPSTREAM_PREFIX):
            super().on_message(client_principal, message)
            return
        now = self.clock.now_ns()
        if self._received == 0:
            self._first_ns = now
        self._last_ns = now
        self._received += 1
        index = int(text[len(UPSTREAM_PREFIX) :].partition(" ")[0])
        expected = self._next_index.get(client_principal, 0)
        if index != expected:
            self._out_of_order += 1
        self._next_index[client_principal] = index + 1

    @candid_method("query", "()", UPSTREAM_REPORT_TYPES, name="upstream_report")
    def upstream_report(self, caller: bytes) -> tuple[object]:
        """Upstream messages received, how many arrived out of their client's order, from how many
        clients, and the canister times of the first and the last."""
        return (
            {
                "received": self._received,
                "out_of_order": self._out_of_order,
                "clients": len(self._next_index),
                "first_ns": self._first_ns,
                "last_ns": self._last_ns,
            },
        )

    def candid_interface(self) -> str | None:
        return None  # rendered by the canister, so it lists upstream_report too
