"""The application side of an emulated canister: what a developer writes on top of the CDK.

An app subclasses `WsApp`, overrides the callbacks it cares about and may export extra Candid methods
with `@candid_method`. Once the canister is created the app is bound to it and reaches the CDK
(`self.ws.send(...)`, `self.ws.close(...)`) and canister time (`self.clock`) through its context.
`load_app("package.module:ClassName")` instantiates an app class named on the command line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

from icgw.replica.interfaces import Clock, MethodKind

if TYPE_CHECKING:
    from icgw.replica.cdk import WebSocketCdk

APP_MESSAGE_DID = "type AppMessage = record { text : text; timestamp : nat64 };"

# A method handler is called with the caller's principal then the decoded arguments, and returns the
# results as a tuple matching the method's result types.
MethodHandler = Callable[..., Sequence[object]]
_F = TypeVar("_F", bound=MethodHandler)

_SPEC_ATTRIBUTE = "__candid_method__"


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    kind: MethodKind
    arg_types: str
    result_types: str


@dataclass(frozen=True, slots=True)
class AppMethod:
    """An exported method of an app, bound to the app instance."""

    spec: MethodSpec
    handler: MethodHandler


def candid_method(
    kind: MethodKind, arg_types: str, result_types: str, *, name: str | None = None
) -> Callable[[_F], _F]:
    """Export a method of a `WsApp` under `name` (default: the function name).

    `arg_types`/`result_types` are Candid argument-type lists, e.g. `"(principal, vec blob)"` and
    `"(variant { Ok : null; Err : text })"`; the handler gets `(self, caller, *args)` and returns a
    tuple of results.
    """
    if kind not in ("update", "query"):
        raise ValueError(f"a method is an update or a query, not {kind!r}")

    def mark(function: _F) -> _F:
        spec = MethodSpec(name or function.__name__, kind, arg_types, result_types)
        setattr(function, _SPEC_ATTRIBUTE, spec)
        return function

    return mark


@dataclass(frozen=True, slots=True)
class AppContext:
    """What an app can reach: the CDK's library API, canister time and its canister's id."""

    canister_id: bytes
    ws: WebSocketCdk
    clock: Clock


class WsApp:
    """Base class of an app: the CDK callbacks (no-ops here) and its extra Candid methods."""

    # The type of ws_message's second argument in the service description (`opt <message_type>`),
    # and the declarations it needs. The CDK itself never decodes that argument.
    message_type: ClassVar[str] = "AppMessage"
    candid_declarations: ClassVar[str] = APP_MESSAGE_DID
    # The init argument types of the service (e.g. "(nat64, nat64)"), empty for none.
    init_types: ClassVar[str] = ""

    def __init__(self) -> None:
        self._context: AppContext | None = None

    def bind(self, context: AppContext) -> None:
        if self._context is not None:
            raise RuntimeError(f"{type(self).__name__} is already bound to a canister")
        self._context = context

    @property
    def context(self) -> AppContext:
        if self._context is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a canister yet")
        return self._context

    @property
    def ws(self) -> WebSocketCdk:
        return self.context.ws

    @property
    def clock(self) -> Clock:
        return self.context.clock

    def on_open(self, client_principal: bytes) -> None:
        """A client opened a connection (its OpenMessage is already queued)."""

    def on_message(self, client_principal: bytes, message: bytes) -> None:
        """A client sent an application message (`message` is its Candid bytes)."""

    def on_close(self, client_principal: bytes) -> None:
        """A client's connection is gone (closed by the gateway, the app, a timeout or an error)."""

    def methods(self) -> list[AppMethod]:
        """The app's exported methods, from its `@candid_method` functions."""
        found: dict[str, AppMethod] = {}
        for cls in reversed(type(self).__mro__):
            for attribute, function in vars(cls).items():
                spec = getattr(function, _SPEC_ATTRIBUTE, None)
                if isinstance(spec, MethodSpec):
                    found[spec.name] = AppMethod(spec, getattr(self, attribute))
        return list(found.values())

    def candid_interface(self) -> str | None:
        """The service description, if the app ships one; None to have the canister render it."""
        return None


def load_app(spec: str) -> WsApp:
    """Instantiate the `WsApp` subclass named by `"package.module:ClassName"` (no arguments)."""
    module_name, separator, class_name = spec.partition(":")
    if not separator or not module_name or not class_name:
        raise ValueError(f"an app is named as module:Class, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import the app module {module_name!r}: {error}") from error
    app_class = getattr(module, class_name, None)
    if not isinstance(app_class, type) or not issubclass(app_class, WsApp):
        raise ValueError(f"{spec!r} is not a WsApp subclass")
    return app_class()
