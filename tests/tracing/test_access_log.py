"""The access log: one JSON line per MCP request, with what an operator searches for and no secrets."""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import orjson
import pytest
from mcp import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ErrorCode, Principal, set_principal
from mcp_middleware.tracing import ACCESS_LOGGER, AccessLog, TracingMiddleware
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import build_server
from tests.support.waiting import until

from .conftest import RecordingDecider, Spans

pytestmark = pytest.mark.anyio

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"


class _Authenticates:
    """What an auth middleware leaves behind: a principal (holding its raw token) in the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            principal = Principal(subject="alice", client_id="cli", token=TOKEN, claims={"tenant": "acme", "pii": 1})
            set_principal(scope, principal)
        await self.app(scope, receive, send)


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]


@pytest.mark.parametrize("era", ERAS)
async def test_one_json_line_per_request_with_what_an_operator_needs(
    serve: Any, spans: Spans, caplog: pytest.LogCaptureFixture, era: Era
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    app = TracingMiddleware(
        _Authenticates(build_server().streamable_http_app()), tracer_provider=spans.provider, access_log=True
    )
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "private words"})
        await client.call_tool("failing", {"reason": "x"})

    await until(lambda: sum(1 for line in lines(caplog) if line["mcp.target"] == "failing") == 1)
    echo = next(line for line in lines(caplog) if line["mcp.target"] == "echo")
    assert echo["mcp.method"] == "tools/call"
    assert echo["http.status"] == 200
    assert echo["jsonrpc.error_code"] is None and echo["error.type"] is None
    assert echo["principal"] == {"subject": "alice", "client_id": "cli", "tenant": "acme"}
    assert 0 < echo["duration_ms"] < 5000
    span = await spans.named("tools/call echo")
    assert span.context is not None
    assert echo["trace_id"] == f"{span.context.trace_id:032x}" and echo["span_id"] == f"{span.context.span_id:016x}"
    failing = next(line for line in lines(caplog) if line["mcp.target"] == "failing")
    assert failing["error.type"] == "tool_error"
    # Every MCP exchange has its line; none carries a secret or an argument value.
    whole = "\n".join(r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER)
    assert TOKEN not in whole and "private words" not in whole and "pii" not in whole
    assert all(set(line) >= {"http.method", "http.status", "duration_ms", "decisions"} for line in lines(caplog))


async def test_argument_values_only_when_enabled(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    app = TracingMiddleware(build_server().streamable_http_app(), access_log=AccessLog(log_arguments=True))
    served: Served = serve(app)
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "visible"})
    await until(lambda: any(line["mcp.target"] == "echo" for line in lines(caplog)))
    echo = next(line for line in lines(caplog) if line["mcp.target"] == "echo")
    assert echo["mcp.arguments"] == {"text": "visible"}
    assert echo["trace_id"] is None  # no tracer provider configured: logs still work, without ids


async def test_refusals_are_logged_with_the_error_code_and_the_deciding_middleware(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    refusing = RecordingDecider(
        build_server().streamable_http_app(),
        [("ratelimit", "deny", {"policy": "burst", "retry_after_ms": 250})],
        refuse_with=(429, ErrorCode.RATE_LIMITED),
    )
    served: Served = serve(TracingMiddleware(refusing, access_log=True))
    async with httpx2.AsyncClient() as http:
        malformed = await http.post(served.mcp_url, content=b"{nope", headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    async with connect(served.mcp_url, "modern") as client:
        with pytest.raises(MCPError):
            await client.call_tool("echo", {"text": "a"})
    await until(lambda: any(line.get("mcp.target") == "echo" for line in lines(caplog)))
    [bad] = [line for line in lines(caplog) if line["http.status"] == 400]
    assert bad["jsonrpc.error_code"] == -32700 and bad["decisions"] == [
        {"component": "core", "outcome": "rejected", "status": 400, "code": -32700}
    ]
    refused = next(line for line in lines(caplog) if line.get("mcp.target") == "echo")
    assert refused["http.status"] == 429 and refused["jsonrpc.error_code"] == ErrorCode.RATE_LIMITED
    assert refused["decisions"] == [
        {"component": "ratelimit", "outcome": "deny", "policy": "burst", "retry_after_ms": 250}
    ]


async def test_no_line_when_the_logger_is_off(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=ACCESS_LOGGER)
    served: Served = serve(TracingMiddleware(build_server().streamable_http_app(), access_log=True))
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "a"})
    assert lines(caplog) == []
