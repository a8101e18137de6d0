"""`python -m benches.relay`: run scenarios, print the summary table, write every figure as JSON."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop

from benches.relay import scenarios
from benches.relay.machine import machine_facts
from benches.relay.procs import gateway_base_command
from benches.relay.report import add_fractions, check_goals, failures, summary_table
from benches.relay.settings import SCENARIOS, Settings

# `all` runs limit last so that it replays the frame size the downstream scenario measured.
ORDER = ("downstream", "upstream", "pingpong", "idle", "open-rate", "limit")


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m benches.relay",
        description="Relay benchmark: the replica emulator, the gateway under test and load generators, "
        "each in its own process on loopback; the same traffic through a bare picows relay gives the "
        "machine's physical limit in the same run.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        help="scenario to run (repeat for several); default all",
    )
    p.add_argument(
        "--gateway-cmd",
        default=d.gateway_cmd,
        help="the gateway under test; --gateway-address, --ic-network-url, --polling-interval and "
        "--prometheus-endpoint are appended; a leading 'python' is this interpreter "
        f"(default: {d.gateway_cmd!r})",
    )
    p.add_argument("--clients", type=int, default=d.clients, help="downstream/upstream clients")
    p.add_argument("--messages", type=int, default=d.messages, help="downstream/upstream messages per client")
    p.add_argument("--payload-size", type=int, default=d.payload_bytes, help="application text length, bytes")
    p.add_argument(
        "--upstream-rate", type=int, default=d.upstream_rate, help="upstream messages per client per second"
    )
    p.add_argument("--pingpong-clients", type=int, default=d.pingpong_clients)
    p.add_argument(
        "--rounds", type=int, default=d.rounds, help="pingpong messages per client ('ping' included)"
    )
    p.add_argument("--idle-connections", type=int, default=d.idle_connections)
    p.add_argument("--open-connections", type=int, default=d.open_connections)
    p.add_argument("--open-window", type=int, default=d.open_window, help="connection attempts in flight")
    p.add_argument("--duration", type=float, default=d.duration_s, help="seconds idle connections are held")
    p.add_argument(
        "--polling-interval", type=int, default=d.polling_interval_ms, help="gateway poll period, ms"
    )
    p.add_argument(
        "--query-delay-ms", type=float, default=d.query_delay_ms, help="simulated IC query latency"
    )
    p.add_argument("--call-delay-ms", type=float, default=d.call_delay_ms, help="simulated IC call latency")
    p.add_argument(
        "--max-returned-messages", type=int, default=d.max_returned_messages, help="canister batch size"
    )
    p.add_argument("--generators", type=int, default=d.generators, help="load generator processes")
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="clients skip certificate verification"
    )
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds each scenario may take")
    p.add_argument("--json", type=Path, default=None, help="write every figure here (JSON)")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy profiles of the gateway and replica into this folder",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs (printed path)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        gateway_cmd=args.gateway_cmd,
        clients=args.clients,
        messages=args.messages,
        payload_bytes=args.payload_size,
        upstream_rate=args.upstream_rate,
        pingpong_clients=args.pingpong_clients,
        rounds=args.rounds,
        idle_connections=args.idle_connections,
        open_connections=args.open_connections,
        duration_s=args.duration,
        open_window=args.open_window,
        polling_interval_ms=args.polling_interval,
        query_delay_ms=args.query_delay_ms,
        call_delay_ms=args.call_delay_ms,
        max_returned_messages=args.max_returned_messages,
        generators=args.generators,
        verify=args.verify,
        timeout_s=args.timeout,
        profile_dir=str(args.profile.resolve()) if args.profile else None,
    )


def selected(names: Sequence[str] | None) -> list[str]:
    chosen = set(names or ["all"])
    if "all" in chosen:
        return list(ORDER)
    return [name for name in ORDER if name in chosen]


def gateway_version(settings: Settings) -> str | None:
    """The first line of `<gateway command> --version`, if it answers within 10 s."""
    words = gateway_base_command(settings.gateway_cmd)
    try:
        result = subprocess.run([*words, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if result.returncode == 0 and lines else None


async def run_scenarios(settings: Settings, names: list[str], workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        print(f"[relay] {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        folder = workdir / name
        try:
            if name == "limit":
                run = scenarios.limit(settings, folder, results)
            else:
                run = {
                    "downstream": scenarios.downstream,
                    "upstream": scenarios.upstream,
                    "pingpong": scenarios.pingpong,
                    "idle": scenarios.idle,
                    "open-rate": scenarios.open_rate,
                }[name](settings, folder)
            figures = await asyncio.wait_for(run, settings.timeout_s * 2)
        except Exception as error:
            figures = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        figures["scenario_wall_s"] = time.perf_counter() - started
        results[name] = figures
        print(f"[relay] {name} done in {figures['scenario_wall_s']:.1f} s", file=sys.stderr, flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    names = selected(args.scenario)
    workdir = Path(tempfile.mkdtemp(prefix="icgw-relay-"))
    started = datetime.datetime.now(datetime.UTC)
    try:
        scenario_results = uvloop.run(run_scenarios(settings, names, workdir))
    finally:
        if args.keep_logs:
            print(f"[relay] logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    add_fractions(scenario_results)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": ["python", "-m", "benches.relay", *(argv if argv is not None else sys.argv[1:])],
        "settings": settings.as_dict(),
        "machine": machine_facts(),
        "gateway_command": gateway_base_command(settings.gateway_cmd),
        "gateway_version": gateway_version(settings),
        "scenarios": scenario_results,
    }
    results["goals"] = check_goals(scenario_results)
    problems = failures(scenario_results)
    results["failures"] = problems
    if args.json is not None:
        args.json.write_bytes(
            orjson.dumps(
                results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
            )
        )
    print(summary_table(results), flush=True)
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0
