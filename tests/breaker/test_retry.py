"""Safe retries: only what is safe to repeat, only before any byte reached the client, a bounded number of times."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import MCPError

from mcp_middleware.breaker import CircuitBreakerMiddleware, RetryPolicy
from mcp_middleware.core import ErrorCode
from tests.conftest import ERAS, Era, Served, connect
from tests.support.decisions import DecisionRecorder
from tests.support.waiting import held_within

from .backends import BackendLog, FaultInjector, always, build_backend, first

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


def retrying(
    log: BackendLog, faults: dict[str, Any], retry: RetryPolicy = FAST, **options: Any
) -> tuple[DecisionRecorder, FaultInjector]:
    injector = FaultInjector(build_backend(log).streamable_http_app(), faults)
    return DecisionRecorder(CircuitBreakerMiddleware(injector, retry=retry, **options)), injector


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize(
    ("tool", "arguments", "text"), [("lookup", {"key": "a"}, "alpha"), ("set_flag", {"value": True}, "flag=True")]
)
async def test_tools_the_backend_declares_safe_are_retried(
    era: Era, tool: str, arguments: dict[str, Any], text: str, serve: Any
) -> None:
    log = BackendLog()
    recorder, injector = retrying(log, {tool: first(2, "raise")})
    served: Served = serve(recorder)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()  # the breaker learns the annotations from this response, once it has ended
        middleware = recorder.app
        assert isinstance(middleware, CircuitBreakerMiddleware)
        assert await held_within(lambda: middleware.registry.is_repeatable("/mcp", tool))
        result = await client.call_tool(tool, arguments)
    assert result.content[0].text == text  # type: ignore[union-attr]
    assert injector.calls[tool] == 3 and log.calls[tool] == 1  # two failed before reaching the tool
    retries = [attributes["attempt"] for outcome, attributes in recorder.of("breaker") if outcome == "retry"]
    assert retries == [2, 3]


@pytest.mark.parametrize("era", ERAS)
async def test_tools_not_declared_safe_are_never_retried(era: Era, serve: Any) -> None:
    log = BackendLog()
    recorder, injector = retrying(log, {"echo": first(1, "raise")})
    served: Served = serve(recorder)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        with pytest.raises(MCPError) as failed:
            await client.call_tool("echo", {"text": "x"})
    assert failed.value.code == ErrorCode.BAD_GATEWAY
    assert injector.calls["echo"] == 1
    assert "retry" not in [outcome for outcome, _ in recorder.of("breaker")]


async def test_without_a_tools_list_nothing_is_known_safe(serve: Any) -> None:
    log = BackendLog()
    recorder, injector = retrying(log, {"lookup": first(1, "raise")})
    served: Served = serve(recorder)
    async with connect(served.mcp_url, "modern") as client:
        with pytest.raises(MCPError) as failed:
            await client.call_tool("lookup", {"key": "a"})
    assert failed.value.code == ErrorCode.BAD_GATEWAY and injector.calls["lookup"] == 1


@pytest.mark.parametrize("era", ERAS)
async def test_allow_listed_tools_and_list_methods_are_retried(era: Era, serve: Any) -> None:
    log = BackendLog()
    retry = RetryPolicy(attempts=2, backoff=0.01, allow=("tools/call:echo",), learn_annotations=False)
    recorder, injector = retrying(log, {"echo": first(1, "vanish"), "tools/list": first(1, "raise")}, retry)
    served: Served = serve(recorder)
    async with connect(served.mcp_url, era) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= {"echo", "lookup"}
        assert (await client.call_tool("echo", {"text": "again"})).content[0].text == "again"  # type: ignore[union-attr]
    assert injector.calls["echo"] == 2 and log.calls["echo"] == 1
    assert injector.calls["tools/list"] >= 2


@pytest.mark.parametrize("era", ERAS)
async def test_attempts_are_bounded(era: Era, serve: Any) -> None:
    log = BackendLog()
    recorder, injector = retrying(log, {"lookup": always("raise")})
    served: Served = serve(recorder)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        middleware = recorder.app
        assert isinstance(middleware, CircuitBreakerMiddleware)
        assert await held_within(lambda: middleware.registry.is_repeatable("/mcp", "lookup"))
        with pytest.raises(MCPError) as failed:
            await client.call_tool("lookup", {"key": "a"})
    assert failed.value.code == ErrorCode.BAD_GATEWAY
    assert injector.calls["lookup"] == 3
    failures = [a for outcome, a in recorder.of("breaker") if outcome == "failure" and a["reason"] == "exception"]
    assert [a["attempt"] for a in failures] == [1, 2, 3]  # every attempt counted against the backend


@pytest.mark.parametrize("era", ERAS)
async def test_no_retry_once_the_response_has_started(era: Era, serve: Any) -> None:
    log = BackendLog()
    retry = RetryPolicy(attempts=3, backoff=0.01, allow=("tools/call:stream",))
    recorder, injector = retrying(log, {"stream": always("break")}, retry)
    served: Served = serve(recorder)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        with pytest.raises(MCPError) as failed:
            await client.call_tool("stream", {"steps": 2})
    assert failed.value.code == ErrorCode.BAD_GATEWAY
    assert injector.calls["stream"] == 1


@pytest.mark.parametrize("era", ERAS)
async def test_a_timeout_is_retried_only_if_nothing_was_sent(era: Era, serve: Any) -> None:
    log = BackendLog()
    retry = RetryPolicy(attempts=2, backoff=0.01, allow=("tools/call:quiet_hang",))
    recorder, _ = retrying(log, {}, retry, timeouts={"*": 5.0, "tools/call:quiet_hang": 0.3})
    served: Served = serve(recorder)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        with pytest.raises(MCPError) as failed:
            await client.call_tool("quiet_hang", {})
    assert failed.value.code == ErrorCode.TIMEOUT
    retries = [a["reason"] for outcome, a in recorder.of("breaker") if outcome == "retry"]
    if era == "modern":  # nothing is sent until the tool ends or notifies: the timeout is retried
        assert retries == ["timeout"]
        assert await held_within(lambda: log.events.count("quiet_hang cancelled") == 2)
        assert log.events.count("quiet_hang started") == 2
    else:  # a legacy server starts its SSE response at once: too late to retry
        assert retries == []
        assert log.events.count("quiet_hang started") == 1


def test_retry_policy_validates_and_backs_off() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    policy = RetryPolicy(backoff=0.1, max_backoff=0.3, jitter=0.5)
    assert [policy.delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert policy.delay(1, 0.0) == pytest.approx(0.05) and policy.delay(1, 0.999) == pytest.approx(0.1499)
