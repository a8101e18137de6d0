"""Drive tests/js/replica_agent.test.mjs: the real @dfinity/agent against `python -m icgw.replica`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

JS_DIR = Path(__file__).resolve().parent / "js"


@pytest.fixture
def replica() -> object:
    process = subprocess.Popen(
        [sys.executable, "-m", "icgw.replica", "--listen", "127.0.0.1:0", "--canisters", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        ready = orjson.loads(process.stdout.readline())
        assert ready["event"] == "ready"
        yield ready
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_real_agent_accepts_the_emulator(replica: dict[str, object]) -> None:
    node = shutil.which("node")
    assert node, "node is required for the JS tests"
    assert (JS_DIR / "node_modules" / "@dfinity" / "agent").is_dir(), "run `npm ci` in tests/js"
    canisters = replica["canisters"]
    assert isinstance(canisters, list)
    env = {**os.environ, "REPLICA_URL": str(replica["url"]), "CANISTER_ID": str(canisters[0])}
    result = subprocess.run(
        [node, "--test", "replica_agent.test.mjs"],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
