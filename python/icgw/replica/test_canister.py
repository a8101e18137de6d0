"""The emulator's built-in app: the CDK test canister, and a client of its interface.

`TestCanister` has the interface of the CDK repositories' test canister (`test_canister.did` next to
this file: the `ws_*` methods plus `send`, `close` and `wipe`, init arguments
`(max_number_of_returned_messages, send_ack_interval_ms)`) and the behaviour of the reference gateway's
test canister: on open it sends `AppMessage{text = "ping"; timestamp = now}` and it answers every
message with the received text + " ping". `SilentTestCanister` keeps the interface but, like the CDK's
own test canister that the CDK integration suite (PROTOCOL.md §11) runs against, sends nothing by itself.

`TestCanisterCalls` builds the Candid of every call of that interface and decodes the results, for any
transport. `TestCanisterDriver` turns them into calls from a given principal for a test suite to use;
`InProcessDriver` calls a `HostedCanister` directly and moves its clock; the tests add one that goes
through a running replica's HTTP interface with signed envelopes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from icgw.core import ANONYMOUS, candid_decode_values, candid_encode_values
from icgw.replica.apps import APP_MESSAGE_DID, WsApp, candid_method
from icgw.replica.cdk import ClientKey, IncomingMessage, WsError, WsInitParams
from icgw.replica.clock import NS_PER_MS, CanisterClock
from icgw.replica.interfaces import HostedCanister, MethodKind, Outcome, Reject

CANDID_INTERFACE_PATH = Path(__file__).with_name("test_canister.did")

_RESULT_TYPES = "(variant { Ok : null; Err : text })"


def encode_app_message(text: str, timestamp: int) -> bytes:
    """Candid of the test canister's `AppMessage`."""
    return candid_encode_values("(AppMessage)", [{"text": text, "timestamp": timestamp}])


def decode_app_message(data: bytes) -> dict[str, Any]:
    (message,) = candid_decode_values("(AppMessage)", data)
    if not isinstance(message, dict):
        raise TypeError("an AppMessage decodes to a record")
    return message


def _ok_or_err(error: WsError | None) -> tuple[dict[str, Any]]:
    return ({"Ok": None},) if error is None else ({"Err": str(error)},)


class TestCanister(WsApp):
    """The default app: the CDK test canister's interface, the gateway test canister's ping-pong."""

    __test__ = False  # not a pytest test class despite its name

    message_type: ClassVar[str] = "AppMessage"
    candid_declarations: ClassVar[str] = APP_MESSAGE_DID
    init_types: ClassVar[str] = "(nat64, nat64)"
    ping_pong: ClassVar[bool] = True

    def on_open(self, client_principal: bytes) -> None:
        if self.ping_pong:
            self.ws.send(client_principal, encode_app_message("ping", self.clock.now_ns()))

    def on_message(self, client_principal: bytes, message: bytes) -> None:
        if self.ping_pong:
            received = decode_app_message(message)
            reply = encode_app_message(f"{received['text']} ping", self.clock.now_ns())
            self.ws.send(client_principal, reply)

    @candid_method("update", "(principal, vec blob)", _RESULT_TYPES, name="send")
    def send_messages(self, caller: bytes, client_principal: bytes, messages: list[bytes]) -> tuple[object]:
        """Send each message in order; the first error stops and is returned."""
        for message in messages:
            try:
                self.ws.send(client_principal, message)
            except WsError as error:
                return _ok_or_err(error)
        return _ok_or_err(None)

    @candid_method("update", "(principal)", _RESULT_TYPES, name="close")
    def close_client(self, caller: bytes, client_principal: bytes) -> tuple[object]:
        try:
            self.ws.close(client_principal)
        except WsError as error:
            return _ok_or_err(error)
        return _ok_or_err(None)

    @candid_method("update", "(nat64, nat64)", "()", name="wipe")
    def wipe(
        self, caller: bytes, max_number_of_returned_messages: int, send_ack_interval_ms: int
    ) -> tuple[()]:
        """Reset the CDK and start it again with new parameters (invalid ones trap first, so a failed
        wipe changes nothing, as the whole call is rolled back on the IC)."""
        params = WsInitParams(max_number_of_returned_messages, send_ack_interval_ms)
        params.check_validity()
        self.ws.wipe()
        self.ws.init(params)
        return ()

    def candid_interface(self) -> str:
        return CANDID_INTERFACE_PATH.read_text()


class SilentTestCanister(TestCanister):
    """The test canister whose callbacks do nothing: the one the CDK integration suite expects."""

    ping_pong: ClassVar[bool] = False


# --- a client of the test canister interface ---------------------------------------------------------


