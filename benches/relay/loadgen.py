"""A load generator process: many IC WebSocket clients (or raw WebSocket clients) in one uvloop.

`python -m benches.relay.loadgen '<job json>'` is started by the harness, which then drives it with
commands on stdin (see `control`). The IC clients are `icgw.wsclient` clients sharing one
`MessageVerifier` (each batch certificate is checked once for all of them, every message's witness and
hash still are); frames are handled in picows' callbacks, without a task or a future per message.

Commands and the events they answer with:
  open {count, window}      connect `count` more clients, `window` at a time, each to its OpenMessage and
                            the test canister's first "ping": `opened` {opened, failed, elapsed_s, ...}
  downstream {messages}     count `messages` more messages per client: `armed` at once, then `done`
  upstream {messages, rate, payload}
                            sign every client's ws_message frames ahead: `prepared`; on `go`, send them,
                            at most `rate` per client and second (a gateway's per-client limit): `sent`
  pingpong {rounds}         every client answers each message with its text + "-pong" until it has
                            received `rounds` messages (the "ping" of the open counts): `done`
  raw_open {count, window, url}, raw_downstream {messages}, raw_upstream {messages, rate, frame_bytes}
                            the same traffic with raw WebSocket clients of the bare relay (`limit`)
  close                     exit (the connections drop with the process)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from benches.relay.canister import UPSTREAM_PREFIX
from benches.relay.control import Commands, Message, emit
from icgw.core import principal_from_text
from icgw.wsclient import IcWebSocketClient, MessageVerifier, ReceivedMessage, encode_app_message
from icgw.wsclient.messages import call_content, sdk_timestamp, signed_call_frame, ws_message_arg

# The test canister's ack interval is far longer than any run: no acks, no keep-alives.
ACK_INTERVAL_MS = 300_000
OPEN_TIMEOUT_S = 60.0
MAX_FRAME_BYTES = 16 * 1024 * 1024


class Tally:
    """One client's counters; the hot path touches only these slots."""

    __slots__ = ("client", "done_at", "first_message", "received", "sent_at", "target")

    def __init__(self) -> None:
        self.client: IcWebSocketClient | None = None
        self.received = 0  # application messages, the open's "ping" included
        self.target = 0  # `received` at which the current phase is complete for this client
        self.sent_at = 0  # perf_counter_ns of the last pingpong send
        self.done_at = 0
        self.first_message: asyncio.Future[None] | None = None


class MeteredClient(IcWebSocketClient):
    """An IC WebSocket client that also counts the bytes of the frames it receives."""

    frame_bytes = 0  # all clients of the process together
    frames = 0

    def _on_frame(self, frame: WSFrame) -> None:
        MeteredClient.frame_bytes += frame.payload_size
        MeteredClient.frames += 1
        super()._on_frame(frame)


