"""How much the replica emulator serves on one core, and what a 50-message `ws_get_messages` costs it.

    python -m benches.replica_bench [--duration S] [--connections N] [--json FILE]

Starts `python -m icgw.replica` as its own process (single-threaded: it uses one core at most) and
drives it from this process over loopback, with several keep-alive connections (`--pin` puts the two
processes on separate CPUs, for a quiet machine):

1. `call ws_message`: every connection is a client that opened itself with `ws_open`, then sends
   signed v3 `ws_message` calls with consecutive sequence numbers, as a gateway relays them (the test
   canister answers each with a message of its own, so the certified queue grows as in a relay run);
2. `query empty`: signed v2 `ws_get_messages` queries past the end of a gateway's queue, the poll an
   idle gateway makes;
3. `query 50 messages`: the same query where the queue holds 50 messages from the polled nonce on (put
   there with the test canister's `send`), so every reply carries 50 messages, the certificate and
   the witness: the poll of a busy gateway.

Every request is signed afresh (its own nonce), so the emulator verifies a new signature each time.
Each phase warms up, then counts the requests completed in its measured window and reads the CPU time
both processes used in it (/proc/<pid>/stat and os.times) and the whole machine's (/proc/stat).

- CPU µs/request is the emulator's cost of one request, and 1 s divided by it the requests/s one core
  would serve when the emulator has it to itself (`one_core_capacity_per_s`);
- the emulator's busy share says whether it (≈100 %) or the driver was the limit of the measured
  requests/s, and "others busy" how many CPUs the rest of the machine kept busy meanwhile: on a shared
  machine, the measured rate is only as good as the CPU left over, the CPU cost per request much less
  affected.

Replies are checked: every call's certified reply must be `Ok`, every 50-message reply must hold 50
messages, and a sample of certificates is verified against the emulator's root key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

from icgw import core
from icgw.replica.cdk import ClientKey, IncomingMessage
from icgw.replica.test_canister import CanisterCall, TestCanisterCalls, encode_app_message

NS_PER_MINUTE = 60_000_000_000
INGRESS_EXPIRY_NS = 4 * NS_PER_MINUTE
CBOR_HEADERS = {"Content-Type": "application/cbor"}
# One certificate in this many is BLS-verified by the driver: enough to know the replies are real,
# few enough that the driver's pairing checks do not make it the bottleneck.
VERIFY_EVERY = 200
MESSAGES_PER_POLL = 50
WS_MESSAGE_OK = core.candid_encode_values("(CanisterWsMessageResult)", [{"Ok": None}])

# One request of a phase: `verify` asks for a full check of its certificate; returns whether it did one.
Request = Callable[[bool], Awaitable[bool]]


# --- the emulator process ----------------------------------------------------------------------------


@dataclass
class ReplicaProcess:
    process: subprocess.Popen[bytes]
    url: str
    root_key: bytes
    canister_id: bytes


@contextmanager
def replica_process(flavor: str, round_ms: float, cpu: int | None) -> Iterator[ReplicaProcess]:
    command = [sys.executable, "-m", "icgw.replica", "--listen", "127.0.0.1:0", "--flavor", flavor]
    command += ["--round-ms", str(round_ms), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the replica exited before it was ready (code {process.wait()})")
        ready = orjson.loads(line)
        if ready.get("event") != "ready":
            raise RuntimeError(f"the replica did not start: {ready}")
        yield ReplicaProcess(
            process,
            ready["url"],
            bytes.fromhex(ready["root_key"]),
            core.principal_from_text(ready["canisters"][0]),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat (fields 14 and 15, in clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def machine_busy_cpu_seconds() -> float:
    """CPU time all CPUs spent on anything but idling, from the first line of /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    # Steal time is counted: a CPU the hypervisor gave to another guest was not ours to use.
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- requests ----------------------------------------------------------------------------------------


class Requests:
    """Signs envelopes and posts them to one canister of the emulator."""

    def __init__(self, replica: ReplicaProcess, session: aiohttp.ClientSession) -> None:
        self.replica = replica
        self.session = session
        canister = core.principal_to_text(replica.canister_id)
        self.call_url = f"{replica.url}/api/v3/canister/{canister}/call"
        self.query_url = f"{replica.url}/api/v2/canister/{canister}/query"

    def envelope(self, request_type: str, identity: core.Ed25519Identity | None, call: CanisterCall) -> bytes:
        content = {
            "request_type": request_type,
            "sender": core.ANONYMOUS if identity is None else identity.principal,
            "nonce": os.urandom(16),
            "ingress_expiry": time.time_ns() + INGRESS_EXPIRY_NS,
            "canister_id": self.replica.canister_id,
            "method_name": call.method,
            "arg": call.arg,
        }
        if identity is None:
            return core.cbor_encode({"content": content})
        return core.sign_envelope(identity, content)

    async def post(self, url: str, body: bytes) -> dict[str, Any]:
        async with self.session.post(url, data=body, headers=CBOR_HEADERS) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status} from {url}: {data[:300]!r}")
        decoded = core.cbor_decode(data)
        assert isinstance(decoded, dict)
        return decoded

    async def call(self, identity: core.Ed25519Identity | None, call: CanisterCall, *, verify: bool) -> bytes:
        """A synchronous (v3) call; returns its certified reply."""
        body = self.envelope("call", identity, call)
        response = await self.post(self.call_url, body)
        if response.get("status") != "replied":
            raise RuntimeError(f"the call was not executed: {response}")
        certificate = response["certificate"]
        if verify:
            core.verify_certificate(certificate, self.replica.root_key, canister_id=self.replica.canister_id)
        decoded = core.cbor_decode(certificate)
        assert isinstance(decoded, dict)
        tree = core.cbor_encode(decoded["tree"])
        request_id = core.envelope_request_id(body)
        found, reply = core.lookup_path(tree, [b"request_status", request_id, b"reply"])
        if found != "found" or reply is None:
            raise RuntimeError(f"the call has no certified reply ({found})")
        return reply

    async def query(self, identity: core.Ed25519Identity, call: CanisterCall) -> bytes:
        response = await self.post(self.query_url, self.envelope("query", identity, call))
        if response.get("status") != "replied":
            raise RuntimeError(f"the query was rejected: {response}")
        reply: bytes = response["reply"]["arg"]
        return reply


