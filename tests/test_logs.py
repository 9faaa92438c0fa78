"""`configure_logging()`: one handler and formatter for every record, the SDK's Rich output replaced.

The first two tests run a real `uvicorn module:app` process whose module serves an `MCPServer`
(wrapped in `TracingMiddleware` with the access log), with and without the helper, and read its
stderr. The others configure logging in this process and restore it afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from opentelemetry.sdk.trace import TracerProvider

from mcp_middleware import configure_logging
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.logs import JsonLogFormatter, default_log_format
from mcp_middleware.tracing import AccessLog
from tests.conftest import free_port
from tests.support import processes

ROOT = Path(__file__).resolve().parents[1]
BOX_DRAWING = re.compile("[\u2500-\u257f]")

APP_MODULE = """
import logging, os, warnings
from mcp_middleware import TracingMiddleware, configure_logging
if os.environ.get("USE_HELPER") == "1":
    configure_logging(format="json", levels={"mcp": "INFO"})  # before the server is built
from tests.servers import build_server
server = build_server()  # MCPServer(...) runs the SDK's logging.basicConfig: Rich at INFO, unless a handler exists
app = TracingMiddleware(server.streamable_http_app(), access_log=True)
warnings.warn("a warning from the app module", UserWarning)
logging.getLogger("mcp.server.lowlevel.server").warning("the SDK warns: %s", "wrapped\\nmessage")
"""


@contextlib.contextmanager
def _uvicorn(tmp_path: Path, *, helper: bool, app: str = "logging_app:app") -> Iterator[tuple[str, Path]]:
    (tmp_path / "logging_app.py").write_text(APP_MODULE, encoding="utf-8")
    port = free_port()
    stderr = tmp_path / "stderr.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "USE_HELPER": "1" if helper else "0",
        "COLUMNS": "80",  # what Rich wraps to when it is not told otherwise
    }
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    with (
        stderr.open("wb") as sink,
        processes.running(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=sink) as process,
    ):
        processes.wait_listening(port, process, stderr)
        yield f"http://127.0.0.1:{port}/mcp", stderr


async def _sessions(url: str) -> None:
    async with Client(url, mode="legacy", cache=None) as client:  # the SDK logs each session at INFO
        assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]
    async with Client(url, cache=None) as client:
        assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_plain_uvicorn_app_with_the_helper_writes_only_json(tmp_path: Path) -> None:
    with _uvicorn(tmp_path, helper=True) as (url, stderr):
        await _sessions(url)
    text = stderr.read_text(encoding="utf-8")
    assert not BOX_DRAWING.search(text) and "\x1b" not in text
    records = [orjson.loads(line) for line in text.split("\n")[:-1]]  # each line one JSON object
    assert all({"ts", "level", "logger", "message"} <= record.keys() for record in records)
    by_logger: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_logger.setdefault(record["logger"], []).append(record)
    # uvicorn's own loggers (its default config installs handlers of its own) come through the same formatter
    assert any(r["message"] == "Application startup complete." for r in by_logger["uvicorn.error"])
    assert all("color_message" not in r for r in by_logger["uvicorn.error"])  # uvicorn's ANSI copy is dropped
    assert any('"POST /mcp HTTP/1.1" 200' in r["message"] for r in by_logger["uvicorn.access"])
    # the SDK's records (INFO because levels= asks for it), session ids as digests
    created = [r["message"] for r in by_logger["mcp.server.streamable_http_manager"]]
    assert any(m.startswith("Created new transport with session ID: sha256:") for m in created), created
    assert by_logger["mcp.server.lowlevel.server"][0]["message"] == "the SDK warns: wrapped\nmessage"
    warning = by_logger["py.warnings"][0]
    assert warning["level"] == "WARNING" and "a warning from the app module" in warning["message"]
    access = by_logger["mcp_middleware.access"]
    assert {r["message"] for r in access} >= {"initialize 200", "tools/call echo 200"}
    assert all(r["event"] == "mcp.request" and "http.status" in r for r in access)


@pytest.mark.anyio
async def test_without_the_helper_the_same_app_writes_lines_no_shipper_can_parse(tmp_path: Path) -> None:
    """The control: what the helper fixes (the SDK's handler, uvicorn's own format, JSON inside text)."""
    with _uvicorn(tmp_path, helper=False) as (url, stderr):
        await _sessions(url)
    lines = stderr.read_text(encoding="utf-8").split("\n")[:-1]
    unparsable = []
    for line in lines:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            unparsable.append(line)
    assert len(unparsable) > len(lines) // 2, lines
    try:
        import rich  # noqa: F401
    except ImportError:  # pragma: no cover (rich comes with fastmcp, installed for the tests)
        return
    assert any(BOX_DRAWING.search(line) or line.startswith(" " * 10) for line in lines), lines  # Rich's layout


@pytest.mark.anyio
async def test_the_documented_example_logs_json(tmp_path: Path) -> None:
    with _uvicorn(tmp_path, helper=True, app="examples.json_logs:app") as (url, stderr):
        async with Client(url, cache=None) as client:
            assert (await client.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3"  # type: ignore[union-attr]
    records = [orjson.loads(line) for line in stderr.read_text(encoding="utf-8").split("\n")[:-1]]
    assert {"uvicorn.error", "uvicorn.access", "mcp_middleware.access"} <= {r["logger"] for r in records}
    assert any(r.get("message") == "tools/call add 200" for r in records)


# --- in this process ------------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and the loggers the helper touches back as they were."""
    root = logging.getLogger()
    names = ("mcp", "httpx2", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "fastmcp", "demo")
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in names}
    propagate = {name: logging.getLogger(name).propagate for name in names}
    root_handlers, root_level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        for name, (level, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate[name]
        logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().split("\n")[:-1]]


