"""`python -m loadtests`: the locust load test against a fresh replica emulator and gateway, headless.

Starts the emulator and the gateway under test (`--gateway-cmd`, with the reference gateway's flags
appended, as the relay harness does) on loopback, runs `loadtests/locustfile.py` headless with CSV and HTML
reports in `--out`, and stops everything. Exits non-zero when locust reports any failure or when fewer
sessions completed than users arrived. `--short` is the ≈20 s form CI runs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import tempfile
from pathlib import Path

import uvloop
from benches.relay.procs import REPO_ROOT, bench_env, start_gateway, start_replica

from loadtests.phases import phases_duration_s, total_arrivals

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# Beyond the phases and the users' grace to finish: locust's own start-up and shut-down.
RUN_MARGIN_S = 120.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    p.add_argument("--short", action="store_true", help="the ≈20 s CI form of the arrival phases")
    p.add_argument("--gateway-cmd", default="python -m icgw", help="the gateway under test")
    p.add_argument("--polling-interval", type=int, default=100, help="gateway poll period, ms")
    p.add_argument("--out", type=Path, default=None, help="folder for the CSV and HTML reports")
    p.add_argument("--no-verify", action="store_true", help="users skip certificate verification")
    return p


def completed_sessions(csv_prefix: Path) -> tuple[int, int]:
    """(sessions, failed sessions) from locust's stats CSV."""
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "session":
                return int(row["Request Count"]), int(row["Failure Count"])
    return 0, 0


async def run(args: argparse.Namespace, out: Path) -> int:
    phases = "short" if args.short else "artillery"
    workdir = Path(tempfile.mkdtemp(prefix="icgw-locust-"))
    replica = await start_replica(workdir, [])
    try:
        gateway = await start_gateway(
            args.gateway_cmd, workdir, ic_url=replica.url, polling_ms=args.polling_interval
        )
        try:
            csv_prefix = out / "locust"
            command = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--only-summary",
                "--host",
                gateway.url,
                "--canister-id",
                replica.canister_id,
                "--ic-url",
                replica.url,
                "--phases",
                phases,
                "--csv",
                str(csv_prefix),
                "--html",
                str(out / "locust.html"),
                "--loglevel",
                "WARNING",
                *(["--no-verify"] if args.no_verify else []),
            ]
            process = await asyncio.create_subprocess_exec(*command, cwd=REPO_ROOT, env=bench_env())
            limit = phases_duration_s(phases) + RUN_MARGIN_S
            try:
                code = await asyncio.wait_for(process.wait(), limit)
            except TimeoutError:
                process.kill()
                await process.wait()
                print(f"locust did not finish within {limit:g} s", file=sys.stderr)
                return 1
        finally:
            await gateway.managed.stop()
    finally:
        await replica.managed.stop()
    sessions, failed = completed_sessions(csv_prefix)
    expected = total_arrivals(phases)
    print(f"sessions: {sessions} of {expected} users, {failed} failed; reports in {out}")
    if code != 0:
        return code
    return 0 if sessions == expected and failed == 0 else 1


def main() -> int:
    args = build_parser().parse_args()
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="icgw-locust-report-"))
    out.mkdir(parents=True, exist_ok=True)
    return uvloop.run(run(args, out.resolve()))


if __name__ == "__main__":
    sys.exit(main())