# --- phases ------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    requests: int
    seconds: float
    requests_per_s: float
    replica_cpu_s: float
    replica_cpu_us_per_request: float
    one_core_capacity_per_s: float
    replica_cpu_busy: float
    driver_cpu_busy: float
    others_cpu_busy: float
    latency_ms_p50: float
    latency_ms_p99: float
    certificates_verified: int


@dataclass
class Phase:
    """Workers repeat one request; the measured window starts after the warm-up."""

    name: str
    measuring: bool = False
    latencies: list[float] = field(default_factory=list)
    verified: int = 0

    async def worker(self, request: Request, stop: asyncio.Event) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            started = time.perf_counter()
            # Warm-up requests are verified too: a short run still checks some certificates.
            self.verified += await request(count % VERIFY_EVERY == 1)
            if self.measuring:
                self.latencies.append(time.perf_counter() - started)

    async def run(
        self, replica_pid: int, workers: list[Request], warmup: float, duration: float
    ) -> PhaseResult:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self.worker(request, stop)) for request in workers]
        await asyncio.sleep(warmup)
        self.measuring = True
        replica_cpu, driver_cpu = process_cpu_seconds(replica_pid), own_cpu_seconds()
        machine_cpu, started = machine_busy_cpu_seconds(), time.monotonic()
        await asyncio.sleep(duration)
        self.measuring = False
        replica_cpu = process_cpu_seconds(replica_pid) - replica_cpu
        driver_cpu = own_cpu_seconds() - driver_cpu
        others_cpu = machine_busy_cpu_seconds() - machine_cpu - replica_cpu - driver_cpu
        seconds = time.monotonic() - started
        stop.set()
        await asyncio.gather(*tasks)
        requests = len(self.latencies)
        latencies_ms = sorted(x * 1000 for x in self.latencies)
        return PhaseResult(
            name=self.name,
            requests=requests,
            seconds=round(seconds, 3),
            requests_per_s=round(requests / seconds, 1),
            replica_cpu_s=round(replica_cpu, 3),
            replica_cpu_us_per_request=round(replica_cpu / max(requests, 1) * 1e6, 1),
            one_core_capacity_per_s=round(requests / replica_cpu) if replica_cpu > 0 else 0,
            replica_cpu_busy=round(replica_cpu / seconds, 3),
            driver_cpu_busy=round(driver_cpu / seconds, 3),
            others_cpu_busy=round(max(others_cpu, 0.0) / seconds, 3),
            latency_ms_p50=round(statistics.median(latencies_ms), 3) if latencies_ms else 0.0,
            latency_ms_p99=round(latencies_ms[int(len(latencies_ms) * 0.99)], 3) if latencies_ms else 0.0,
            certificates_verified=self.verified,
        )


async def ws_message_workers(requests: Requests, connections: int) -> list[Request]:
    """One client per connection, opened through a shared gateway principal."""
    gateway = core.Ed25519Identity.generate()
    workers = []
    for _ in range(connections):
        client = core.Ed25519Identity.generate()
        key = ClientKey(client.principal, int.from_bytes(os.urandom(8), "big"))
        opened = await requests.call(
            client, TestCanisterCalls.ws_open(key.client_nonce, gateway.principal), verify=True
        )
        assert opened == core.candid_encode_values("(CanisterWsOpenResult)", [{"Ok": None}])
        workers.append(_ws_message_worker(requests, client, key))
    return workers


def _ws_message_worker(requests: Requests, client: core.Ed25519Identity, key: ClientKey) -> Request:
    sequence = 0

    async def send(verify: bool) -> bool:
        nonlocal sequence
        sequence += 1
        now = time.time_ns()
        message = IncomingMessage(key, sequence, now, False, encode_app_message(f"bench {sequence}", now))
        reply = await requests.call(client, TestCanisterCalls.ws_message(message), verify=verify)
        if reply != WS_MESSAGE_OK:
            raise RuntimeError(f"ws_message {sequence} failed: {core.candid_decode(reply)}")
        return verify

    return send


