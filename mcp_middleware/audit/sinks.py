"""Where audit records go: a JSONL file with size-based rotation, and OpenTelemetry logs.

Sinks are called from the trail's writer thread only (one thread: no locks), never from the
event loop, so their blocking I/O never holds a request.

The file sink rotates with the standard library's `RotatingFileHandler` (used directly, outside
the logging tree): its rollover is the one operators know (`audit.jsonl` → `audit.jsonl.1` … `.N`,
checked before each record, so a record is never split across files) and it has been maintained
with Python for twenty years; nothing in a third-party package does more for a single writer.
The chain goes on across files: the first record of a new file names the last of the previous one.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .chain import Tail, read_tail

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider

__all__ = ["AuditSink", "JsonlFileSink", "OtelLogSink"]


class AuditSink(Protocol):
    """A destination for sealed records (called from the writer thread)."""

    def open(self) -> Tail | None:
        """Get ready; return where an existing chain ends (a file), or None (nothing to resume)."""
        ...

    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class _RaisingRotatingHandler(logging.handlers.RotatingFileHandler):
    """`RotatingFileHandler` whose errors reach the caller (the trail counts them) instead of stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # called by `emit` from inside its `except` block: re-raise that error


class JsonlFileSink:
    """One JSON record per line in `path`, rotated at `max_bytes` keeping `backups` older files.

    `max_bytes=0` never rotates. On open, the chain resumes from the last record of `path` (or of
    `path.1`, when `path` was just rotated away); a torn last line (a crash mid-write) is closed
    with a newline so that the next record starts on a line of its own.

    One writer per file: open takes an exclusive lock on `path.lock` (`flock`), and a second
    writer (another gateway instance, another trail) fails to open instead of interleaving two
    chains in one file.

    >>> sink = JsonlFileSink("audit.jsonl", max_bytes=50 * 2**20, backups=10)
    """

    def __init__(self, path: str | Path, *, max_bytes: int = 0, backups: int = 5) -> None:
        if max_bytes < 0 or backups < 0:
            raise ValueError("JsonlFileSink needs max_bytes >= 0 and backups >= 0")
        if max_bytes and not backups:
            raise ValueError("JsonlFileSink: rotation (max_bytes) needs backups >= 1 to keep the rotated records")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._handler: _RaisingRotatingHandler | None = None
        self._lock: int | None = None
        self._not_open = "not opened yet"

    def open(self) -> Tail | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        except Exception as exc:
            self._not_open = str(exc)
            raise
        tail = read_tail(self.path)
        if tail is None and self.backups:
            tail = read_tail(self.path.with_name(self.path.name + ".1"))
        elif tail is not None and tail.torn:
            with self.path.open("ab") as file:
                file.write(b"\n")
        handler = _RaisingRotatingHandler(
            self.path, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8", delay=True
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        return tail

    def write(self, record: Mapping[str, Any]) -> None:
        handler = self._handler
        if handler is None:
            raise RuntimeError(f"{self.path} is not open: {self._not_open}")
        line = orjson.dumps(record).decode()
        handler.emit(logging.LogRecord("mcp_middleware.audit", logging.INFO, "", 0, line, None, None))

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            raise RuntimeError(f"{self.path} is being written by another audit trail (pid {holder})") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode())
        self._lock = descriptor


class OtelLogSink:
    """Each record as an OpenTelemetry log record (event `mcp.audit`): the record is the body, and the
    fields a log search filters on are attributes (`mcp.method.name`, `mcp_middleware.audit.outcome`…).

    Give it the SDK's `LoggerProvider` with the exporter of your choice (OTLP, in memory in tests);
    the provider's own batch processor does the network I/O on its thread.

    >>> from opentelemetry.sdk._logs import LoggerProvider
    >>> sink = OtelLogSink(LoggerProvider())
    """

    def __init__(self, logger_provider: LoggerProvider, *, shutdown: bool = False) -> None:
        from mcp_middleware import __version__

        self.logger_provider = logger_provider
        self.shutdown = shutdown
        """Whether `close` shuts the provider down (flushing it): True when the sink made it for itself."""
        self._logger = logger_provider.get_logger("mcp_middleware.audit", __version__)

    def open(self) -> Tail | None:
        return None

    def write(self, record: Mapping[str, Any]) -> None:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.context import Context

        attributes: dict[str, Any] = {
            "mcp_middleware.audit.seq": record["seq"],
            "mcp_middleware.audit.hash": record["hash"],
        }
        for key, attribute in _ATTRIBUTES:
            value = record.get(key)
            if isinstance(value, str | int):
                attributes[attribute] = value
        outcome = record.get("outcome")
        if isinstance(outcome, dict):
            attributes["mcp_middleware.audit.outcome"] = outcome.get("class", "")
        principal = record.get("principal")
        if isinstance(principal, dict) and isinstance(principal.get("subject"), str):
            attributes["enduser.id"] = principal["subject"]
        self._logger.emit(
            context=Context(),  # the writer thread's context says nothing of the operation
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body=_body(record),
            attributes=attributes,
            event_name=str(record.get("event", "mcp.audit")),
        )

    def close(self) -> None:
        if self.shutdown:
            self.logger_provider.shutdown()  # type: ignore[attr-defined]  # the SDK's provider
        else:
            flush = getattr(self.logger_provider, "force_flush", None)
            if flush is not None:
                flush()


_ATTRIBUTES = (
    ("method", "mcp.method.name"),
    ("target", "mcp_middleware.audit.target"),
    ("backend", "mcp_middleware.server"),
    ("trace_id", "mcp_middleware.audit.trace_id"),
)


def _body(record: Mapping[str, Any]) -> Any:
    """The record as an OpenTelemetry `AnyValue`: maps and lists as they are, `None` left out of maps."""
    if isinstance(record, Mapping):
        return {key: _body(value) for key, value in record.items() if value is not None}
    if isinstance(record, list):
        return [_body(value) for value in record if value is not None]
    return record
