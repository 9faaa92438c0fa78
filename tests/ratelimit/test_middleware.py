"""RateLimitMiddleware in front of a real server: what agents see when they are limited, in both eras."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx2
import orjson
import pytest
from mcp import MCPError
from starlette.types import ASGIApp

from mcp_middleware.core import ErrorCode
from mcp_middleware.core.decisions import Decision
from mcp_middleware.ratelimit import BucketPolicy, QuotaPolicy, RateLimitMiddleware
from tests.conftest import ERAS, Era, connect
from tests.ratelimit.wire import call_tool, error_of
from tests.servers import PROGRESS_INTERVAL, build_server
from tests.support.decisions import DecisionRecorder
from tests.support.requests import LEGACY

pytestmark = pytest.mark.anyio

SLOW = 0.001
"""A refill rate slow enough that nothing refills during a test (one token per 1000 s)."""


def limited(**options: Any) -> ASGIApp:
    return RateLimitMiddleware(build_server().streamable_http_app(), **{"headers": True, **options})


@pytest.mark.parametrize("era", ERAS)
async def test_a_limited_call_arrives_as_mcp_error_with_retry_delay_and_policy(era: Era, serve: Any) -> None:
    served = serve(limited(policies=[BucketPolicy("echo-burst", selector="tools/call:echo", rate=SLOW, capacity=2)]))
    async with connect(served.mcp_url, era) as client:
        for n in range(2):
            assert (await client.call_tool("echo", {"text": f"call {n}"})).content[0].text == f"call {n}"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:
            await client.call_tool("echo", {"text": "one too many"})
        assert refused.value.error.code == ErrorCode.RATE_LIMITED
        data = refused.value.error.data
        assert data["policy"] == "echo-burst"
        assert 999_000 <= data["retryAfterMs"] <= 1_000_000  # one token at 0.001/s
        # Other tools are not starved by the echo bucket, and the connection still works.
        assert (await client.call_tool("lookup", {"key": "a"})).structured_content == {"key": "a", "value": "alpha"}


async def test_refusal_is_429_with_retry_after_ietf_fields_and_the_request_id(serve: Any) -> None:
    served = serve(limited(policies=[BucketPolicy("burst", selector="tools/call", rate=0.1, capacity=2)]))
    async with httpx2.AsyncClient() as http:
        started = time.monotonic()
        first = await call_tool(http, served.mcp_url, "echo", {"text": "a"}, request_id=1)
        assert first.status_code == 200
        assert first.headers["ratelimit-policy"] == '"burst";q=2;w=20'  # an empty bucket takes 20 s to fill
        assert first.headers["ratelimit"] == '"burst";r=1;t=10'  # one token left, full again in 10 s
        await call_tool(http, served.mcp_url, "echo", {"text": "b"}, request_id=2)
        refused = await call_tool(http, served.mcp_url, "echo", {"text": "c"}, request_id="third")
        elapsed = time.monotonic() - started
    assert refused.status_code == 429
    error = error_of(refused)
    assert error["id"] == "third"
    assert error["code"] == -32014
    assert error["data"]["policy"] == "burst"
    retry_ms = error["data"]["retryAfterMs"]
    assert 10_000 - elapsed * 1000 - 1 <= retry_ms <= 10_000  # one token at 0.1/s, less what refilled meanwhile
    assert refused.headers["retry-after"] == str(math.ceil(retry_ms / 1000))
    assert refused.headers["ratelimit-policy"] == '"burst";q=2;w=20'
    assert refused.headers["ratelimit"] in ('"burst";r=0;t=20', '"burst";r=0;t=19')
    assert "Traceback" not in refused.text


async def test_by_default_only_refusals_carry_the_ratelimit_fields(serve: Any) -> None:
    app = RateLimitMiddleware(build_server().streamable_http_app(), policies=[BucketPolicy("p", rate=0.01, capacity=1)])
    served = serve(app)
    async with httpx2.AsyncClient() as http:
        admitted = await call_tool(http, served.mcp_url, "echo", {"text": "a"})
        refused = await call_tool(http, served.mcp_url, "echo", {"text": "b"})
    assert admitted.status_code == 200
    assert "ratelimit" not in admitted.headers and "ratelimit-policy" not in admitted.headers
    assert refused.status_code == 429
    assert refused.headers["ratelimit-policy"] == '"p";q=1;w=100' and refused.headers["ratelimit"].startswith('"p";r=0')


async def test_a_request_must_pass_every_matching_policy_and_a_refusal_consumes_nothing(serve: Any) -> None:
    served = serve(
        limited(
            policies=[
                BucketPolicy("echo", selector="tools/call:echo", rate=SLOW, capacity=2),
                BucketPolicy("all-tools", selector="tools/call", rate=SLOW, capacity=5),
            ]
        )
    )
    async with httpx2.AsyncClient() as http:
        ok = await call_tool(http, served.mcp_url, "echo", {"text": "1"})
        assert ok.headers["ratelimit-policy"] == '"echo";q=2;w=2000, "all-tools";q=5;w=5000'
        assert ok.headers["ratelimit"] == '"echo";r=1;t=1000, "all-tools";r=4;t=1000'
        await call_tool(http, served.mcp_url, "echo", {"text": "2"})
        for _ in range(3):
            refused = await call_tool(http, served.mcp_url, "echo", {"text": "refused"})
            assert refused.status_code == 429
            assert error_of(refused)["data"]["policy"] == "echo"
        # The refused echo calls took nothing from "all-tools": 5 - 2 - this lookup = 2 left.
        lookup = await call_tool(http, served.mcp_url, "lookup", {"key": "a"})
    assert lookup.status_code == 200
    assert lookup.headers["ratelimit"] == '"all-tools";r=2;t=3000'


async def test_per_target_policies_give_each_tool_its_own_bucket(serve: Any) -> None:
    served = serve(
        limited(policies=[BucketPolicy("per-tool", selector="tools/call", rate=SLOW, capacity=1, per_target=True)])
    )
    async with httpx2.AsyncClient() as http:
        assert (await call_tool(http, served.mcp_url, "echo", {"text": "x"})).status_code == 200
        assert (await call_tool(http, served.mcp_url, "lookup", {"key": "a"})).status_code == 200
        assert (await call_tool(http, served.mcp_url, "echo", {"text": "x"})).status_code == 429
        assert (await call_tool(http, served.mcp_url, "lookup", {"key": "a"})).status_code == 429


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
async def test_window_quotas_through_limits_alongside_buckets(strategy: str, serve: Any) -> None:
    served = serve(
        limited(
            policies=[
                BucketPolicy("burst", selector="tools/call", rate=100, capacity=100),
                QuotaPolicy("daily", selector="tools/call", limit="3/day", strategy=strategy),  # type: ignore[arg-type]
            ]
        )
    )
    async with httpx2.AsyncClient() as http:
        answers = [await call_tool(http, served.mcp_url, "echo", {"text": str(n)}) for n in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[2].headers["ratelimit-policy"] == '"burst";q=100;w=1, "daily";q=3;w=86400'
    burst, daily = answers[2].headers["ratelimit"].split(", ")
    assert burst.startswith('"burst";r=9') and int(burst.split(";")[1].removeprefix("r=")) >= 97  # refills at 100/s
    remaining, reset = daily.removeprefix('"daily";').split(";")
    assert remaining == "r=0" and 0 < int(reset.removeprefix("t=")) <= 86400
    refused = answers[3]
    assert refused.headers["ratelimit-policy"] == '"daily";q=3;w=86400'
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    error = error_of(refused)
    assert error["data"]["policy"] == "daily"
    assert error["data"]["retryAfterMs"] > 0


async def test_only_requests_count_not_notifications_streams_or_deletes(serve: Any) -> None:
    """Legacy session, one policy on every method, capacity 3: initialize and two tool calls are the three."""
    served = serve(limited(policies=[BucketPolicy("everything", selector="*", rate=SLOW, capacity=3)]))
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}

    def post(body: dict[str, Any], session: str | None = None) -> dict[str, Any]:
        extra = {"mcp-session-id": session, "mcp-protocol-version": LEGACY} if session else {}
        return {"url": served.mcp_url, "content": orjson.dumps(body), "headers": headers | extra}

    async with httpx2.AsyncClient() as http:
        init = await http.post(
            **post(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": LEGACY,
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                }
            )
        )
        assert init.status_code == 200
        session = init.headers["mcp-session-id"]
        for _ in range(5):
            note = await http.post(**post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session))
            assert note.status_code == 202
        for _ in range(3):
            async with http.stream(
                "GET",
                served.mcp_url,
                headers={"accept": "text/event-stream", "mcp-session-id": session, "mcp-protocol-version": LEGACY},
            ) as stream:
                assert stream.status_code == 200
        call = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
        assert (await http.post(**post(call | {"id": 1}, session))).status_code == 200
        assert (await http.post(**post(call | {"id": 2}, session))).status_code == 200
        assert (await http.post(**post(call | {"id": 3}, session))).status_code == 429
        ended = await http.delete(served.mcp_url, headers={"mcp-session-id": session, "mcp-protocol-version": LEGACY})
        assert ended.status_code == 200


async def test_decisions_are_recorded_for_tracing(serve: Any) -> None:
    seen: list[Decision] = []
    served = serve(
        DecisionRecorder(limited(policies=[BucketPolicy("p", selector="tools/call", rate=SLOW, capacity=1)]), seen)
    )
    async with httpx2.AsyncClient() as http:
        await call_tool(http, served.mcp_url, "echo", {"text": "x"})
        await call_tool(http, served.mcp_url, "echo", {"text": "x"})
    ours = [(d.outcome, dict(d.attributes)) for d in seen if d.component == "ratelimit"]
    assert ours[0] == ("allow", {"policy": "p", "remaining": 0})
    assert ours[1][0] == "deny"
    assert ours[1][1]["policy"] == "p" and int(ours[1][1]["retry_after_ms"]) > 999_000


@pytest.mark.parametrize("era", ERAS)
async def test_progress_still_streams_through_the_limiter(era: Era, serve: Any) -> None:
    served = serve(limited(policies=[BucketPolicy("p", rate=10, capacity=10)]))
    arrivals: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append(time.monotonic())

    async with connect(served.mcp_url, era) as client:
        result = await client.call_tool("slow", {"steps": 3}, progress_callback=on_progress)
        end = time.monotonic()
    assert result.content[0].text == "done after 3 steps"  # type: ignore[union-attr]
    assert len(arrivals) == 3
    assert end - arrivals[0] > 2 * PROGRESS_INTERVAL * 0.8  # the first arrived long before the end


async def test_usable_through_starlette_add_middleware(serve: Any) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    server = build_server()
    inner = server.streamable_http_app()
    app = Starlette(routes=[Mount("/", app=inner)], lifespan=lambda _: server.session_manager.run())
    app.add_middleware(RateLimitMiddleware, policies=[BucketPolicy("p", selector="tools/call", rate=SLOW, capacity=1)])
    served = serve(app)
    async with httpx2.AsyncClient() as http:
        assert (await call_tool(http, served.mcp_url, "echo", {"text": "x"})).status_code == 200
        assert (await call_tool(http, served.mcp_url, "echo", {"text": "x"})).status_code == 429