async def poll_workers(requests: Requests, connections: int, *, messages: int) -> list[Request]:
    """Pollers of a fresh gateway whose queue holds `messages` messages from the polled nonce on."""
    gateway = core.Ed25519Identity.generate()
    client = core.Ed25519Identity.generate()
    open_call = TestCanisterCalls.ws_open(1, gateway.principal)
    await requests.call(client, open_call, verify=False)
    # The queue now holds the OpenMessage and the test canister's "ping": nonces 0 and 1.
    blobs = [encode_app_message(f"queued {i}", time.time_ns()) for i in range(messages)]
    if blobs:
        await requests.call(None, TestCanisterCalls.send(client.principal, blobs), verify=False)
    poll = TestCanisterCalls.ws_get_messages(2)

    async def query(verify: bool) -> bool:
        reply = await requests.query(gateway, poll)
        batch = core.decode_messages_reply(reply, 2)
        if len(batch) != messages:
            raise RuntimeError(f"the poll returned {len(batch)} messages, not {messages}")
        if verify and messages:
            batch.verify(requests.replica.root_key, requests.replica.canister_id)
            return True
        return False

    return [query] * connections


# --- the run -----------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "icgw_commit": commit,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    replica_cpu, driver_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    if driver_cpu is not None:
        os.sched_setaffinity(0, {driver_cpu})
    results: list[PhaseResult] = []
    with replica_process(args.flavor, args.round_ms, replica_cpu) as replica:
        connector = aiohttp.TCPConnector(limit=args.connections, keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            requests = Requests(replica, session)
            phases: list[tuple[str, Callable[[], Awaitable[list[Request]]]]] = [
                ("call ws_message", lambda: ws_message_workers(requests, args.connections)),
                ("query empty", lambda: poll_workers(requests, args.connections, messages=0)),
                (
                    f"query {MESSAGES_PER_POLL} messages",
                    lambda: poll_workers(requests, args.connections, messages=MESSAGES_PER_POLL),
                ),
            ]
            for name, make_workers in phases:
                workers = await make_workers()
                result = await Phase(name).run(replica.process.pid, workers, args.warmup, args.duration)
                results.append(result)
                print(f"  {name}: {result.requests_per_s:.0f} requests/s", file=sys.stderr)
    empty, full = results[1], results[2]
    return {
        "machine": machine_facts(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "flavor": args.flavor,
            "round_ms": args.round_ms,
            "replica_cpu": replica_cpu,
            "driver_cpu": driver_cpu,
        },
        "phases": [asdict(r) for r in results],
        "ws_get_messages_50": {
            "replica_cpu_us_per_query": full.replica_cpu_us_per_request,
            "over_an_empty_query_us": round(
                full.replica_cpu_us_per_request - empty.replica_cpu_us_per_request, 1
            ),
        },
    }


COLUMNS = (
    ("phase", 22, "name", "<22"),
    ("req/s", 8, "requests_per_s", ">8.0f"),
    ("CPU µs/req", 11, "replica_cpu_us_per_request", ">11.1f"),
    ("1-core req/s", 13, "one_core_capacity_per_s", ">13.0f"),
    ("replica busy", 13, "replica_cpu_busy", ">13.0%"),
    ("driver busy", 12, "driver_cpu_busy", ">12.0%"),
    ("others busy", 12, "others_cpu_busy", ">12.0%"),
    ("p50 ms", 8, "latency_ms_p50", ">8.2f"),
    ("p99 ms", 8, "latency_ms_p99", ">8.2f"),
)


def print_table(report: dict[str, Any]) -> None:
    machine, settings = report["machine"], report["settings"]
    print(f"replica emulator on {machine['cpu_model']}, {machine['logical_cpus']} CPUs, ", end="")
    print(f"Python {machine['python']}; {settings['connections']} connections, ", end="")
    print(f"{settings['duration_s']:g} s per phase, flavor {settings['flavor']}, ", end="")
    pinned = settings["replica_cpu"] is not None
    print(f"round {settings['round_ms']:g} ms, " + ("pinned to separate CPUs" if pinned else "not pinned"))
    header = " ".join(f"{title:{'<' if key == 'name' else '>'}{width}}" for title, width, key, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for phase in report["phases"]:
        print(" ".join(f"{phase[key]:{spec}}" for _, _, key, spec in COLUMNS))
    cost = report["ws_get_messages_50"]
    print(f"a {MESSAGES_PER_POLL}-message ws_get_messages costs the emulator ", end="")
    print(f"{cost['replica_cpu_us_per_query']:.0f} µs of CPU, ", end="")
    print(f"{cost['over_an_empty_query_us']:.0f} µs more than an empty one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benches.replica_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--flavor", choices=["rust", "motoko"], default="rust")
    parser.add_argument(
        "--round-ms", type=float, default=5.0, help="the emulator's round length (its default)"
    )
    parser.add_argument("--pin", action="store_true", help="pin the two processes to separate CPUs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    report = uvloop.run(run(args))
    print_table(report)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
