"""Failure classification: what counts against a backend, read from the response in both eras, JSON and SSE."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import MCPError

from mcp_middleware.breaker import CircuitBreakerMiddleware, Classification, FailureClassifier, Fault
from mcp_middleware.core import Era as CoreEra
from mcp_middleware.core import McpRequest, RequestKind, ResponseOutcome
from tests.conftest import Era, Served, connect
from tests.support.waiting import held_within

from .backends import BackendLog, build_backend

SSE = "text/event-stream"

pytestmark = pytest.mark.anyio

REQUEST = McpRequest(RequestKind.REQUEST, CoreEra.MODERN, "2026-07-28", method="tools/call", id=1)


def outcome(status: int | None = 200, **fields: Any) -> ResponseOutcome:
    fields.setdefault("content_type", "application/json")
    return ResponseOutcome(status, fields.pop("content_type"), 100, 0.01, fields.pop("complete", True), **fields)


def error(code: Any) -> dict[str, Any]:
    return {"code": code, "message": "m"}


RESULT = {"content": [{"type": "text", "text": "ok"}]}
TOOL_ERROR = {"content": [{"type": "text", "text": "boom"}], "isError": True}

CASES = [
    ("a result", outcome(result=RESULT), None, Classification.SUCCESS),
    ("a tool error (isError)", outcome(result=TOOL_ERROR), None, Classification.SUCCESS),
    ("202 for a notification", outcome(202, content_type=None), None, Classification.SUCCESS),
    ("a body too large to inspect", outcome(truncated=True), None, Classification.SUCCESS),
    ("timeout", outcome(None, content_type=None, complete=False), Fault.TIMEOUT, Classification.FAILURE),
    ("exception", outcome(None, content_type=None, complete=False), Fault.EXCEPTION, Classification.FAILURE),
    (
        "dropped mid-stream",
        outcome(content_type="text/event-stream", complete=False),
        Fault.DROPPED,
        Classification.FAILURE,
    ),
    ("no response at all", outcome(None, content_type=None, complete=False), None, Classification.FAILURE),
    ("HTTP 500", outcome(500, error=error(-32603)), None, Classification.FAILURE),
    ("HTTP 502 without a body", outcome(502, content_type="text/plain"), None, Classification.FAILURE),
    ("HTTP 503 busy", outcome(503, error=error(-32603)), None, Classification.FAILURE),
    ("-32603 inside a 200", outcome(error=error(-32603)), None, Classification.FAILURE),
    ("-32603 inside SSE", outcome(content_type="text/event-stream", error=error(-32603)), None, Classification.FAILURE),
    ("-32000 server error", outcome(error=error(-32000)), None, Classification.FAILURE),
    ("-32001 request timeout", outcome(error=error(-32001)), None, Classification.FAILURE),
    ("our -32016 from a nested breaker", outcome(504, error=error(-32016)), None, Classification.FAILURE),
    ("an error without a code", outcome(error={"message": "?"}), None, Classification.FAILURE),
    ("SSE that ended without the response", outcome(content_type="text/event-stream"), None, Classification.FAILURE),
    ("HTTP 400 -32602", outcome(400, error=error(-32602)), None, Classification.NEUTRAL),
    ("HTTP 404 -32601", outcome(404, error=error(-32601)), None, Classification.NEUTRAL),
    ("HTTP 401", outcome(401, error=error(-32012)), None, Classification.NEUTRAL),
    ("HTTP 403", outcome(403, content_type="text/plain"), None, Classification.NEUTRAL),
    ("HTTP 429", outcome(429, error=error(-32014)), None, Classification.NEUTRAL),
    ("-32600 inside a 200", outcome(error=error(-32600)), None, Classification.NEUTRAL),
    ("-32601 inside SSE", outcome(content_type="text/event-stream", error=error(-32601)), None, Classification.NEUTRAL),
    ("-32602 inside a 200", outcome(error=error(-32602)), None, Classification.NEUTRAL),
    ("-32700", outcome(400, error=error(-32700)), None, Classification.NEUTRAL),
    ("-32002 resource not found", outcome(error=error(-32002)), None, Classification.NEUTRAL),
    ("-32042 URL elicitation", outcome(error=error(-32042)), None, Classification.NEUTRAL),
    ("-32800 cancelled", outcome(error=error(-32800)), None, Classification.NEUTRAL),
    ("an application code", outcome(error=error(42)), None, Classification.NEUTRAL),
]


@pytest.mark.parametrize(("what", "seen", "fault", "verdict"), CASES, ids=[c[0] for c in CASES])
def test_default_classification(what: str, seen: ResponseOutcome, fault: Fault | None, verdict: Classification) -> None:
    assert FailureClassifier()(REQUEST, seen, fault) is verdict


def test_tool_errors_and_extra_codes_can_be_made_failures() -> None:
    strict = FailureClassifier(count_tool_errors=True, extra_failure_codes=(42,))
    assert strict(REQUEST, outcome(result=TOOL_ERROR), None) is Classification.FAILURE
    assert strict(REQUEST, outcome(error=error(42)), None) is Classification.FAILURE
    assert strict(REQUEST, outcome(result=RESULT), None) is Classification.SUCCESS


MODES = [("modern", False), ("legacy", False), ("legacy", True)]


@pytest.mark.parametrize(("era", "json_response"), MODES, ids=["modern", "legacy-sse", "legacy-json"])
async def test_classification_on_the_wire(era: Era, json_response: bool, serve: Any) -> None:
    """The same verdicts from real responses: JSON or SSE bodies, in both eras."""
    log = BackendLog(fail_times=1000)
    app = CircuitBreakerMiddleware(build_backend(log).streamable_http_app(json_response=json_response))
    served: Served = serve(app)

    async def judged(calls: int, failures: int) -> None:
        def seen() -> tuple[int, int]:
            snapshot = app.registry.snapshot()["/mcp"]
            return snapshot.window_calls, snapshot.window_failures

        assert await held_within(lambda: seen() == (calls, failures)), seen()

    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        base = 2  # the handshake (legacy `initialize`, modern `server/discover`) and `tools/list`
        await judged(base, 0)
        await client.call_tool("echo", {"text": "x"})
        await judged(base + 1, 0)
        assert (await client.call_tool("failing", {"reason": "r"})).is_error
        await judged(base + 2, 0)  # a tool error is the backend working
        with pytest.raises(MCPError):
            await client.call_tool("flaky", {"text": "x"})
        await judged(base + 3, 1)  # -32603 in a JSON body (legacy: inside a 200 SSE stream)
        with pytest.raises(MCPError):
            await client.call_tool("stream_fail", {}, progress_callback=_ignore_progress)
        await judged(base + 4, 2)  # -32603 after progress: the SSE case in both eras (JSON when json_response)


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None
