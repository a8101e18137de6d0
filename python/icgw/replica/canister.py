"""A CDK canister as the replica hosts it: the Candid ABI around `WebSocketCdk` and an app.

`Canister` implements `HostedCanister`. It decodes each call's Candid argument, runs the `ws_*` method
in the CDK (or one of the app's exported methods) as the given caller, and encodes the result. It
behaves like the wasm canister would towards the replica: undecodable arguments and traps reject the
call with IC0503, unknown methods with IC0536, and `ws_get_messages` run as an update traps as soon
as it needs the data certificate.

Two things a wasm canister does that this one does not: a trap does not roll back the state changes
made earlier in the same call (the Rust CDK's would be undone; Motoko keeps what it wrote before an
await, as here), and state changed by a query method is kept. The CDK's own methods never rely on
either: its errors are `Err` replies that keep their changes on the IC too, and its query is read-only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from icgw.core import (
    CandidError,
    candid_decode_values,
    candid_encode_values,
    encode_messages_reply,
    principal_to_text,
)
from icgw.replica.apps import AppContext, AppMethod, MethodSpec, WsApp
from icgw.replica.cdk import (
    CanisterTrap,
    CertificateSource,
    ClientKey,
    Flavor,
    IncomingMessage,
    WebSocketCdk,
    WsError,
    WsInitParams,
)
from icgw.replica.interfaces import (
    CANISTER_ERROR,
    DESTINATION_INVALID,
    CanisterHost,
    MethodKind,
    Outcome,
    Reject,
    Reply,
)

logger = logging.getLogger(__name__)

# The Candid types of a CDK canister's interface (PROTOCOL.md §2.1), for its service description.
WS_TYPES_DID = """\
type ClientPrincipal = principal;
type GatewayPrincipal = principal;
type ClientKey = record { client_principal : ClientPrincipal; client_nonce : nat64 };
type WebsocketMessage = record {
  client_key : ClientKey;
  sequence_num : nat64;
  timestamp : nat64;
  is_service_message : bool;
  content : blob;
};
type CanisterOutputMessage = record { client_key : ClientKey; key : text; content : blob };
type CanisterOutputCertifiedMessages = record {
  messages : vec CanisterOutputMessage;
  cert : blob;
  tree : blob;
  is_end_of_queue : bool;
};
type CanisterWsOpenArguments = record { client_nonce : nat64; gateway_principal : GatewayPrincipal };
type CanisterWsOpenResult = variant { Ok : null; Err : text };
type CanisterWsCloseArguments = record { client_key : ClientKey };
type CanisterWsCloseResult = variant { Ok : null; Err : text };
type CanisterWsMessageArguments = record { msg : WebsocketMessage };
type CanisterWsMessageResult = variant { Ok : null; Err : text };
type CanisterWsGetMessagesArguments = record { nonce : nat64 };
type CanisterWsGetMessagesResult = variant { Ok : CanisterOutputCertifiedMessages; Err : text };
"""

# ws_message is decoded at its first argument only: the CDK ignores the second one (`opt AppMessage`;
# the SDK sends `opt null`), and by Candid's opt rule no second argument can make the real decoding
# fail once it parses, so skipping it accepts and rejects exactly the same calls.
WS_METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("ws_open", "update", "(CanisterWsOpenArguments)", "(CanisterWsOpenResult)"),
        MethodSpec("ws_close", "update", "(CanisterWsCloseArguments)", "(CanisterWsCloseResult)"),
        MethodSpec("ws_message", "update", "(CanisterWsMessageArguments)", "(CanisterWsMessageResult)"),
        MethodSpec(
            "ws_get_messages", "query", "(CanisterWsGetMessagesArguments)", "(CanisterWsGetMessagesResult)"
        ),
    )
}


def canister_id_for_index(index: int) -> bytes:
    """The id of the index-th canister (0-based) the emulator creates.

    Canister ids are an 8-byte big-endian counter followed by 0x01 0x01. Like a local dfx replica,
    the first canister gets counter 1 (rrkah-fqaaa-aaaaa-aaaaq-cai), the second counter 2
    (ryjl3-tyaaa-aaaaa-aaaba-cai), and so on; counter 0 (rwlgt-iiaaa-aaaaa-aaaaa-cai) is not used.
    """
    if not 0 <= index < (1 << 64) - 1:
        raise ValueError(f"canister index out of range: {index}")
    return (index + 1).to_bytes(8, "big") + b"\x01\x01"


def render_candid_interface(app: WsApp) -> str:
    """The service description of a CDK canister running `app`."""
    lines = [WS_TYPES_DID.rstrip("\n")]
    if app.candid_declarations:
        lines.append(app.candid_declarations.strip())
    init = f"{app.init_types} -> " if app.init_types else ""
    lines.append(f"service : {init}{{")
    for spec in WS_METHODS.values():
        arg_types = spec.arg_types
        if spec.name == "ws_message":
            arg_types = f"(CanisterWsMessageArguments, opt {app.message_type})"
        lines.append(_render_method(spec, arg_types))
    lines.extend(_render_method(method.spec, method.spec.arg_types) for method in app.methods())
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_method(spec: MethodSpec, arg_types: str) -> str:
    suffix = " query" if spec.kind == "query" else ""
    return f"  {spec.name} : {arg_types} -> {spec.result_types}{suffix};"


class _UndecodableArguments(Exception):
    pass


class Canister:
    """One emulated canister running the CDK and an app (implements `HostedCanister`)."""

    def __init__(
        self,
        canister_id: bytes,
        host: CanisterHost,
        app: WsApp,
        *,
        flavor: Flavor = "rust",
        params: WsInitParams | None = None,
    ) -> None:
        self._canister_id = canister_id
        self._canister_text = principal_to_text(canister_id)
        self._host = host
        self._app = app
        self._app_methods: dict[str, AppMethod] = {method.spec.name: method for method in app.methods()}
        clashes = sorted(set(self._app_methods) & set(WS_METHODS))
        if clashes:
            raise ValueError(
                f"{type(app).__name__} exports methods reserved for the CDK: {', '.join(clashes)}"
            )
        self._cdk = WebSocketCdk(
            clock=host.clock,
            handlers=app,
            params=params,
            flavor=flavor,
            on_certified_data_changed=self._certified_data_changed,
        )
        app.bind(AppContext(canister_id=canister_id, ws=self._cdk, clock=host.clock))
        self._candid_interface = app.candid_interface() or render_candid_interface(app)

    # --- HostedCanister ---------------------------------------------------------------------------

    @property
    def canister_id(self) -> bytes:
        return self._canister_id

    @property
    def certified_data(self) -> bytes:
        return self._cdk.certified_data

    @property
    def candid_interface(self) -> str:
        return self._candid_interface

    def method_kind(self, method_name: str) -> MethodKind | None:
        spec = WS_METHODS.get(method_name)
        if spec is not None:
            return spec.kind
        method = self._app_methods.get(method_name)
        return None if method is None else method.spec.kind

    def handle_update(self, method_name: str, arg: bytes, caller: bytes) -> Outcome:
        # A query method may also be called as an update (replicated); it then has no data certificate.
        if self.method_kind(method_name) is None:
            return self._no_such_method("update", method_name)
        return self._execute(method_name, arg, caller, lambda: None)

    def handle_query(self, method_name: str, arg: bytes, caller: bytes) -> Outcome:
        if self.method_kind(method_name) != "query":
            return self._no_such_method("query", method_name)
        return self._execute(method_name, arg, caller, lambda: self._host.data_certificate(self._canister_id))

    # --- for the emulator and tests ---------------------------------------------------------------

    @property
    def cdk(self) -> WebSocketCdk:
        return self._cdk

    @property
    def app(self) -> WsApp:
        return self._app

    def shutdown(self) -> None:
        self._cdk.shutdown()

    # --- internals --------------------------------------------------------------------------------

    def _certified_data_changed(self) -> None:
        self._host.certified_data_changed(self._canister_id)

    def _no_such_method(self, kind: MethodKind, method_name: str) -> Reject:
        message = f"Canister {self._canister_text} has no {kind} method '{method_name}'"
        return Reject(DESTINATION_INVALID, message, "IC0536")

    def _trap(self, message: str) -> Reject:
        text = (
            f"Error from Canister {self._canister_text}: Canister called `ic0.trap` with message: {message}"
        )
        return Reject(CANISTER_ERROR, text, "IC0503")

    def _execute(
        self, method_name: str, arg: bytes, caller: bytes, certificate: CertificateSource
    ) -> Outcome:
        try:
            if method_name in WS_METHODS:
                return Reply(self._execute_ws(method_name, arg, caller, certificate))
            method = self._app_methods[method_name]
            args = self._decode(method.spec, arg)
            results = method.handler(caller, *args)
            return Reply(candid_encode_values(method.spec.result_types, list(results)))
        except _UndecodableArguments as error:
            return self._trap(str(error))
        except CanisterTrap as error:
            return self._trap(str(error))
        except Exception as error:
            # An exception escaping app code is a panic in the wasm canister: the call traps.
            logger.warning("canister %s: %s raised", self._canister_text, method_name, exc_info=True)
            return self._trap(f"Panicked at '{type(error).__name__}: {error}'")

    def _decode(self, spec: MethodSpec, arg: bytes) -> list[Any]:
        try:
            return candid_decode_values(spec.arg_types, arg)
        except CandidError as error:
            raise _UndecodableArguments(
                f"failed to decode the arguments of {spec.name} as {spec.arg_types}: {error}"
            ) from error

    def _execute_ws(
        self, method_name: str, arg: bytes, caller: bytes, certificate: CertificateSource
    ) -> bytes:
        spec = WS_METHODS[method_name]
        (args,) = self._decode(spec, arg)[:1]
        result: dict[str, Any]
        try:
            if method_name == "ws_get_messages":
                return _encode_messages_ok(self._cdk.ws_get_messages(caller, int(args["nonce"]), certificate))
            else:
                _WS_UPDATES[method_name](self._cdk, caller, args)
                result = {"Ok": None}
        except WsError as error:
            result = {"Err": str(error)}
        return candid_encode_values(spec.result_types, [result])


def _encode_messages_ok(ok: dict[str, Any]) -> bytes:
    """`Ok(...)` of ws_get_messages through the typed encoder of the core (the generic one is slower)."""
    messages = [
        (m["client_key"]["client_principal"], m["client_key"]["client_nonce"], m["key"], m["content"])
        for m in ok["messages"]
    ]
    return encode_messages_reply(messages, ok["cert"], ok["tree"], ok["is_end_of_queue"])


def _ws_open(cdk: WebSocketCdk, caller: bytes, args: dict[str, Any]) -> None:
    cdk.ws_open(caller, int(args["client_nonce"]), bytes(args["gateway_principal"]))


def _ws_close(cdk: WebSocketCdk, caller: bytes, args: dict[str, Any]) -> None:
    cdk.ws_close(caller, ClientKey.from_candid(args["client_key"]))


def _ws_message(cdk: WebSocketCdk, caller: bytes, args: dict[str, Any]) -> None:
    cdk.ws_message(caller, IncomingMessage.from_candid(args["msg"]))


_WS_UPDATES: dict[str, Callable[[WebSocketCdk, bytes, dict[str, Any]], None]] = {
    "ws_open": _ws_open,
    "ws_close": _ws_close,
    "ws_message": _ws_message,
}
