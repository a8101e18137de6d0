"""Logging: a one-line human format on stdout, JSON lines in a file, and no I/O on the event loop.

Records go from the logging call into a bounded queue (`_NonBlockingQueueHandler`); a `QueueListener` thread
formats and writes them. A full queue drops records and counts them instead of waiting, so a stuck stdout
(a paused terminal, a full pipe) never stalls the gateway.

Levels come from filter specs in the style of the reference's `RUST_LOG_*` variables: comma-separated
`target=level` directives plus an optional bare `level` for everything else, e.g.
`icgw=info,icgw.gateway.poller=debug`. A target matches its logger and that logger's children; the longest
matching target wins; loggers no directive matches are off. stdout and the file have separate specs.
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

TRACE = 5  # below DEBUG, for the reference's `trace` level
OFF = logging.CRITICAL + 10
logging.addLevelName(TRACE, "TRACE")

_LEVELS: Mapping[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": OFF,
}
_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

DEFAULT_QUEUE_SIZE = 10_000


class LogSpecError(ValueError):
    """A malformed log filter spec."""


@dataclass(frozen=True, slots=True)
class LogSpec:
    """A parsed filter spec: a level per logger-name prefix, and the level of everything else."""

    targets: Mapping[str, int]
    default: int = OFF

    def threshold(self, logger_name: str) -> int:
        """The least level a record from `logger_name` needs to pass."""
        name = logger_name
        while True:
            level = self.targets.get(name)
            if level is not None:
                return level
            dot = name.rfind(".")
            if dot < 0:
                return self.default
            name = name[:dot]

    @property
    def lowest(self) -> int:
        return min([self.default, *self.targets.values()])


def parse_log_spec(spec: str) -> LogSpec:
    """Parse `target=level,...[,level]`; an empty spec or `off` turns everything off."""
    targets: dict[str, int] = {}
    default = OFF
    for raw in spec.split(","):
        directive = raw.strip()
        if not directive:
            continue
        target, sep, level_name = directive.rpartition("=")
        if not sep:
            target, level_name = "", directive
        level = _LEVELS.get(level_name.strip().lower())
        if level is None:
            raise LogSpecError(
                f"unknown level {level_name.strip()!r} in {spec!r}; use one of {', '.join(_LEVELS)}"
            )
        target = target.strip()
        if not sep:
            default = level
        elif _TARGET.match(target):
            targets[target] = level
        else:
            raise LogSpecError(f"bad target {target!r} in {spec!r}: expected a dotted logger name")
    return LogSpec(targets, default)


class _SpecFilter(logging.Filter):
    """Applies one spec to records in the listener thread; thresholds are cached per logger name."""

    def __init__(self, spec: LogSpec) -> None:
        super().__init__()
        self._spec = spec
        self._thresholds: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        threshold = self._thresholds.get(record.name)
        if threshold is None:
            threshold = self._thresholds[record.name] = self._spec.threshold(record.name)
        return record.levelno >= threshold


# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}


def _utc_timestamp(created: float) -> str:
    seconds = int(created)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"
    )


class _ConsoleFormatter(logging.Formatter):
    """`2026-11-27T07:17:16.123Z INFO  icgw.gateway.poller: message key=value`, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc_timestamp(record.created)} {record.levelname:<5} {record.name}: {record.getMessage()}"
        fields = _extra_fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _JsonLinesFileHandler(logging.Handler):
    """Appends one JSON object per record (orjson) to a file; runs in the listener thread only."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file = path.open("ab")

    def emit(self, record: logging.LogRecord) -> None:
        entry: dict[str, Any] = {
            "timestamp": _utc_timestamp(record.created),
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
            "thread_id": record.thread,
            "thread_name": record.threadName,
        }
        task_name = getattr(record, "taskName", None)  # Python 3.12+ records the asyncio task
        if task_name is not None:
            entry["task"] = task_name
        entry.update(_extra_fields(record))
        if record.exc_text:
            entry["exception"] = record.exc_text
        try:
            self._file.write(orjson.dumps(entry, default=str) + b"\n")
            self._file.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()


class _NonBlockingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the listener thread without ever waiting; counts what a full queue drops."""

    def __init__(self, record_queue: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(record_queue)
        self._records = record_queue
        self._dropped = 0
        self._dropped_lock = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Resolve the message and traceback now, while the objects they refer to are still valid. Work on a
        # copy: other handlers on the same logger (pytest's, an embedding app's) still get the original.
        record = copy.copy(record)
        record.message = record.getMessage()
        record.msg, record.args = record.message, None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.stack_info:
            record.exc_text = (
                f"{record.exc_text}\n{record.stack_info}" if record.exc_text else record.stack_info
            )
            record.stack_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if self._dropped:
            self.report_dropped(block=False)
        try:
            self._records.put_nowait(record)
        except queue.Full:
            with self._dropped_lock:
                self._dropped += 1

    def report_dropped(self, *, block: bool) -> None:
        """Queue one warning saying how many records were dropped since the last report."""
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        if not dropped:
            return
        notice = logging.LogRecord(
            __name__, logging.WARNING, __file__, 0,
            f"{dropped} log records were dropped: the log writer could not keep up", None, None,
        )  # fmt: skip
        try:
            self._records.put(notice, block=block)
        except queue.Full:
            with self._dropped_lock:
                self._dropped += dropped


class _DrainingQueueListener(logging.handlers.QueueListener):
    """A QueueListener whose stop waits for room for its sentinel instead of failing on a full queue."""

    def __init__(
        self, record_queue: queue.Queue[logging.LogRecord | None], *outputs: logging.Handler
    ) -> None:
        super().__init__(record_queue, *outputs, respect_handler_level=True)
        self._records = record_queue

    def enqueue_sentinel(self) -> None:
        self._records.put(None)  # QueueListener's sentinel is None


@dataclass(slots=True)
class _ActiveLogging:
    handler: _NonBlockingQueueHandler
    listener: _DrainingQueueListener
    outputs: list[logging.Handler]
    configured_loggers: list[str]
    previous_root_level: int


_active: _ActiveLogging | None = None
_active_lock = threading.Lock()
_atexit_registered = False


def setup_logging(
    stdout_spec: str,
    file_spec: str | None,
    traces_dir: Path,
    start_timestamp_ms: int,
    *,
    stream: IO[str] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
) -> Path | None:
    """Route icgw's logging through a background writer; returns the JSON log file's path, if any.

    `stdout_spec` filters the human-readable lines written to `stream` (stdout by default). `file_spec`
    filters the JSON lines written to `<traces_dir>/gateway_<start_timestamp_ms>.log`; None or `off` writes no
    file at all. Calling it again replaces the previous setup.
    """
    global _atexit_registered
    stdout_filter = parse_log_spec(stdout_spec)
    file_filter = parse_log_spec(file_spec) if file_spec is not None else LogSpec({})
    flush_logging()

    outputs: list[logging.Handler] = []
    specs: list[LogSpec] = []
    if stdout_filter.lowest < OFF:
        console = logging.StreamHandler(stream if stream is not None else sys.stdout)
        console.setFormatter(_ConsoleFormatter())
        outputs.append(console)
        specs.append(stdout_filter)
    log_path: Path | None = None
    if file_filter.lowest < OFF:
        traces_dir.mkdir(parents=True, exist_ok=True)
        log_path = traces_dir / f"gateway_{start_timestamp_ms}.log"
        outputs.append(_JsonLinesFileHandler(log_path))
        specs.append(file_filter)
    for output, spec in zip(outputs, specs, strict=True):
        output.setLevel(spec.lowest)
        output.addFilter(_SpecFilter(spec))

    # Logger levels decide, in the calling thread, whether a record is created at all: each gets the lowest
    # threshold any output has for it, so records no output wants cost one level check.
    root = logging.getLogger()
    previous_root_level = root.level
    root.setLevel(min([OFF, *(spec.default for spec in specs)]))
    configured = sorted({target for spec in specs for target in spec.targets})
    for target in configured:
        logging.getLogger(target).setLevel(min(spec.threshold(target) for spec in specs))

    record_queue: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize=queue_size)
    handler = _NonBlockingQueueHandler(record_queue)
    listener = _DrainingQueueListener(record_queue, *outputs)
    root.addHandler(handler)
    listener.start()
    with _active_lock:
        global _active
        _active = _ActiveLogging(handler, listener, outputs, configured, previous_root_level)
        if not _atexit_registered:
            atexit.register(flush_logging)
            _atexit_registered = True
    return log_path


def flush_logging() -> None:
    """Write out every queued record, stop the writer thread and close the outputs (for shutdown).

    Blocks until the queue is drained, so call it after the event loop has stopped. Idempotent.
    """
    global _active
    with _active_lock:
        active, _active = _active, None
    if active is None:
        return
    root = logging.getLogger()
    root.removeHandler(active.handler)
    active.handler.report_dropped(block=True)  # the listener is still draining, so this cannot hang
    active.listener.stop()
    for output in active.outputs:
        output.flush()
        output.close()
    for target in active.configured_loggers:
        logging.getLogger(target).setLevel(logging.NOTSET)
    root.setLevel(active.previous_root_level)
