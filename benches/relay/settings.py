"""The knobs of a relay benchmark run, with the defaults the issue sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCENARIOS = ("downstream", "upstream", "pingpong", "idle", "open-rate", "limit")


@dataclass(frozen=True, slots=True)
class Settings:
    gateway_cmd: str = "python -m icgw"
    # downstream and upstream (and limit, which replays them)
    clients: int = 1000
    messages: int = 100  # per client
    payload_bytes: int = 100  # length of the application message's text
    upstream_rate: int = 100  # messages per client and second: icgw's default per-client limit
    # pingpong
    pingpong_clients: int = 100
    rounds: int = 20  # messages each client receives, the open's "ping" included (the reference's 20)
    # idle and open-rate
    idle_connections: int = 10_000
    open_connections: int = 2_000
    duration_s: float = 5.0  # how long idle connections are held
    open_window: int = 200  # connection attempts in flight at once
    # the IC side
    polling_interval_ms: int = 100
    query_delay_ms: float = 0.0
    call_delay_ms: float = 0.0
    max_returned_messages: int = 50  # the CDK's default batch size
    # the load generators
    generators: int = 1
    verify: bool = True
    timeout_s: float = 300.0  # per scenario
    profile_dir: str | None = None  # py-spy profiles of the gateway and the replica go here

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
