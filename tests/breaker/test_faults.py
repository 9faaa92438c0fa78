"""Timeouts and injected faults: hangs, crashes, dropped connections and broken SSE streams cost the
caller a JSON-RPC error (never a silent close), count against the backend, and leave no task behind."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.breaker import BreakerPolicy, BreakerState, CircuitBreakerMiddleware, Classification, Fault
from mcp_middleware.core import ErrorCode, McpRequest, ResponseOutcome
from tests.conftest import ERAS, Era, Served, connect
from tests.support.sse import sse_messages
from tests.support.waiting import held_within

from .backends import (
    BackendLog,
    FaultInjector,
    always,
    build_backend,
    modern_call,
    post_modern,
    settled,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 0.4


def faulty(log: BackendLog, faults: dict[str, Any] | None = None, **options: Any) -> CircuitBreakerMiddleware:
    inner = FaultInjector(build_backend(log).streamable_http_app(), faults or {})
    options.setdefault("timeouts", {"*": 5.0, "tools/call:*hang": TIMEOUT})
    return CircuitBreakerMiddleware(inner, **options)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("tool", ["hang", "quiet_hang"])
async def test_a_hung_tool_is_cancelled_and_answered_with_a_timeout_error(era: Era, tool: str, serve: Any) -> None:
    log = BackendLog()
    app = faulty(log)
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "warm"})
        await client.list_tools()
        baseline = served.tasks()
        started = time.perf_counter()
        with pytest.raises(MCPError) as timed_out:
            await client.call_tool(tool, {})
        elapsed = time.perf_counter() - started
        assert timed_out.value.code == ErrorCode.TIMEOUT
        assert timed_out.value.message == f"Backend did not answer within {TIMEOUT:g} s"
        assert timed_out.value.error.data == {"timeoutMs": int(TIMEOUT * 1000)}
        assert TIMEOUT <= elapsed < TIMEOUT + 1.0
        # The tool itself was cancelled (legacy: through notifications/cancelled to its session).
        assert await held_within(lambda: f"{tool} cancelled" in log.events), log.events
        assert await held_within(lambda: served.tasks() <= baseline), (served.tasks(), baseline)
        # The connection stays usable.
        assert (await client.call_tool("echo", {"text": "after"})).content[0].text == "after"  # type: ignore[union-attr]
    assert app.registry.snapshot()["/mcp"].window_failures == 1


async def test_timeout_before_anything_was_sent_is_a_504(serve: Any) -> None:
    log = BackendLog()
    served: Served = serve(faulty(log))
    response = await post_modern(served.mcp_url, "quiet_hang", {}, request_id=9)
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {
            "code": ErrorCode.TIMEOUT,
            "message": "Backend did not answer within 0.4 s",
            "data": {"timeoutMs": 400},
        },
    }


async def test_timeout_after_an_sse_response_started_ends_it_with_an_error_event(serve: Any) -> None:
    log = BackendLog()
    served: Served = serve(faulty(log))
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, **modern_call("hang", {}, request_id=5, progress=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = sse_messages(response.text)
    assert messages[0]["method"] == "notifications/progress"  # what the tool sent before it hung
    assert messages[-1] == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {
            "code": ErrorCode.TIMEOUT,
            "message": "Backend did not answer within 0.4 s",
            "data": {"timeoutMs": 400},
        },
    }
    assert response.text.endswith("\r\n\r\n")  # a complete event, then the stream ended cleanly


@pytest.mark.parametrize("era", ERAS)
async def test_a_crash_before_responding_is_a_bad_gateway(era: Era, serve: Any) -> None:
    log = BackendLog()
    served: Served = serve(faulty(log, {"echo": always("raise")}))
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as failed:
            await client.call_tool("echo", {"text": "x"})
    assert failed.value.code == ErrorCode.BAD_GATEWAY
    assert failed.value.message == "Backend failed while handling the request"  # no stack trace, no detail


@pytest.mark.parametrize("era", ERAS)
async def test_a_response_that_never_comes_is_a_bad_gateway(era: Era, serve: Any) -> None:
    log = BackendLog()
    served: Served = serve(faulty(log, {"echo": always("vanish")}))
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as failed:
            await client.call_tool("echo", {"text": "x"})
    assert failed.value.code == ErrorCode.BAD_GATEWAY
    assert failed.value.message == "Backend closed the response without answering"


@pytest.mark.parametrize("era", ERAS)
async def test_an_sse_stream_that_breaks_mid_way_ends_with_an_error_event(era: Era, serve: Any) -> None:
    log = BackendLog()
    served: Served = serve(faulty(log, {"stream": always("break")}))
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as failed:
            await client.call_tool("stream", {"steps": 3}, progress_callback=on_progress)
        assert failed.value.code == ErrorCode.BAD_GATEWAY
        assert reported == [1]  # what arrived before the break was delivered as it came
        assert (await client.call_tool("echo", {"text": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]


async def test_a_broken_sse_stream_seen_on_the_wire(serve: Any) -> None:
    log = BackendLog()
    served: Served = serve(faulty(log, {"stream": always("break")}))
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, **modern_call("stream", {"steps": 3}, request_id=8, progress=True))
    assert response.status_code == 200
    messages = sse_messages(response.text)
    assert [m.get("method") for m in messages] == ["notifications/progress", None]
    assert messages[-1]["id"] == 8 and messages[-1]["error"]["code"] == ErrorCode.BAD_GATEWAY


async def test_a_json_body_that_breaks_off_drops_the_connection(serve: Any) -> None:
    """Half a JSON body cannot be completed honestly: the client sees the connection fail, not bad JSON."""
    log = BackendLog()
    app = faulty(log, {"echo": always("break_json")})
    served: Served = serve(app)
    with pytest.raises(httpx2.TransportError):
        await post_modern(served.mcp_url, "echo", {"text": "x"})
    assert await held_within(lambda: app.registry.snapshot()["/mcp"].window_failures == 1)
    assert (await post_modern(served.mcp_url, "lookup", {"key": "a"})).status_code == 200  # the server lives on


async def test_a_classifier_that_raises_counts_as_neutral(serve: Any) -> None:
    def broken(request: McpRequest, outcome: ResponseOutcome, fault: Fault | None) -> Classification:
        raise RuntimeError("bug in a custom classifier")

    policy = BreakerPolicy(consecutive_failures=1, failure_rate=None, open_for=0.1, jitter=0.0)
    app = faulty(BackendLog(), policy=policy, classifier=broken)
    served: Served = serve(app)
    app.registry.get("/mcp").force_open(0.1)
    await anyio.sleep(0.15)
    for n in range(3):  # the probe slot is freed every time: no request is refused
        assert (await post_modern(served.mcp_url, "echo", {"text": "x"}, request_id=n)).status_code == 200
    assert app.registry.get("/mcp").state is BreakerState.HALF_OPEN


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("fault", ["raise", "vanish", "break", "hang"])
async def test_every_fault_counts_against_the_backend(era: Era, fault: str, serve: Any) -> None:
    log = BackendLog()
    policy = BreakerPolicy(consecutive_failures=2, failure_rate=None, open_for=30.0, jitter=0.0)
    app = faulty(log, {"stream": always(fault)} if fault != "hang" else {}, policy=policy)
    served: Served = serve(app)
    tool, arguments = ("hang", {}) if fault == "hang" else ("stream", {"steps": 1})
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        await settled(app.registry, 2)  # handshake and list judged (successes) before the failures
        for _ in range(2):
            with pytest.raises(MCPError) as failed:
                await client.call_tool(tool, arguments)
            assert failed.value.code in (ErrorCode.BAD_GATEWAY, ErrorCode.TIMEOUT)
        assert await held_within(lambda: app.registry.get("/mcp").state is BreakerState.OPEN)
        with pytest.raises(MCPError) as refused:
            await client.call_tool(tool, arguments)
        assert refused.value.code == ErrorCode.UNAVAILABLE


async def test_a_client_that_leaves_says_nothing_about_the_backend(serve: Any) -> None:
    log = BackendLog()
    policy = BreakerPolicy(consecutive_failures=1, failure_rate=None)
    app = faulty(log, policy=policy, timeouts={"*": 5.0})
    served: Served = serve(app)
    async with (
        httpx2.AsyncClient(timeout=10) as http,
        http.stream("POST", served.mcp_url, **modern_call("hang", {}, progress=True)) as response,
    ):
        async for line in response.aiter_lines():
            if "notifications/progress" in line:
                break  # leave mid-stream
    assert await held_within(lambda: "hang cancelled" in log.events), log.events
    snapshot = app.registry.snapshot()["/mcp"]
    assert snapshot.state is BreakerState.CLOSED and snapshot.window_calls == 0