@pytest.mark.usefixtures("restore_logging")
def test_a_server_built_before_the_helper_loses_its_rich_handler_and_one_built_after_adds_none() -> None:
    root = logging.getLogger()
    root.handlers[:] = []  # as in a fresh process
    MCPServer("built-before")  # the SDK's logging.basicConfig: Rich (or, without rich, a StreamHandler) at INFO
    (sdk_handler,) = root.handlers
    assert type(sdk_handler).__name__ in ("RichHandler", "StreamHandler")
    kept = logging.NullHandler()  # a file, queue or OpenTelemetry handler of the application's: kept
    root.addHandler(kept)
    stream = io.StringIO()
    ours = configure_logging(format="json", stream=stream)
    assert root.handlers == [kept, ours] and sdk_handler not in root.handlers
    MCPServer("built-after")
    assert root.handlers == [kept, ours]  # the SDK's basicConfig is a no-op once a handler exists
    again = configure_logging(format="json", stream=stream)
    assert root.handlers == [kept, again]  # calling twice replaces its own handler
    logging.getLogger("mcp.server.streamable_http_manager").info("Created new transport with session ID: abc")
    logging.getLogger("mcp.server.lowlevel.server").warning("kept")
    assert [r["message"] for r in _lines(stream)] == ["kept"]  # the SDK's INFO stays off the hot path


@pytest.mark.usefixtures("restore_logging")
def test_levels_and_formats() -> None:
    stream = io.StringIO()
    configure_logging(format="text", level="DEBUG", levels={"httpx2": "ERROR"}, stream=stream)
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("mcp").level == logging.WARNING  # the SDK's loggers: WARNING unless asked
    assert logging.getLogger("httpx2").level == logging.ERROR
    logging.getLogger("demo").info("plain %s", "text")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO demo plain text\n", stream.getvalue())
    configure_logging(format="json", level="ERROR", stream=stream)
    assert logging.getLogger("mcp").level == logging.ERROR  # never below the root's level
    with pytest.raises(ValueError, match="log format must be 'json' or 'text'"):
        configure_logging(format="yaml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a log level: 'loud'"):
        configure_logging(format="json", levels={"mcp": "loud"})


def test_the_default_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert default_log_format(io.StringIO()) == "json"
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            assert default_log_format(terminal) == "text"
    finally:
        os.close(primary)
        os.close(secondary)