class CallRejected(Exception):
    """A call was rejected; `reject` has the code, message and error code."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(f"rejected ({reject.code}, {reject.error_code}): {reject.message}")
        self.reject = reject


@dataclass(frozen=True, slots=True)
class CanisterCall:
    """One call, encoded: what to send, and how to read the reply."""

    method: str
    kind: MethodKind
    arg: bytes
    result_types: str

    def result(self, outcome: Outcome) -> Any:
        """The decoded result (the single value, or None for `()`); CallRejected on a reject."""
        if isinstance(outcome, Reject):
            raise CallRejected(outcome)
        values = candid_decode_values(self.result_types, outcome.arg)
        return values[0] if values else None


class TestCanisterCalls:
    """Encoders for every method of the test canister's interface."""

    __test__ = False

    @staticmethod
    def ws_open(client_nonce: int, gateway_principal: bytes) -> CanisterCall:
        arg = candid_encode_values(
            "(CanisterWsOpenArguments)",
            [{"client_nonce": client_nonce, "gateway_principal": gateway_principal}],
        )
        return CanisterCall("ws_open", "update", arg, "(CanisterWsOpenResult)")

    @staticmethod
    def ws_message(message: IncomingMessage, *, second_argument: str = "opt null") -> CanisterCall:
        """`second_argument`: "opt null" (what the SDK sends), "absent", or "app" (`opt AppMessage`,
        none)."""
        args: list[object] = [{"msg": message.to_candid()}]
        if second_argument == "opt null":
            types, args = "(CanisterWsMessageArguments, opt null)", [*args, None]
        elif second_argument == "app":
            types, args = "(CanisterWsMessageArguments, opt AppMessage)", [*args, None]
        elif second_argument == "absent":
            types = "(CanisterWsMessageArguments)"
        else:
            raise ValueError(f"unknown second argument form {second_argument!r}")
        return CanisterCall(
            "ws_message", "update", candid_encode_values(types, args), "(CanisterWsMessageResult)"
        )

    @staticmethod
    def ws_close(client_key: ClientKey) -> CanisterCall:
        arg = candid_encode_values("(CanisterWsCloseArguments)", [{"client_key": client_key.to_candid()}])
        return CanisterCall("ws_close", "update", arg, "(CanisterWsCloseResult)")

    @staticmethod
    def ws_get_messages(nonce: int) -> CanisterCall:
        arg = candid_encode_values("(CanisterWsGetMessagesArguments)", [{"nonce": nonce}])
        return CanisterCall("ws_get_messages", "query", arg, "(CanisterWsGetMessagesResult)")

    @staticmethod
    def send(client_principal: bytes, messages: Sequence[bytes]) -> CanisterCall:
        arg = candid_encode_values("(principal, vec blob)", [client_principal, list(messages)])
        return CanisterCall("send", "update", arg, _RESULT_TYPES)

    @staticmethod
    def close(client_principal: bytes) -> CanisterCall:
        arg = candid_encode_values("(principal)", [client_principal])
        return CanisterCall("close", "update", arg, _RESULT_TYPES)

    @staticmethod
    def wipe(max_number_of_returned_messages: int, send_ack_interval_ms: int) -> CanisterCall:
        arg = candid_encode_values("(nat64, nat64)", [max_number_of_returned_messages, send_ack_interval_ms])
        return CanisterCall("wipe", "update", arg, "()")


class TestCanisterDriver(ABC):
    """Calls the test canister's methods as a given caller and moves canister time.

    The methods below are the same for every transport; a subclass only says how one encoded call
    reaches the canister (`outcome`) and how time moves (`advance_ns`). Results are the decoded Candid
    values; a reject raises `CallRejected`.
    """

    __test__ = False

    @abstractmethod
    def outcome(self, call: CanisterCall, caller: bytes) -> Outcome:
        """Run one call as `caller` and return what the canister answered."""

    @abstractmethod
    def advance_ns(self, nanoseconds: int) -> None:
        """Move canister time forward; the timers that fall due fire."""

    def call(self, call: CanisterCall, caller: bytes) -> Any:
        return call.result(self.outcome(call, caller))

    def ws_open(self, client_principal: bytes, client_nonce: int, gateway_principal: bytes) -> Any:
        return self.call(TestCanisterCalls.ws_open(client_nonce, gateway_principal), client_principal)

    def ws_message(
        self, caller: bytes, message: IncomingMessage, *, second_argument: str = "opt null"
    ) -> Any:
        return self.call(TestCanisterCalls.ws_message(message, second_argument=second_argument), caller)

    def ws_close(self, gateway_principal: bytes, client_key: ClientKey) -> Any:
        return self.call(TestCanisterCalls.ws_close(client_key), gateway_principal)

    def ws_get_messages(self, gateway_principal: bytes, nonce: int) -> Any:
        return self.call(TestCanisterCalls.ws_get_messages(nonce), gateway_principal)

    def send(self, client_principal: bytes, messages: Sequence[bytes], *, caller: bytes = ANONYMOUS) -> Any:
        return self.call(TestCanisterCalls.send(client_principal, messages), caller)

    def close(self, client_principal: bytes, *, caller: bytes = ANONYMOUS) -> Any:
        return self.call(TestCanisterCalls.close(client_principal), caller)

    def wipe(
        self, max_number_of_returned_messages: int, send_ack_interval_ms: int, *, caller: bytes = ANONYMOUS
    ) -> Any:
        return self.call(
            TestCanisterCalls.wipe(max_number_of_returned_messages, send_ack_interval_ms), caller
        )

    def advance_ms(self, milliseconds: int) -> None:
        self.advance_ns(milliseconds * NS_PER_MS)


class InProcessDriver(TestCanisterDriver):
    """Calls a hosted test canister directly, with Candid on the way in and out, and moves its clock."""

    def __init__(self, canister: HostedCanister, clock: CanisterClock) -> None:
        self.canister = canister
        self.clock = clock

    def outcome(self, call: CanisterCall, caller: bytes) -> Outcome:
        if call.kind == "query":
            return self.canister.handle_query(call.method, call.arg, caller)
        return self.canister.handle_update(call.method, call.arg, caller)

    def advance_ns(self, nanoseconds: int) -> None:
        self.clock.advance(nanoseconds)
