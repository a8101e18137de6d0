"""`python -m benches.relay` end to end, at a tiny size: every scenario runs through, every message is
delivered and counted, and the JSON holds the figures, the goals and the machine; a gateway that cannot
start makes its scenario fail with the gateway's own output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from benches.relay.procs import REPO_ROOT, bench_env

pytestmark = pytest.mark.timeout(120)

TINY = [
    "--clients", "12", "--messages", "6", "--pingpong-clients", "3", "--rounds", "5",
    "--idle-connections", "60", "--open-connections", "40", "--duration", "0.5", "--timeout", "60",
]  # fmt: skip


def run_harness(*args: str, json_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "benches.relay", *args, "--json", str(json_path)],
        cwd=REPO_ROOT,
        env=bench_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    return result, orjson.loads(json_path.read_bytes())


def test_every_scenario_runs_and_accounts_for_every_message(tmp_path: Path) -> None:
    result, report = run_harness(*TINY, json_path=tmp_path / "run.json")
    assert result.returncode == 0, result.stdout + result.stderr
    scenarios = report["scenarios"]
    assert list(scenarios) == ["downstream", "upstream", "pingpong", "idle", "open-rate", "limit"]
    assert not [name for name, figures in scenarios.items() if "error" in figures]

    down = scenarios["downstream"]
    assert (down["expected"], down["delivered"], down["missing"]) == (72, 72, 0)
    assert down["latency"]["count"] == 72
    assert down["rate_msg_s"] > 0
    assert down["gateway_cpu_us_per_msg"] >= 0
    assert down["fraction_of_limit"] > 0

    up = scenarios["upstream"]
    assert (up["received_by_canister"], up["lost"], up["out_of_order"]) == (72, 0, 0)
    assert up["wait_ended"] == "all arrived"

    pingpong = scenarios["pingpong"]
    assert pingpong["round_trips"] == 3 * 4  # 5 messages received, 4 of them answers to the client
    assert pingpong["wrong_texts"] == pingpong["incomplete_clients"] == 0

    assert scenarios["idle"]["connections"] == 60
    assert scenarios["open-rate"]["connections"] == 40
    limit = scenarios["limit"]
    assert limit["downstream"]["missing"] == limit["upstream"]["missing"] == 0
    assert limit["downstream"]["frame_bytes_source"] == "measured by downstream"
    assert limit["downstream"]["frame_bytes"] == round(down["mean_frame_bytes"])

    assert report["machine"]["cpu_model"]
    assert report["machine"]["usable_cpus"] >= 1
    assert report["settings"]["clients"] == 12
    assert {goal["scenario"] for goal in report["goals"]} == {
        "downstream", "upstream", "pingpong", "idle", "open-rate"
    }  # fmt: skip
    assert "goals (issue 5" in result.stdout


def test_a_gateway_that_does_not_start_fails_its_scenario_with_its_output(tmp_path: Path) -> None:
    broken = "python -c 'import sys; print(\"no gateway here\"); sys.exit(3)'"
    result, report = run_harness(
        "--scenario", "pingpong", "--gateway-cmd", broken, "--timeout", "20", json_path=tmp_path / "run.json"
    )
    assert result.returncode == 1
    error = report["scenarios"]["pingpong"]["error"]
    assert "gateway exited with code 3" in error
    assert "no gateway here" in error
    assert report["failures"] == [f"pingpong: {error.splitlines()[0]}"]
