"""Logging: filter specs, the JSON-lines file, per-module levels, a writer that never blocks the caller."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from icgw.observability.logging import (
    OFF,
    TRACE,
    LogSpecError,
    flush_logging,
    parse_log_spec,
    setup_logging,
)

START_MS = 1_764_227_836_123


@pytest.fixture(autouse=True)
def _stop_logging() -> Iterator[None]:
    yield
    flush_logging()


def read_json_lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --- specs -------------------------------------------------------------------------------------------


def test_spec_picks_the_longest_matching_target() -> None:
    spec = parse_log_spec("icgw=info, icgw.gateway.poller=debug ,aiohttp=warn")
    assert spec.threshold("icgw") == logging.INFO
    assert spec.threshold("icgw.gateway.session") == logging.INFO
    assert spec.threshold("icgw.gateway.poller") == logging.DEBUG
    assert spec.threshold("icgw.gateway.poller.batch") == logging.DEBUG
    assert spec.threshold("icgw.gateway.pollerx") == logging.INFO  # a prefix only matches at a dot
    assert spec.threshold("aiohttp.access") == logging.WARNING
    assert spec.threshold("asyncio") == OFF
    assert spec.lowest == logging.DEBUG


def test_bare_level_sets_everything_else() -> None:
    spec = parse_log_spec("warn,icgw=trace")
    assert spec.threshold("asyncio") == logging.WARNING
    assert spec.threshold("icgw.x") == TRACE
    assert parse_log_spec("").lowest == OFF
    assert parse_log_spec("off").lowest == OFF
    assert parse_log_spec("icgw=OFF").threshold("icgw") == OFF


@pytest.mark.parametrize(
    ("spec", "reason"),
    [("icgw=verbose", "unknown level 'verbose'"), ("icgw/x=info", "bad target"), ("=info", "bad target")],
)
def test_bad_specs_say_what_is_wrong(spec: str, reason: str) -> None:
    with pytest.raises(LogSpecError, match=reason):
        parse_log_spec(spec)


# --- outputs -----------------------------------------------------------------------------------------


def test_file_gets_json_lines_and_stdout_one_line_each(tmp_path: Path) -> None:
    stdout = io.StringIO()
    path = setup_logging("icgw=info", "icgw=debug", tmp_path / "traces", START_MS, stream=stdout)
    assert path == tmp_path / "traces" / f"gateway_{START_MS}.log"
    log = logging.getLogger("icgw.gateway.session")
    log.debug("frame from %s", "client-1")
    log.info("client %s opened", "abc", extra={"canister_id": "rrkah-fqaaa-aaaaa-aaaaq-cai", "nonce": 7})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("relay failed")
    flush_logging()

    entries = read_json_lines(path)
    assert [entry["message"] for entry in entries] == [
        "frame from client-1",
        "client abc opened",
        "relay failed",
    ]
    assert [entry["level"] for entry in entries] == ["DEBUG", "INFO", "ERROR"]
    assert {entry["target"] for entry in entries} == {"icgw.gateway.session"}
    assert entries[1]["canister_id"] == "rrkah-fqaaa-aaaaa-aaaaq-cai"
    assert entries[1]["nonce"] == 7
    assert isinstance(entries[0]["thread_id"], int)
    assert str(entries[0]["timestamp"]).endswith("Z")
    assert "RuntimeError: boom" in str(entries[2]["exception"])

    lines = stdout.getvalue().splitlines()
    # DEBUG is below the stdout spec; the traceback follows its record's line.
    assert lines[0].endswith(
        "INFO  icgw.gateway.session: client abc opened canister_id=rrkah-fqaaa-aaaaa-aaaaq-cai nonce=7"
    )
    assert lines[1].endswith("ERROR icgw.gateway.session: relay failed")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


def test_per_module_levels_apply_to_each_output_separately(tmp_path: Path) -> None:
    stdout = io.StringIO()
    path = setup_logging(
        "icgw=info,icgw.gateway.poller=debug", "icgw=warn,aiohttp=info", tmp_path, START_MS, stream=stdout
    )
    assert path is not None
    logging.getLogger("icgw.gateway.poller").debug("poller debug")
    logging.getLogger("icgw.gateway.session").debug("session debug")
    logging.getLogger("icgw.gateway.session").info("session info")
    logging.getLogger("icgw.gateway.session").warning("session warning")
    logging.getLogger("aiohttp.server").info("aiohttp info")
    logging.getLogger("asyncio").error("asyncio error")
    flush_logging()

    printed = [line.split(": ", 1)[1] for line in stdout.getvalue().splitlines()]
    assert printed == ["poller debug", "session info", "session warning"]
    assert [entry["message"] for entry in read_json_lines(path)] == ["session warning", "aiohttp info"]


def test_no_file_spec_creates_no_file(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    assert setup_logging("icgw=info", None, traces, START_MS, stream=io.StringIO()) is None
    logging.getLogger("icgw").warning("only on stdout")
    flush_logging()
    assert not traces.exists()
    assert setup_logging("icgw=info", "off", traces, START_MS, stream=io.StringIO()) is None
    assert not traces.exists()


def test_levels_are_restored_after_flush(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = root.level, len(root.handlers)
    setup_logging("icgw.gateway=debug", None, tmp_path, START_MS, stream=io.StringIO())
    assert logging.getLogger("icgw.gateway").level == logging.DEBUG
    assert root.level == OFF  # nothing outside icgw.gateway is even formatted
    flush_logging()
    assert logging.getLogger("icgw.gateway").level == logging.NOTSET
    assert (root.level, len(root.handlers)) == before


# --- never blocking ----------------------------------------------------------------------------------


class StuckStream(io.StringIO):
    """A stdout whose writes hang until released, like a full pipe or a paused terminal."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writer_threads: set[str] = set()

    def write(self, text: str) -> int:
        self.writer_threads.add(threading.current_thread().name)
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the stream")
        return super().write(text)


def test_logging_returns_at_once_while_the_output_is_stuck(tmp_path: Path) -> None:
    stream = StuckStream()
    setup_logging("icgw=info", None, tmp_path, START_MS, stream=stream)
    log = logging.getLogger("icgw.gateway.poller")
    started = time.perf_counter()
    for index in range(200):
        log.info("message %d", index)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"200 log calls took {elapsed:.3f}s while the output was stuck"

    stream.release.set()
    flush_logging()
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(index) for index in range(200)]
    assert threading.current_thread().name not in stream.writer_threads


def test_a_full_queue_drops_records_and_says_how_many(tmp_path: Path) -> None:
    stream = StuckStream()
    setup_logging("icgw=info", None, tmp_path, START_MS, stream=stream, queue_size=10)
    log = logging.getLogger("icgw.gateway.session")
    started = time.perf_counter()
    for index in range(100):
        log.info("message %d", index)
    assert time.perf_counter() - started < 0.5
    stream.release.set()
    flush_logging()

    lines = stream.getvalue().splitlines()
    delivered = [line for line in lines if ": message " in line]
    notices = [line for line in lines if "log records were dropped" in line]
    assert notices
    assert all(" WARNING icgw.observability.logging: " in notice for notice in notices)
    dropped = sum(int(notice.split(": ", 1)[1].split()[0]) for notice in notices)
    assert 0 < len(delivered) <= 11  # the queue, plus the record the writer had already taken
    assert len(delivered) + dropped == 100
