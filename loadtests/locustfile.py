"""The reference gateway's load test (its Artillery scenario), as a locust test of any IC WebSocket gateway.

Arrivals: 1 user/s for 5 s, 5/s for 30 s, 1/s for 5 s (160 users). Each user opens an IC WebSocket to the
test canister, plays the ping-pong (the canister sends "ping" on open and answers every message with its
text + " ping"; the user answers each message with its text + "-pong" and checks it is "ping" +
"-pong ping" * k), stops after 20 received messages (19 answers), and closes. `--phases short` runs the
same shape in about 20 s for CI.

Metrics, as locust request events (request type `IC-WS`): `open` (connect to OpenMessage), `receive`
(client time - the canister's timestamp of the message), `roundtrip` (an answer sent to its reply
received), `session` (a user's whole session; a failed session carries its error). Any failure makes
locust exit with 1.

    locust -f loadtests/locustfile.py --headless --host ws://127.0.0.1:8080 \\
        --canister-id <id> --ic-url http://127.0.0.1:4943 --csv out/locust --html out/locust.html

`python -m loadtests` starts the replica emulator and the gateway first (see its --help).
"""

from __future__ import annotations

import time
from typing import Any

from locust import LoadTestShape, User, constant, events, task
from locust.env import Environment

from icgw.core import principal_from_text
from icgw.wsclient.verify import MessageVerifier
from loadtests.icws import IcWebSocketSession, fetch_root_key
from loadtests.phases import PHASES, phases_duration_s, target, total_arrivals

REQUEST_TYPE = "IC-WS"
# After the last arrival, how long users get to finish before the test stops anyway.
FINISH_GRACE_S = 60.0


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    parser.add_argument("--canister-id", default="", help="the test canister (text form)")
    parser.add_argument("--ic-url", default="http://127.0.0.1:4943", help="IC URL, for the root key")
    parser.add_argument("--phases", choices=sorted(PHASES), default="artillery", help="arrival phases")
    parser.add_argument(
        "--rounds", type=int, default=20, help="messages each user receives ('ping' included)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip certificate verification")
    parser.add_argument("--ws-timeout", type=float, default=30.0, help="socket timeout of each user, seconds")


class Sessions:
    """Users that have finished their session (shared by the shape, which stops the test when all did)."""

    finished = 0
    verifier: MessageVerifier | None = None

    @classmethod
    def verifier_for(cls, environment: Environment) -> MessageVerifier | None:
        options = environment.parsed_options
        if options is None or options.no_verify:
            return None
        if cls.verifier is None:
            root_key = fetch_root_key(options.ic_url)
            cls.verifier = MessageVerifier(root_key, principal_from_text(options.canister_id))
        return cls.verifier


class PingPongUser(User):
    """One arrival: a single session, then idle until the test ends (an arrival is not a loop)."""

    wait_time = constant(1)

    def on_start(self) -> None:
        self.played = False

    def fire(
        self, name: str, started: float, length: int = 0, exception: BaseException | None = None
    ) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    @task
    def play(self) -> None:
        if self.played:
            return
        self.played = True
        options = self.environment.parsed_options
        assert options is not None
        session_started = time.perf_counter()
        error: BaseException | None = None
        session = IcWebSocketSession(
            self.host or "", options.canister_id, Sessions.verifier_for(self.environment), options.ws_timeout
        )
        try:
            started = time.perf_counter()
            try:
                session.open()
            except Exception as failure:
                self.fire("open", started, exception=failure)
                raise
            self.fire("open", started)
            self._ping_pong(session, options.rounds)
        except Exception as failure:
            error = failure
        finally:
            try:
                session.close()
            except Exception as failure:
                error = error or failure
            Sessions.finished += 1
            self.fire("session", session_started, exception=error)

    def _ping_pong(self, session: IcWebSocketSession, rounds: int) -> None:
        sent_at: float | None = None
        for k in range(rounds):
            message = session.receive()
            if sent_at is not None:
                self.fire("roundtrip", sent_at, message.frame_bytes)
            self.environment.events.request.fire(
                request_type=REQUEST_TYPE,
                name="receive",
                response_time=time.time_ns() / 1e6 - message.canister_timestamp_ns / 1e6,
                response_length=message.frame_bytes,
                exception=None,
                context={},
            )
            expected = "ping" + "-pong ping" * k
            if message.text != expected:
                raise AssertionError(
                    f"round {k}: the canister sent {message.text[:60]!r}, not {expected[:60]!r}"
                )
            if k + 1 < rounds:
                sent_at = time.perf_counter()
                session.send_text(message.text + "-pong")


class ArrivalPhases(LoadTestShape):
    """Users arrive at each phase's rate (they never leave, so the user count is the arrivals so far);
    the test ends once every user has finished its session, or FINISH_GRACE_S after the last arrival."""

    def tick(self) -> tuple[int, float] | None:
        runner = self.runner
        options = runner.environment.parsed_options if runner is not None else None
        phases = options.phases if options is not None else "artillery"
        elapsed = self.get_run_time()
        current = target(phases, elapsed)
        if current is not None:
            return current[0], float(current[1])
        arrivals = total_arrivals(phases)
        if Sessions.finished >= arrivals or elapsed > phases_duration_s(phases) + FINISH_GRACE_S:
            return None
        return arrivals, 1.0