def test_records_carry_extra_fields_exceptions_on_one_line_and_the_span_they_were_written_in() -> None:
    formatter = JsonLogFormatter()
    logger = logging.getLogger("demo.formatter")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            record = logger.makeRecord(
                "demo.formatter", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info(),
                extra={"backend": "search", "odd": object(), "color_message": "\x1b[31m"},
            )  # fmt: skip
        line = formatter.format(record)
    assert "\n" not in line
    fields = orjson.loads(line)
    assert list(fields)[:4] == ["ts", "level", "logger", "message"]
    assert (fields["level"], fields["logger"], fields["message"]) == ("ERROR", "demo.formatter", "failed x")
    assert fields["backend"] == "search" and fields["odd"].startswith("<object object")
    assert "ValueError: boom\nsecond line" in fields["exc_info"] and "color_message" not in fields
    context = span.get_span_context()
    assert (fields["trace_id"], fields["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    outside = orjson.loads(formatter.format(logger.makeRecord("demo", logging.INFO, __file__, 1, "m", (), None)))
    assert "trace_id" not in outside


def test_extra_fields_cannot_pass_for_the_records_own() -> None:
    record = logging.getLogger("demo").makeRecord(
        "demo", logging.INFO, __file__, 1, "real", (), None,
        extra={"level": "CRITICAL", "logger": "root", "ts": "1970", "mcp": "not an access entry"},
    )  # fmt: skip
    fields = orjson.loads(JsonLogFormatter().format(record))
    assert (fields["level"], fields["logger"], fields["message"]) == ("INFO", "demo", "real")
    assert fields["ts"].startswith("20") and fields["mcp"] == "not an access entry"
    nested = logging.getLogger("demo").makeRecord(
        "demo", logging.INFO, __file__, 1, "kept", (), None, extra={"mcp": {"server": "search"}}
    )
    assert orjson.loads(JsonLogFormatter().format(nested))["mcp"] == {"server": "search"}  # not an access entry
    assert orjson.loads(JsonLogFormatter().format(nested))["message"] == "kept"
    assert list(fields)[:4] == ["ts", "level", "logger", "message"]


def test_an_access_record_is_its_fields_in_json_and_its_json_text_elsewhere() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("demo.access")
    logger.addHandler(keep := Keep())
    logger.setLevel(logging.INFO)
    try:
        entry = {"event": "mcp.request", "mcp.method": "tools/call", "mcp.target": "search", "http.status": 429}
        AccessLog(logger=logger).write({**entry, "jsonrpc.id": "x" * 10, "weird": {1: {2, 3}}})
    finally:
        logger.removeHandler(keep)
    (record,) = records
    assert orjson.loads(record.getMessage())["mcp.target"] == "search"  # text handlers still get the JSON line
    fields = orjson.loads(JsonLogFormatter().format(record))
    assert fields["message"] == "tools/call search 429" and fields["http.status"] == 429
    assert "mcp" not in fields and fields["weird"] == {"1": "{2, 3}"}
    assert orjson.loads(record.getMessage())["http.status"] == 429  # the formatter left the record as it was


def test_the_gateway_config_checks_log_format_and_levels() -> None:
    servers = '[[servers]]\nname = "demo"\napp = "examples.gateway.demo:server"\n'
    config = parse_config(f'[gateway]\nlog_format = "text"\n[gateway.log_levels]\n"mcp.server" = "debug"\n{servers}')
    assert (config.gateway.log_format, config.gateway.log_levels) == ("text", {"mcp.server": "debug"})
    assert parse_config(servers).gateway.log_format is None  # chosen at start-up: text on a terminal, else JSON
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[gateway]\nlog_format = "xml"\nlog_levels = {{ mcp = "loud" }}\n{servers}')
    found = {(p.path, p.line) for p in caught.value.problems}
    assert ("gateway.log_format", 2) in found
    assert any(path.startswith("gateway.log_levels") for path, _ in found)


def test_python_warnings_become_records() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        configure_logging(format="json", stream=stream)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("through logging", UserWarning, stacklevel=1)
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        logging.captureWarnings(False)
    (record,) = [r for r in _lines(stream) if r["logger"] == "py.warnings"]
    assert record["level"] == "WARNING" and "UserWarning: through logging" in record["message"]
