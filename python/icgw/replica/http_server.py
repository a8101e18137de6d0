"""A small HTTP/1.1 server on asyncio (uvloop) with httptools as the parser.

It serves the emulator's API and nothing else, so it does only what that needs, fast: keep-alive,
pipelining (answers go out in request order even when handlers finish out of order), `Content-Length`
and chunked bodies up to a limit (413 above), 400 for anything the parser rejects, `Expect:
100-continue`. A handler returns a response directly (the fast path: no task, no future) or an
awaitable of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

import httptools

log = logging.getLogger("icgw.replica.http")

# Pipelined requests a connection may have in flight before we stop reading from it.
MAX_PIPELINED = 64
# A connection with nothing in flight and no bytes for this long is closed.
IDLE_TIMEOUT_S = 120.0


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Close the connection without writing anything (fault injection: a dropped connection).
    drop_connection: bool = False

    @staticmethod
    def text(status: int, message: str) -> HttpResponse:
        return HttpResponse(status, message.encode(), "text/plain; charset=utf-8")

    @staticmethod
    def method_not_allowed(*allowed: str) -> HttpResponse:
        methods = ", ".join(allowed)
        response = HttpResponse.text(405, f"method not allowed: use {methods}\n")
        response.headers["Allow"] = methods
        return response

    @staticmethod
    def dropped() -> HttpResponse:
        return HttpResponse(0, drop_connection=True)


Handler = Callable[[HttpRequest], "HttpResponse | Awaitable[HttpResponse]"]

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _encode(response: HttpResponse, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"]
    if response.content_type is not None:
        head.append(f"Content-Type: {response.content_type}\r\n")
    for name, value in response.headers.items():
        head.append(f"{name}: {value}\r\n")
    head.append(f"Content-Length: {len(response.body)}\r\n")
    if not keep_alive:
        head.append("Connection: close\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + response.body


class _BodyTooLarge(Exception):
    pass


# After refusing a request we keep reading (and discarding) for this long before closing: closing a
# socket with unread input makes the kernel send a reset, and the client would never see the answer.
DISCARD_BEFORE_CLOSE_S = 2.0


class _Slot:
    """One request's place in the connection's answer order."""

    __slots__ = ("keep_alive", "refusal", "response")

    def __init__(self, keep_alive: bool, *, refusal: bool = False) -> None:
        self.keep_alive = keep_alive
        # An answer to a request we could not parse: after it, the connection only drains and closes.
        self.refusal = refusal
        self.response: HttpResponse | None = None


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._handler = server.handler
        self._max_body = server.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._pending: deque[_Slot] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._discarding = False
        self._too_large = False
        self._reading_paused = False
        self._writing_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._discarding:
            return
        self._arm_idle_timer()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpResponse.text(400, "protocol upgrades are not supported\n"))
        except httptools.HttpParserCallbackError:
            if self._too_large:
                self._fail(HttpResponse.text(413, f"request body exceeds {self._max_body} bytes\n"))
            else:
                log.exception("HTTP callback failed")
                self._fail(HttpResponse.text(500, "internal error\n"))
        except httptools.HttpParserError as e:
            self._fail(HttpResponse.text(400, f"malformed HTTP request: {e}\n"))

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._too_large = True
            raise _BodyTooLarge
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
            raise _BodyTooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            slot = _Slot(keep_alive=False)
            slot.response = HttpResponse.text(400, f"invalid request target {self._url!r}\n")
            self._pending.append(slot)
            self._flush()
            return
        path = url.path.decode("latin-1")
        query = url.query.decode("latin-1") if url.query else ""
        method = self._parser.get_method().decode("latin-1")
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        request = HttpRequest(method, path, query, self._headers, body)
        slot = _Slot(self._parser.should_keep_alive() and not self._server.stopping)
        self._pending.append(slot)
        try:
            result = self._handler(request)
        except Exception:
            log.exception("handler failed for %s %s", method, path)
            result = HttpResponse.text(500, "internal error\n")
        if isinstance(result, HttpResponse):
            slot.response = result
            self._flush()
        else:
            task = asyncio.ensure_future(self._complete(slot, result, method, path))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._update_reading()

    # --- answering -------------------------------------------------------------------------------

    async def _complete(self, slot: _Slot, pending: Awaitable[HttpResponse], method: str, path: str) -> None:
        try:
            slot.response = await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed for %s %s", method, path)
            slot.response = HttpResponse.text(500, "internal error\n")
        self._flush()

    def _flush(self) -> None:
        """Write every answer that is ready and has no unanswered request before it."""
        transport = self._transport
        if transport is None or self._closing:
            return
        out: list[bytes] = []
        close = False
        while self._pending and self._pending[0].response is not None:
            slot = self._pending.popleft()
            response = slot.response
            assert response is not None
            if response.drop_connection:
                # Answers already due still go out (then a plain close); otherwise a reset.
                if out:
                    transport.write(b"".join(out))
                self._close(abort=not out)
                return
            out.append(_encode(response, slot.keep_alive))
            if slot.refusal:
                transport.write(b"".join(out))
                self._drain_and_close()
                return
            if not slot.keep_alive:
                close = True
                break
        if out:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            self._close()
        else:
            self._update_reading()

    def _fail(self, response: HttpResponse) -> None:
        """Answer a request the parser could not accept (after the answers already due), then close."""
        if self._transport is None or self._closing or self._discarding:
            return
        slot = _Slot(keep_alive=False, refusal=True)
        slot.response = response
        self._pending.append(slot)
        self._discarding = True
        self._flush()

    def _drain_and_close(self) -> None:
        transport = self._transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()
        if self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False
        asyncio.get_running_loop().call_later(DISCARD_BEFORE_CLOSE_S, self.abort)

    def abort(self) -> None:
        self._close(abort=True)

    def _close(self, *, abort: bool = False) -> None:
        self._closing = True
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        should_pause = not self._discarding and (self._writing_paused or len(self._pending) >= MAX_PIPELINED)
        if should_pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not should_pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(IDLE_TIMEOUT_S, self._on_idle)

    def _on_idle(self) -> None:
        if self._pending:
            self._arm_idle_timer()
        else:
            self._close()

    def shutdown(self) -> None:
        """Close once the answers in flight are written (graceful stop)."""
        if not self._pending or self._discarding:
            self._close()
        else:
            for slot in self._pending:
                slot.keep_alive = False


class HttpServer:
    """Listens on one address and hands every complete request to `handler`."""

    def __init__(self, handler: Handler, *, max_body_bytes: int) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    def forget(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        if self.stopping and not self.connections:
            self._all_closed.set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Start listening; returns the bound (host, port) (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_address=True, backlog=1024
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop listening, let answers in flight go out for up to `grace_s`, then close everything."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        if not self.connections:
            self._all_closed.set()
        for conn in list(self.connections):
            conn.shutdown()
        try:
            await asyncio.wait_for(self._all_closed.wait(), grace_s)
        except TimeoutError:
            log.warning(
                "%d connection(s) still busy after %.1f s: closing them", len(self.connections), grace_s
            )
        for conn in list(self.connections):
            conn.abort()
        await self._server.wait_closed()
        self._server = None
