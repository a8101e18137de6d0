"""The seams of the replica emulator, fixed first so its parts can be built independently.

- The *replica* side (`state`, `http`, `endpoints`, `config`, `__main__`) speaks the IC HTTP interface:
  it validates envelopes, keeps request statuses and the certified state tree, certifies once per round
  and signs query responses with a node key.
- The *canister* side (`canister`, `cdk`, `apps`, `merkle`, `clock`) runs canisters with the CDK's exact
  behaviour. It sees only Candid bytes, the caller's principal and the `CanisterHost` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

MethodKind = Literal["update", "query"]

# IC reject codes (IC-INTERFACE.md §7).
SYS_FATAL = 1
SYS_TRANSIENT = 2
DESTINATION_INVALID = 3
CANISTER_REJECT = 4
CANISTER_ERROR = 5


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful reply: the Candid-encoded result."""

    arg: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """A rejected call or query, with the IC's reject code, message and optional `IC....` error code."""

    code: int
    message: str
    error_code: str | None = None


Outcome = Reply | Reject


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Canister time. Real time by default; tests drive a manual clock (advance, fire due timers)."""

    def now_ns(self) -> int: ...

    def call_later(self, delay_ns: int, callback: Callable[[], None]) -> TimerHandle: ...


class CanisterHost(Protocol):
    """What a canister may ask of the replica that hosts it."""

    @property
    def clock(self) -> Clock: ...

    def certified_data_changed(self, canister_id: bytes) -> None:
        """Tell the replica that `certified_data` changed, so the next round re-certifies."""
        ...

    def data_certificate(self, canister_id: bytes) -> bytes:
        """The certificate of the latest round (covers `/canister/<id>/certified_data` and `/time`).

        Only valid during a query: the replica runs queries on certified state only.
        """
        ...


class HostedCanister(Protocol):
    """A canister as the replica sees it."""

    @property
    def canister_id(self) -> bytes: ...

    @property
    def certified_data(self) -> bytes:
        """The 32 bytes (or empty) the canister certified, placed at /canister/<id>/certified_data."""
        ...

    @property
    def candid_interface(self) -> str:
        """The canister's Candid service description (served as `candid:service` metadata)."""
        ...

    def method_kind(self, method_name: str) -> MethodKind | None:
        """Whether the canister exports `method_name` as an update or a query (None: no such method)."""
        ...

    def handle_update(self, method_name: str, arg: bytes, caller: bytes) -> Outcome: ...

    def handle_query(self, method_name: str, arg: bytes, caller: bytes) -> Outcome: ...