class Phase:
    """Completion of a phase over all clients: `waiting` clients left, then the future resolves."""

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_ns = 0
        if waiting == 0:
            self.done.set_result(None)

    def client_done(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.last_ns = time.time_ns()
            if not self.done.done():
                self.done.set_result(None)

    def abort(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Generator:
    def __init__(self, job: Message) -> None:
        self.job = job
        self.index: int = job["index"]
        self.gateway_url: str = job.get("gateway_url", "")
        self.canister_id = principal_from_text(job["canister_id"]) if job.get("canister_id") else b""
        self.verifier = (
            MessageVerifier(bytes.fromhex(job["root_key"]), self.canister_id)
            if job.get("verify", True) and job.get("root_key")
            else None
        )
        self.tallies: list[Tally] = []
        self.handle: Callable[[Tally, ReceivedMessage], None] = self._count_open_ping
        self.phase: Phase | None = None
        self.latencies_ns: list[int] = []  # receive latency: client time - canister timestamp
        self.rtts_ns: list[int] = []
        self.errors: dict[str, int] = {}
        self.wrong_texts = 0
        self.upstream_frames: list[list[bytes]] = []
        self.raw: list[RawClient] = []
        self.raw_base_index: int = job.get("raw_base_index", 0)

    # --- opening IC clients ------------------------------------------------------------------------

    async def open(self, count: int, window: int) -> Message:
        semaphore = asyncio.Semaphore(window)
        latencies: list[int] = []
        failed = 0
        started = time.perf_counter()

        async def one() -> None:
            nonlocal failed
            async with semaphore:
                t0 = time.perf_counter_ns()
                tally = Tally()
                tally.first_message = asyncio.get_running_loop().create_future()
                try:
                    client = await MeteredClient.connect(
                        self.gateway_url,
                        self.canister_id,
                        verifier=self.verifier,
                        verify=self.verifier is not None,
                        ack_interval_ms=ACK_INTERVAL_MS,
                        open_timeout_s=OPEN_TIMEOUT_S,
                        on_message=lambda received, t=tally: self.handle(t, received),
                        max_frame_size=MAX_FRAME_BYTES,
                    )
                    tally.client = client
                    await client.open()
                    # The test canister's "ping" on open: a client is ready once it has it.
                    await asyncio.wait_for(asyncio.shield(tally.first_message), OPEN_TIMEOUT_S)
                except Exception as error:
                    failed += 1
                    self._error(error)
                    if tally.client is not None:
                        tally.client.transport.disconnect()
                    return
                latencies.append(time.perf_counter_ns() - t0)
                self.tallies.append(tally)

        await asyncio.gather(*(one() for _ in range(count)))
        return {
            "opened": count - failed,
            "failed": failed,
            "elapsed_s": time.perf_counter() - started,
            "open_latencies_ns": latencies,
            "errors": self.errors,
        }

    def _count_open_ping(self, tally: Tally, received: ReceivedMessage) -> None:
        tally.received += 1
        if tally.first_message is not None and not tally.first_message.done():
            tally.first_message.set_result(None)

    def _error(self, error: BaseException) -> None:
        name = type(error).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def client_errors(self) -> dict[str, int]:
        """Clients closed with an error (a failed verification, a sequence number out of order, ...)."""
        found: dict[str, int] = {}
        for tally in self.tallies:
            client = tally.client
            if client is not None and client.closed and client.error is not None:
                name = type(client.error).__name__
                found[name] = found.get(name, 0) + 1
        return found

    # --- downstream --------------------------------------------------------------------------------

    def arm_downstream(self, messages: int) -> Phase:
        for tally in self.tallies:
            tally.target = tally.received + messages
        self.phase = Phase(len(self.tallies))
        self.latencies_ns = []
        self.handle = self._downstream_message
        return self.phase

    def received_in_phase(self, messages: int) -> int:
        """Messages of the current downstream phase received so far, over all clients."""
        if self.raw:
            return sum(messages - (c.target - c.received) for c in self.raw)
        return sum(messages - (t.target - t.received) for t in self.tallies)

    def _downstream_message(self, tally: Tally, received: ReceivedMessage) -> None:
        self.latencies_ns.append(time.time_ns() - received.timestamp)
        tally.received += 1
        if tally.received == tally.target:
            assert self.phase is not None
            self.phase.client_done()

    # --- upstream ----------------------------------------------------------------------------------

    def prepare_upstream(self, messages: int, payload: int) -> None:
        """Sign every ws_message now, so sending costs the generator no more than a socket write."""
        now = time.time_ns()
        padding = "x" * max(0, payload - len(UPSTREAM_PREFIX) - 7)
        for tally in self.tallies:
            client = tally.client
            assert client is not None
            frames = []
            for i in range(messages):
                content = encode_app_message(f"{UPSTREAM_PREFIX}{i} {padding}", now)
                sequence_num = client.last_outgoing_sequence_num + 1 + i
                arg = ws_message_arg(client.client_key, sequence_num, sdk_timestamp(now), False, content)
                call = call_content(client.canister_id, client.principal, "ws_message", arg, now)
                frames.append(signed_call_frame(client.identity, call))
            self.upstream_frames.append(frames)

    async def send_upstream(self, rate: int) -> Message:
        """Send the prepared frames, `rate` per client per second at most (a burst of `rate` first)."""
        sends = [
            (tally.client.transport, frames)
            for tally, frames in zip(self.tallies, self.upstream_frames, strict=True)
            if tally.client is not None
        ]
        first_ns = time.time_ns()
        started = time.monotonic()
        total = max((len(frames) for _, frames in sends), default=0)
        for second, offset in enumerate(range(0, total, rate)):
            wait = started + second - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            for n, (transport, frames) in enumerate(sends):
                for frame in frames[offset : offset + rate]:
                    transport.send(WSMsgType.BINARY, frame)
                if n % 64 == 63:
                    await asyncio.sleep(0)  # let the loop flush what it can
        return {"first_ns": first_ns, "last_ns": time.time_ns()}

    # --- ping-pong ---------------------------------------------------------------------------------

    def start_pingpong(self, rounds: int) -> Phase:
        """Answer the open's "ping" now; every reply is answered until `rounds` messages arrived."""
        self.phase = Phase(len(self.tallies))
        self.latencies_ns = []
        self.rtts_ns = []
        self.handle = self._pingpong_message
        for tally in self.tallies:
            tally.target = rounds
            if tally.received >= rounds:
                self.phase.client_done()
            else:
                self._pong(tally, "ping")
        return self.phase

    def _pong(self, tally: Tally, text: str) -> None:
        client = tally.client
        assert client is not None
        tally.sent_at = time.perf_counter_ns()
        try:
            client.send_nowait(encode_app_message(text + "-pong", time.time_ns()))
        except Exception as error:
            self._error(error)
            assert self.phase is not None
            self.phase.client_done()

    def _pingpong_message(self, tally: Tally, received: ReceivedMessage) -> None:
        self.rtts_ns.append(time.perf_counter_ns() - tally.sent_at)
        self.latencies_ns.append(time.time_ns() - received.timestamp)
        tally.received += 1
        message = received.app_message
        text = message["text"] if message is not None else ""
        # The reference's check: after k answers the canister's text is "ping" + "-pong ping" * k.
        if text != "ping" + "-pong ping" * (tally.received - 1):
            self.wrong_texts += 1
        assert self.phase is not None
        if tally.received >= tally.target:
            self.phase.client_done()
        else:
            self._pong(tally, text)

    # --- raw clients of the bare relay (limit) -----------------------------------------------------

    async def raw_open(self, count: int, window: int, url: str) -> Message:
        semaphore = asyncio.Semaphore(window)
        failed = 0
        latencies: list[int] = []
        started = time.perf_counter()

        async def one(index: int) -> None:
            nonlocal failed
            async with semaphore:
                t0 = time.perf_counter_ns()
                try:
                    _, listener = await ws_connect(
                        lambda: RawClient(self), f"{url}/client/{index}", max_frame_size=MAX_FRAME_BYTES
                    )
                except Exception as error:
                    failed += 1
                    self._error(error)
                    return
                latencies.append(time.perf_counter_ns() - t0)
                assert isinstance(listener, RawClient)
                self.raw.append(listener)

        base = self.raw_base_index + len(self.raw)
        await asyncio.gather(*(one(base + i) for i in range(count)))
        return {
            "opened": count - failed,
            "failed": failed,
            "elapsed_s": time.perf_counter() - started,
            "open_latencies_ns": latencies,
            "errors": self.errors,
        }

    def arm_raw_downstream(self, messages: int) -> Phase:
        for client in self.raw:
            client.target = client.received + messages
        self.phase = Phase(len(self.raw))
        return self.phase

    def prepare_raw_upstream(self, messages: int, frame_bytes: int) -> None:
        frame = os.urandom(frame_bytes)
        self.upstream_frames = [[frame] * messages for _ in self.raw]

    async def send_raw_upstream(self, rate: int) -> Message:
        first_ns = time.time_ns()
        started = time.monotonic()
        total = max((len(frames) for frames in self.upstream_frames), default=0)
        for second, offset in enumerate(range(0, total, rate)):
            wait = started + second - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            for n, (client, frames) in enumerate(zip(self.raw, self.upstream_frames, strict=True)):
                transport = client.transport
                assert transport is not None
                for frame in frames[offset : offset + rate]:
                    transport.send(WSMsgType.BINARY, frame)
                if n % 64 == 63:
                    await asyncio.sleep(0)
        return {"first_ns": first_ns, "last_ns": time.time_ns()}


class RawClient(WSListener):
    """A WebSocket client of the bare relay that only counts what it receives."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: WSTransport | None = None
        self.received = 0
        self.target = 0
        self.bytes = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.disconnect()
            return
        self.bytes += frame.payload_size
        self.received += 1
        if self.received == self.target:
            phase = self.generator.phase
            assert phase is not None
            phase.client_done()


# --- the command loop -------------------------------------------------------------------------------


async def serve(job: Message) -> None:
    generator = Generator(job)
    commands = await Commands.open()
    while True:
        command = await commands.next()
        name = command["cmd"]
        if name == "close":
            return
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if name == "open":
            emit("opened", **await generator.open(command["count"], command["window"]))
        elif name == "raw_open":
            emit("opened", **await generator.raw_open(command["count"], command["window"], command["url"]))
        elif name == "principals":
            emit("principals", principals=[t.client.principal.hex() for t in generator.tallies if t.client])
        elif name in ("downstream", "raw_downstream"):
            MeteredClient.frame_bytes = MeteredClient.frames = 0
            for client in generator.raw:
                client.bytes = 0
            if name == "downstream":
                phase = generator.arm_downstream(command["messages"])
            else:
                phase = generator.arm_raw_downstream(command["messages"])
            emit("armed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(phase.done), command["timeout_s"])
            raw_bytes = sum(client.bytes for client in generator.raw)
            emit(
                "done",
                received=generator.received_in_phase(command["messages"]),
                complete=phase.done.done(),
                last_ns=phase.last_ns or time.time_ns(),
                cpu_s=time.process_time() - cpu0,
                latencies_ns=generator.latencies_ns,
                frame_bytes=MeteredClient.frame_bytes + raw_bytes,
                frames=MeteredClient.frames
                + (generator.received_in_phase(command["messages"]) if generator.raw else 0),
                client_errors=generator.client_errors(),
            )
        elif name in ("upstream", "raw_upstream"):
            if name == "upstream":
                generator.prepare_upstream(command["messages"], command["payload"])
            else:
                generator.prepare_raw_upstream(command["messages"], command["frame_bytes"])
            frame_bytes = [len(frames[0]) for frames in generator.upstream_frames if frames]
            emit("prepared", frame_bytes=frame_bytes[0] if frame_bytes else 0)
            await commands.expect("go")
            cpu0 = time.process_time()
            if name == "upstream":
                sent = await generator.send_upstream(command["rate"])
            else:
                sent = await generator.send_raw_upstream(command["rate"])
            emit("sent", cpu_s=time.process_time() - cpu0, **sent)
        elif name == "pingpong":
            phase = generator.start_pingpong(command["rounds"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(phase.done), command["timeout_s"])
            emit(
                "done",
                elapsed_s=time.perf_counter() - wall0,
                cpu_s=time.process_time() - cpu0,
                rtts_ns=generator.rtts_ns,
                latencies_ns=generator.latencies_ns,
                wrong_texts=generator.wrong_texts,
                incomplete=phase.waiting,
                client_errors=generator.client_errors(),
                errors=generator.errors,
            )
        elif name == "stats":
            emit("stats", client_errors=generator.client_errors(), errors=generator.errors)
        else:
            raise SystemExit(f"unknown command {name!r}")


def main(argv: list[str]) -> int:
    job: Message = orjson.loads(argv[1])
    deadline_s: float = job.get("deadline_s", 600.0)

    async def bounded() -> None:
        try:
            await asyncio.wait_for(serve(job), deadline_s)
        except TimeoutError:
            print(f"generator {job['index']}: deadline of {deadline_s:g} s reached", file=sys.stderr)
            raise SystemExit(1) from None

    uvloop.run(bounded())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
