"""The emulator benchmark harness runs end to end: a short run of `python -m benches.replica_bench`
against a real emulator process, checking the figures it writes (not their values)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from benches import replica_bench

pytestmark = pytest.mark.timeout(60)


def test_a_short_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "replica.json"
    args = ["--duration", "0.3", "--warmup", "0.2", "--connections", "4", "--json", str(out)]
    assert replica_bench.main(args) == 0
    report = orjson.loads(out.read_bytes())
    assert set(report["machine"]) >= {"cpu_model", "logical_cpus", "python"}
    phases = {phase["name"]: phase for phase in report["phases"]}
    assert list(phases) == ["call ws_message", "query empty", "query 50 messages"]
    for phase in phases.values():
        assert phase["requests"] > 0
        assert phase["replica_cpu_us_per_request"] > 0
    # The replies were checked, and some certificates verified against the emulator's root key.
    assert phases["call ws_message"]["certificates_verified"] > 0
    assert phases["query 50 messages"]["certificates_verified"] > 0
    cost = report["ws_get_messages_50"]["replica_cpu_us_per_query"]
    assert cost == phases["query 50 messages"]["replica_cpu_us_per_request"]
    assert "50-message ws_get_messages costs the emulator" in capsys.readouterr().out
