"""Time control for a running emulator: the `/_admin` endpoints.

The CDK's behaviour hangs on canister time (ack ticks every `send_ack_interval_ms`, the keep-alive
check 60 s later, queue cleanup), so a test of a gateway against a running emulator must be able to
move time forward by minutes and see the timers that fall due fire. The endpoints exist only with
`--allow-admin`:

- `GET  /_admin/time` -> `{"now_ns": <canister time>}`
- `POST /_admin/advance_time` with a JSON or CBOR map holding one of `ns`, `ms` or `seconds` (a
  non-negative number) -> time moves forward by that much, every timer that falls due on the way
  fires, in due order, and the answer is `{"now_ns": <new time>}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import orjson

from icgw import core
from icgw.replica.http_server import HttpRequest, HttpResponse
from icgw.replica.interfaces import Clock

log = logging.getLogger("icgw.replica.admin")


class AdvanceableClock(Clock, Protocol):
    """A canister clock that can jump forward, firing the timers that fall due on the way
    (`clock.RealClock` and `clock.ManualClock`)."""

    def advance(self, delta_ns: int) -> None: ...


_UNITS_NS = {"ns": 1, "ms": 1_000_000, "seconds": 1_000_000_000}


def _json(status: int, value: object) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(value), "application/json")


def _parse_advance(body: bytes) -> int:
    """The nanoseconds an advance_time body asks for; ValueError says what is wrong."""
    if body[:3] == b"\xd9\xd9\xf7" or (body and 0xA0 <= body[0] <= 0xBF):
        fields = core.cbor_decode(body)
    else:
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"the body is neither JSON nor CBOR: {e}") from None
    if not isinstance(fields, dict) or len(fields) != 1 or next(iter(fields)) not in _UNITS_NS:
        raise ValueError('expected a map with exactly one of "ns", "ms" or "seconds"')
    unit, amount = next(iter(fields.items()))
    if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
        raise ValueError(f"{unit} must be a non-negative number")
    return int(amount * _UNITS_NS[unit])


class AdminEndpoints:
    def __init__(self, clock: AdvanceableClock, on_time_change: Callable[[], None]) -> None:
        self._clock = clock
        # Lets the replica re-certify at once so that /time follows the jump.
        self._on_time_change = on_time_change

    def handle(self, request: HttpRequest, action: str) -> HttpResponse:
        if action == "time":
            if request.method != "GET":
                return HttpResponse.method_not_allowed("GET")
            return _json(200, {"now_ns": self._clock.now_ns()})
        if action == "advance_time":
            if request.method != "POST":
                return HttpResponse.method_not_allowed("POST")
            try:
                delta_ns = _parse_advance(request.body)
            except ValueError as e:
                return HttpResponse.text(400, f"advance_time: {e}\n")
            self._clock.advance(delta_ns)
            self._on_time_change()
            log.info("time advanced by %d ns", delta_ns)
            return _json(200, {"now_ns": self._clock.now_ns()})
        return HttpResponse.text(404, f"no admin action {action!r}\n")
