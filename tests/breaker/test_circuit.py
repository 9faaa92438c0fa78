"""The circuit in front of real servers: it opens, fails fast, half-opens with a probe budget, and closes."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp import MCPError

from mcp_middleware.breaker import (
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    CircuitBreakerMiddleware,
    Classification,
    FailureClassifier,
    Fault,
    StateChange,
)
from mcp_middleware.core import ErrorCode, JsonRpcCode, McpRequest, ResponseOutcome
from tests.conftest import ERAS, Era, Served, connect
from tests.support.decisions import DecisionRecorder
from tests.support.waiting import held_within

from .backends import BackendLog, build_backend, modern_call, post_modern, settled

pytestmark = pytest.mark.anyio


def guarded(log: BackendLog, **options: Any) -> CircuitBreakerMiddleware:
    return CircuitBreakerMiddleware(build_backend(log).streamable_http_app(), **options)


async def reaches(app: CircuitBreakerMiddleware, state: BreakerState, key: str = "/mcp") -> None:
    """Wait until breaker `key` is in `state` (it judges a call when the response *ends*, which
    can be a moment after the client read the JSON-RPC response from an SSE stream)."""
    assert await held_within(lambda: app.registry.get(key).state is state), app.registry.snapshot()


def trip_after(failures: int, open_for: float = 30.0, **policy: Any) -> BreakerPolicy:
    return BreakerPolicy(consecutive_failures=failures, failure_rate=None, open_for=open_for, jitter=0.0, **policy)


@pytest.mark.parametrize("era", ERAS)
async def test_open_circuit_fails_fast_with_503_and_retry_after(era: Era, serve: Any) -> None:
    log = BackendLog(fail_times=1000)
    app = guarded(log, policy=trip_after(2, open_for=30.0))
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await settled(app.registry, 1)  # the handshake's success is judged before the failures
        for _ in range(2):  # the backend's own JSON-RPC internal errors pass through unchanged
            with pytest.raises(MCPError) as failed:
                await client.call_tool("flaky", {"text": "x"})
            assert failed.value.code == JsonRpcCode.INTERNAL_ERROR
        await reaches(app, BreakerState.OPEN)
        started = time.perf_counter()
        with pytest.raises(MCPError) as refused:
            await client.call_tool("flaky", {"text": "x"})
        elapsed = time.perf_counter() - started
    assert refused.value.code == ErrorCode.UNAVAILABLE
    assert refused.value.message == "Backend unavailable (circuit is open); retry in 30 s"
    assert refused.value.error.data["breaker"] == "/mcp"
    assert refused.value.error.data["state"] == "open"
    assert 29_000 < refused.value.error.data["retryAfterMs"] <= 30_000
    assert log.calls["flaky"] == 2  # the third call never reached the backend
    assert elapsed < 1.0

    # What any HTTP client sees: 503, Retry-After = time left open, a JSON-RPC error with the request id.
    response = await post_modern(served.mcp_url, "echo", {"text": "hi"}, request_id=41)
    assert response.status_code == 503
    assert response.headers["retry-after"] in ("29", "30")
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == 41 and body["error"]["code"] == ErrorCode.UNAVAILABLE
    assert app.registry.open_keys() == ["/mcp"]


@pytest.mark.parametrize("era", ERAS)
async def test_half_open_probe_closes_the_circuit_and_a_failed_probe_backs_off(era: Era, serve: Any) -> None:
    log = BackendLog(fail_times=2)
    changes: list[StateChange] = []
    app = guarded(log, policy=trip_after(1, open_for=0.3, backoff=2.0), on_state_change=changes.append)
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()  # else the client lists them itself after the first good call
        with pytest.raises(MCPError):
            await client.call_tool("flaky", {"text": "a"})  # failure 1: opens for 0.3 s
        await reaches(app, BreakerState.OPEN)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("flaky", {"text": "a"})
        assert refused.value.code == ErrorCode.UNAVAILABLE
        await anyio.sleep(0.35)
        with pytest.raises(MCPError) as probe:
            await client.call_tool("flaky", {"text": "a"})  # the probe fails: open again, for 0.6 s
        assert probe.value.code == JsonRpcCode.INTERNAL_ERROR
        await reaches(app, BreakerState.OPEN)
        assert 0.5 < app.registry.get("/mcp").retry_after() <= 0.6
        await anyio.sleep(0.65)
        result = await client.call_tool("flaky", {"text": "a"})  # the probe succeeds: closed
        assert result.content[0].text == "recovered: a"  # type: ignore[union-attr]
        await reaches(app, BreakerState.CLOSED)
        assert (await client.call_tool("echo", {"text": "b"})).content[0].text == "b"  # type: ignore[union-attr]
    states = [(c.state.value, c.reason, round(c.open_for, 3)) for c in changes]
    assert states == [
        ("open", "consecutive_failures", 0.3),
        ("half_open", "open_elapsed", 0.0),
        ("open", "probe_failed", 0.6),
        ("half_open", "open_elapsed", 0.0),
        ("closed", "probes_succeeded", 0.0),
    ]
    snapshot = app.registry.snapshot()["/mcp"]
    assert snapshot.state is BreakerState.CLOSED and snapshot.open_level == 0 and snapshot.rejected == 1


@pytest.mark.parametrize("era", ERAS)
async def test_half_open_admits_only_the_probe_budget(era: Era, serve: Any) -> None:
    log = BackendLog(fail_times=1)
    app = guarded(log, policy=trip_after(1, open_for=0.2, half_open_probes=2, probes_to_close=2))
    served: Served = serve(app)
    outcomes: list[str] = []
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()  # else the client lists them itself after a call (a request too)
        with pytest.raises(MCPError):
            await client.call_tool("flaky", {"text": "a"})
        await reaches(app, BreakerState.OPEN)
        await anyio.sleep(0.25)

        async def call() -> None:
            try:
                result = await client.call_tool("stream", {"steps": 4})  # ~0.2 s each
                outcomes.append(result.content[0].text)  # type: ignore[union-attr]
            except MCPError as refused:
                outcomes.append(f"refused {refused.code} {refused.error.data['state']}")

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
    assert sorted(outcomes) == [f"refused {ErrorCode.UNAVAILABLE} half_open"] * 3 + ["streamed 4"] * 2
    await reaches(app, BreakerState.CLOSED)  # two probes succeeded


@pytest.mark.parametrize("era", ERAS)
async def test_client_errors_and_tool_errors_do_not_trip(era: Era, serve: Any) -> None:
    log = BackendLog()
    app = guarded(log, policy=trip_after(1))
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        for _ in range(2):
            result = await client.call_tool("failing", {"reason": "nope"})  # isError: true
            assert result.is_error
            try:  # invalid arguments: a tool error or -32602, depending on the SDK's era
                invalid = (await client.call_tool("echo", {"wrong": 1})).is_error
            except MCPError as bad:
                invalid = bad.code == JsonRpcCode.INVALID_PARAMS
            assert invalid
        assert (await client.call_tool("echo", {"text": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]
    async with httpx2.AsyncClient(timeout=10) as http:
        call = modern_call("echo", {"text": "x"})
        unknown = orjson.loads(call["content"])
        unknown["method"] = "tools/unknown"
        headers = {**call["headers"], "mcp-method": "tools/unknown"}
        for _ in range(3):
            response = await http.post(served.mcp_url, content=orjson.dumps(unknown), headers=headers)
            assert response.status_code == 404 and response.json()["error"]["code"] == JsonRpcCode.METHOD_NOT_FOUND
        # Bad input the core refuses never reaches the breaker.
        response = await http.post(served.mcp_url, content=b"{not json", headers=call["headers"])
    assert response.status_code == 400 and response.json()["error"]["code"] == JsonRpcCode.PARSE_ERROR
    snapshot = app.registry.snapshot()["/mcp"]
    assert snapshot.state is BreakerState.CLOSED and snapshot.window_failures == 0


@pytest.mark.parametrize("era", ERAS)
async def test_tool_errors_count_when_configured(era: Era, serve: Any) -> None:
    log = BackendLog()
    app = guarded(log, policy=trip_after(2), classifier=FailureClassifier(count_tool_errors=True))
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await settled(app.registry, 1)
        for _ in range(2):
            assert (await client.call_tool("failing", {"reason": "nope"})).is_error
        await reaches(app, BreakerState.OPEN)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("failing", {"reason": "nope"})
    assert refused.value.code == ErrorCode.UNAVAILABLE
    assert log.calls["failing"] == 2


@pytest.mark.parametrize("era", ERAS)
async def test_per_tool_breakers_isolate_a_failing_tool(era: Era, serve: Any) -> None:
    log = BackendLog(fail_times=1000)
    app = guarded(log, policy=trip_after(1), per_target={"tools/call:flaky": trip_after(2)})
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        for _ in range(2):
            with pytest.raises(MCPError):
                await client.call_tool("flaky", {"text": "x"})
        await reaches(app, BreakerState.OPEN, "/mcp tools/call:flaky")
        with pytest.raises(MCPError) as refused:
            await client.call_tool("flaky", {"text": "x"})
        assert refused.value.error.data["breaker"] == "/mcp tools/call:flaky"
        # The rest of the backend is unaffected.
        assert (await client.call_tool("echo", {"text": "fine"})).content[0].text == "fine"  # type: ignore[union-attr]
    snapshot = app.registry.snapshot()
    assert snapshot["/mcp tools/call:flaky"].state is BreakerState.OPEN
    assert snapshot["/mcp"].state is BreakerState.CLOSED


async def test_the_number_of_breakers_is_bounded(serve: Any) -> None:
    log = BackendLog()
    registry = BreakerRegistry(max_breakers=2)
    app = guarded(log, registry=registry, per_target=["tools/call:*"])
    served: Served = serve(app)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("echo", {"text": "x"}),
        ("lookup", {"key": "a"}),
        ("set_flag", {"value": True}),
    ]
    for n, (tool, arguments) in enumerate(calls):
        assert (await post_modern(served.mcp_url, tool, arguments, request_id=n)).status_code == 200
    assert len(registry) == 2
    assert set(registry.snapshot()) == {"/mcp tools/call:lookup", "/mcp tools/call:set_flag"}


async def test_decisions_are_recorded(serve: Any) -> None:
    log = BackendLog(fail_times=1000)
    recorder = DecisionRecorder(guarded(log, policy=trip_after(1)))
    served: Served = serve(recorder)
    await post_modern(served.mcp_url, "echo", {"text": "x"}, request_id=1)
    await post_modern(served.mcp_url, "flaky", {"text": "x"}, request_id=2)
    await post_modern(served.mcp_url, "echo", {"text": "x"}, request_id=3)
    decisions = recorder.of("breaker")
    assert decisions[0] == ("allow", {"state": "closed", "key": "/mcp"})
    assert decisions[1] == ("allow", {"state": "closed", "key": "/mcp"})
    assert decisions[2] == ("failure", {"key": "/mcp", "reason": "jsonrpc_-32603", "attempt": 1})
    outcome, attributes = decisions[3]
    assert outcome == "open" and attributes["state"] == "open" and attributes["key"] == "/mcp"
    assert attributes["retry_after_ms"] > 0


async def test_readiness_view_and_operator_overrides(serve: Any) -> None:
    registry = BreakerRegistry()
    app = guarded(BackendLog(), registry=registry)
    served: Served = serve(app)
    assert (await post_modern(served.mcp_url, "echo", {"text": "x"})).status_code == 200
    registry.get("/mcp").force_open(60.0)
    assert registry.open_keys() == ["/mcp"]
    response = await post_modern(served.mcp_url, "echo", {"text": "x"})
    assert response.status_code == 503 and response.headers["retry-after"] == "60"
    registry.get("/mcp").reset()
    assert (await post_modern(served.mcp_url, "echo", {"text": "x"})).status_code == 200


async def test_notifications_and_other_paths_pass_through(serve: Any) -> None:
    registry = BreakerRegistry()
    app = guarded(BackendLog(), registry=registry)
    served: Served = serve(app)
    registry.get("/mcp").force_open(60.0)
    call = modern_call("echo", {"text": "x"})
    notification = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, content=notification, headers=call["headers"])
        assert response.status_code == 202  # not a request: nothing to refuse
        elsewhere = await http.get(f"{served.base}/health")
    assert elsewhere.status_code == 404  # not MCP: untouched by the breaker


async def test_the_classifier_is_replaceable(serve: Any) -> None:
    def slow_is_failure(request: McpRequest, outcome: ResponseOutcome, fault: Fault | None) -> Classification:
        """A team's own rule: an answer slower than 1 s counts against the backend."""
        return Classification.FAILURE if fault is not None or outcome.duration > 1.0 else Classification.SUCCESS

    log = BackendLog()
    app = guarded(log, policy=trip_after(1), classifier=slow_is_failure)
    served: Served = serve(app)
    assert (await post_modern(served.mcp_url, "echo", {"text": "quick"})).status_code == 200
    assert app.registry.get("/mcp").state is BreakerState.CLOSED
    assert (await post_modern(served.mcp_url, "stream", {"steps": 30})).status_code == 200  # ≥ 1.5 s
    assert await held_within(lambda: app.registry.get("/mcp").state is BreakerState.OPEN)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"timeouts": {"*": 0}}, "timeouts must be positive"),
        ({"timeouts": {"tools/call:": 1.0}}, "empty target"),
        ({"per_target": [""]}, "empty selector"),
        ({"registry": None, "policy": None, "exclude": [":x"]}, "has no method"),
    ],
)
def test_nonsense_options_are_refused_at_startup(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        CircuitBreakerMiddleware(build_backend(BackendLog()).streamable_http_app(), **options)
