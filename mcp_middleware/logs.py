"""One log stream a shipper can parse: every record one JSON object per line, or readable text.

`configure_logging()` is what `mcp-gateway serve` does at start-up, for anyone who serves an
`MCPServer` (or the middlewares) with their own uvicorn:

- one handler on the root logger, with one formatter, carries every record: the access log,
  warnings (`py.warnings`), uvicorn's loggers, the SDK's `mcp.*` loggers, fastmcp's, yours;
- the console handlers already on the root logger (the `RichHandler` that building an `MCPServer`
  installs at INFO, a plain `StreamHandler`, a previous call's) are replaced; file, queue,
  OpenTelemetry and test handlers are kept;
- the SDK's loggers (`mcp`) and the HTTP client's (`httpx2`) log at WARNING or above unless
  `levels` says otherwise: they log a line per session or per backend call, which on the request
  path costs more than the request;
- session ids in the SDK's records become their digests (`SessionIdRedaction`).

Once the root logger has a handler, the SDK's own `logging.basicConfig(...)` (run by every
`MCPServer(...)`) does nothing, so a server built afterwards adds no Rich output.

JSON records carry `ts` (UTC, ISO 8601), `level`, `logger`, `message`, then the record's extra
fields; an access line's fields (`record.mcp`) are the object itself, at top level; a record
written inside a traced request carries that span's `trace_id` and `span_id`.

>>> import json, logging
>>> formatter = JsonLogFormatter()
>>> record = logging.LogRecord("demo", logging.WARNING, __file__, 1, "disk %s full", ("/var",), None)
>>> line = json.loads(formatter.format(record))
>>> line["level"], line["logger"], line["message"]
('WARNING', 'demo', 'disk /var full')
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, TypeGuard

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from .core import SessionIdRedaction

__all__ = [
    "QUIET_LOGGERS",
    "TEXT_FORMAT",
    "JsonLogFormatter",
    "LogFormat",
    "configure_logging",
    "default_log_format",
]

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
QUIET_LOGGERS = ("mcp", "httpx2")
"""Loggers held at WARNING (or the root level, if higher) unless `levels` names them."""
_TAKEN_OVER = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "fastmcp")
"""Loggers that install handlers of their own and stop propagation: they are routed to the root's."""
_SESSION_LOGGERS = ("mcp.server.streamable_http_manager", "mcp.server.streamable_http")
_MARK = "_mcp_middleware_logs"
_NONE = object()
# Extra attributes that are not fields: uvicorn's ANSI-coloured copy of the message, our access entry.
_SKIPPED = (*RESERVED_ATTRS, "taskName", "color_message", "mcp")


class JsonLogFormatter(OrjsonFormatter):
    """One JSON object per record: `ts`, `level`, `logger`, `message`, then the extra fields.

    An access line (`record.mcp`, written by `AccessLog`) is its fields at top level with a short
    `message` (`tools/call search 200`); its JSON text is not written twice. Exceptions are one
    `exc_info` string (newlines escaped), so a record is always one line.
    """

    def __init__(self) -> None:
        super().__init__(reserved_attrs=_SKIPPED)

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__.get("mcp")
        if not _is_access_entry(fields):
            return super().format(record)
        line, args = record.msg, record.args
        record.msg, record.args = _summary(fields), None  # the fields say it all; no JSON inside JSON
        try:
            return super().format(record)
        finally:
            record.msg, record.args = line, args

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        ts = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        log_data["ts"] = ts
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        fields = record.__dict__.get("mcp", _NONE)
        if _is_access_entry(fields):
            log_data.update(fields)
        elif fields is not _NONE:
            log_data["mcp"] = fields  # someone else's `extra={"mcp": ...}`: an ordinary field
        super().add_fields(log_data, record, message_dict)
        # What a shipper keys on is the record's own, whatever an extra field was called.
        log_data.update(ts=ts, level=record.levelname, logger=record.name, message=record.message)
        if "trace_id" not in log_data:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                log_data["trace_id"] = f"{context.trace_id:032x}"
                log_data["span_id"] = f"{context.span_id:016x}"


def _is_access_entry(fields: object) -> TypeGuard[dict[str, Any]]:
    """`AccessLog`'s entry (its `event` says so), not someone else's `extra={"mcp": ...}`."""
    return type(fields) is dict and fields.get("event") == "mcp.request"


def _summary(fields: Mapping[str, Any]) -> str:
    method = fields.get("mcp.method") or fields.get("http.method")
    target = fields.get("mcp.target") or (None if fields.get("mcp.method") else fields.get("http.path"))
    return " ".join(str(part) for part in (method, target, fields.get("http.status")) if part is not None)


def default_log_format(stream: TextIO | None = None) -> LogFormat:
    """`text` for a person at a terminal, `json` for anything else (a container, a pipe, a file)."""
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "json"


def configure_logging(
    format: LogFormat | None = None,
    level: int | str = "INFO",
    *,
    levels: Mapping[str, int | str] | None = None,
    stream: TextIO | None = None,
    capture_warnings: bool = True,
) -> logging.Handler:
    """Route every record through one handler and formatter on `stream` (default stderr).

    `format`: `"json"` or `"text"`; `None` picks `default_log_format(stream)`. `level`: the root
    logger's level. `levels`: per-logger levels, e.g. `{"mcp": "INFO"}` to see the SDK's lines.
    `capture_warnings`: Python warnings become records of `py.warnings`. Safe to call again (it
    replaces its own handler). Returns the handler it installed.

    >>> configure_logging(format="yaml")
    Traceback (most recent call last):
    ...
    ValueError: log format must be 'json' or 'text', not 'yaml'
    """
    chosen = format if format is not None else default_log_format(stream)
    if chosen not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {chosen!r}")
    root_level = _level(level)
    overrides = {name: _level(value) for name, value in (levels or {}).items()}
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLogFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if _is_console(old):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(root_level)
    for name in _TAKEN_OVER:
        taken = logging.getLogger(name)
        for old in list(taken.handlers):
            taken.removeHandler(old)
        taken.propagate = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root_level))
    for name, value in overrides.items():
        logging.getLogger(name).setLevel(value)
    for name in _SESSION_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SessionIdRedaction) for f in logger.filters):
            logger.addFilter(SessionIdRedaction())
    logging.captureWarnings(capture_warnings)
    return handler


def _level(value: int | str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        number = logging.getLevelName(value.upper())
        if isinstance(number, int):
            return number
    raise ValueError(f"not a log level: {value!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal: ours, a plain `StreamHandler`, or Rich's."""
    if getattr(handler, _MARK, False) or type(handler) is logging.StreamHandler:
        return True
    return any(kind.__module__.startswith("rich.") for kind in type(handler).__mro__)
