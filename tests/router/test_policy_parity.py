"""One backend, one policy: every selector-driven decision is the same at `/mcp/{name}` and at the aggregate.

The backend's stack (auth scopes → rate limit → cache → breaker) is written once, in
the backend's own tool names. A path mount enters it directly; the aggregate
authenticates at its own door and routes the renamed request into the same stack.
Each test runs in both eras, through both endpoints, with the same principal, and
asserts what the client and the wire see: status, challenge, JSON-RPC code, cache
status, the backend's own call count.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.breaker import CircuitBreakerMiddleware, RetryPolicy
from mcp_middleware.cache import MemoryCacheStore, ResponseCacheMiddleware
from mcp_middleware.core import CoreConfig, ErrorCode, get_mcp_request
from mcp_middleware.ratelimit import BucketPolicy, MemoryBucketStore, RateLimitMiddleware
from mcp_middleware.router import InProcessBackend, McpRouter
from tests.breaker.backends import BackendLog, FaultInjector, build_backend, first
from tests.conftest import ERAS, Era, connect

pytestmark = pytest.mark.anyio

Endpoint = Literal["mount", "aggregate"]
ENDPOINTS: tuple[Endpoint, ...] = ("mount", "aggregate")
EVERY_PATH = CoreConfig(paths=("*",))
TOKENS = {"plain-token": ["mcp"], "slow-token": ["mcp", "svc:slow"]}


@dataclass
class Exchange:
    method: str | None
    name: str | None
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)


class WireRecorder:
    """Records the HTTP status and headers of every answer, as the client receives them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry: Exchange | None = None

        async def recording(message: Message) -> None:
            nonlocal entry
            if message["type"] == "http.response.start" and entry is not None:
                entry.status = message["status"]
                entry.headers = {k.lower(): v for k, v in message.get("headers", ())}
                request = get_mcp_request(scope)  # read before the client can see the answer
                if request is not None:
                    entry.method, entry.name = request.method, request.name
            await send(message)

        entry = Exchange(None, None)
        self.exchanges.append(entry)
        await self.app(scope, receive, recording)

    def calls(self, public_name: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "tools/call" and e.name == public_name]


@dataclass
class Setup:
    recorder: WireRecorder
    log: BackendLog
    injector: FaultInjector


def build(log: BackendLog) -> tuple[WireRecorder, FaultInjector]:
    injector = FaultInjector(build_backend(log).streamable_http_app(), {"echo": first(1, "vanish")})
    verifier = StaticTokenVerifier(TOKENS)
    stack = [
        Middleware(
            AuthMiddleware,
            verifier=verifier,
            resource="http://127.0.0.1/mcp/svc",
            required_scopes=["mcp"],
            scopes={"tools/call:stream": ["svc:slow"]},
            require_audience=False,
            config=EVERY_PATH,
        ),
        Middleware(
            RateLimitMiddleware,
            policies=[BucketPolicy(name="per-tool", selector="tools/call:set_flag", capacity=2, rate=0.001)],
            store=MemoryBucketStore(),
            namespace="svc",
            config=EVERY_PATH,
        ),
        Middleware(
            ResponseCacheMiddleware,
            store=MemoryCacheStore(),
            rules={"tools/call:lookup": 30},
            allow_tools=["lookup"],
            honor_ttl_ms=False,
            config=EVERY_PATH,
        ),
        Middleware(
            CircuitBreakerMiddleware,
            timeouts={"*": 30.0, "tools/call:quiet_hang": 0.3},
            retry=RetryPolicy(attempts=2, backoff=0.01, allow=("tools/call:echo",), learn_annotations=False),
            config=EVERY_PATH,
        ),
    ]
    door = Middleware(
        AuthMiddleware,
        verifier=verifier,
        resource="http://127.0.0.1/mcp",
        required_scopes=["mcp"],
        require_audience=False,
        config=EVERY_PATH,
    )
    router = McpRouter(aggregate_middleware=[door])
    router.mount("svc", InProcessBackend(injector), middleware=stack)
    return WireRecorder(router), injector


@pytest.fixture
def setup(serve: Any) -> tuple[Setup, str]:
    log = BackendLog()
    recorder, injector = build(log)
    served = serve(recorder)
    return Setup(recorder, log, injector), served.base


def url(base: str, endpoint: Endpoint) -> str:
    return f"{base}/mcp/svc" if endpoint == "mount" else f"{base}/mcp"


def public(endpoint: Endpoint, tool: str) -> str:
    return tool if endpoint == "mount" else f"svc__{tool}"


@contextlib.asynccontextmanager
async def client_for(target: str, era: Era, token: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        connect(streamable_http_client(target, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_a_per_tool_scope_refuses_with_the_same_challenge(
    era: Era, endpoint: Endpoint, setup: tuple[Setup, str]
) -> None:
    state, base = setup
    async with client_for(url(base, endpoint), era, "plain-token") as client:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK client raises its own types for a 403
            await client.call_tool(public(endpoint, "stream"), {"steps": 1})
        assert (await client.call_tool(public(endpoint, "echo"), {"text": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]
    refused = state.recorder.calls(public(endpoint, "stream"))
    assert refused and all(e.status == 403 for e in refused)
    challenge = refused[0].headers[b"www-authenticate"].decode()
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp svc:slow"' in challenge
    assert state.log.calls.get("stream", 0) == 0
    async with client_for(url(base, endpoint), era, "slow-token") as client:
        result = await client.call_tool(public(endpoint, "stream"), {"steps": 1})
    assert result.content[0].text == "streamed 1"  # type: ignore[union-attr]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_a_per_tool_limit_trips_at_the_same_count(era: Era, endpoint: Endpoint, setup: tuple[Setup, str]) -> None:
    state, base = setup
    async with client_for(url(base, endpoint), era, "plain-token") as client:
        for value in (True, False):
            await client.call_tool(public(endpoint, "set_flag"), {"value": value})
        with pytest.raises(MCPError) as limited:
            await client.call_tool(public(endpoint, "set_flag"), {"value": True})
    assert limited.value.code == ErrorCode.RATE_LIMITED
    statuses = [e.status for e in state.recorder.calls(public(endpoint, "set_flag"))]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:]
    assert state.log.calls["set_flag"] == 2


@pytest.mark.parametrize("era", ERAS)
async def test_one_budget_whichever_endpoint_spends_it(era: Era, setup: tuple[Setup, str]) -> None:
    state, base = setup
    async with client_for(url(base, "mount"), era, "plain-token") as client:
        await client.call_tool("set_flag", {"value": True})
    async with client_for(url(base, "aggregate"), era, "plain-token") as client:
        await client.call_tool("svc__set_flag", {"value": True})
        with pytest.raises(MCPError) as limited:
            await client.call_tool("svc__set_flag", {"value": False})
    assert limited.value.code == ErrorCode.RATE_LIMITED
    async with client_for(url(base, "mount"), era, "plain-token") as client:
        with pytest.raises(MCPError) as again:
            await client.call_tool("set_flag", {"value": False})
    assert again.value.code == ErrorCode.RATE_LIMITED
    assert state.log.calls["set_flag"] == 2
    async with client_for(url(base, "mount"), era, "slow-token") as client:  # another principal: its own
        await client.call_tool("set_flag", {"value": True})
    assert state.log.calls["set_flag"] == 3


@pytest.mark.parametrize("era", ERAS)
async def test_a_cache_opt_in_is_one_cache_for_both_endpoints(era: Era, setup: tuple[Setup, str]) -> None:
    state, base = setup
    async with client_for(url(base, "mount"), era, "plain-token") as client:
        first_answer = await client.call_tool("lookup", {"key": "a"})
    async with client_for(url(base, "aggregate"), era, "plain-token") as client:
        second_answer = await client.call_tool("svc__lookup", {"key": "a"})
        third = await client.call_tool("svc__lookup", {"key": "b"})
    async with client_for(url(base, "mount"), era, "plain-token") as client:
        fourth = await client.call_tool("lookup", {"key": "b"})
    assert first_answer.content[0].text == second_answer.content[0].text == "alpha"  # type: ignore[union-attr]
    assert third.content[0].text == fourth.content[0].text == "beta"  # type: ignore[union-attr]
    seen = [e.headers.get(b"x-mcp-cache") for e in state.recorder.exchanges if e.name in ("lookup", "svc__lookup")]
    assert seen == [b"miss", b"hit", b"miss", b"hit"]
    assert state.log.calls["lookup"] == 2


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_a_per_tool_timeout_fires_the_same(era: Era, endpoint: Endpoint, setup: tuple[Setup, str]) -> None:
    state, base = setup
    async with client_for(url(base, endpoint), era, "plain-token") as client:
        with pytest.raises(MCPError) as timed_out:
            await client.call_tool(public(endpoint, "quiet_hang"), {})
        assert (await client.call_tool(public(endpoint, "lookup"), {"key": "a"})).content[0].text == "alpha"  # type: ignore[union-attr]
    assert timed_out.value.code == ErrorCode.TIMEOUT
    assert "quiet_hang started" in state.log.events


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_a_retry_allow_list_retries_the_same(era: Era, endpoint: Endpoint, setup: tuple[Setup, str]) -> None:
    state, base = setup
    async with client_for(url(base, endpoint), era, "plain-token") as client:
        result = await client.call_tool(public(endpoint, "echo"), {"text": "again"})
    assert result.content[0].text == "again"  # type: ignore[union-attr]
    assert state.injector.calls["echo"] == 2 and state.log.calls["echo"] == 1


@pytest.mark.parametrize("era", ERAS)
async def test_the_aggregate_door_authenticates_before_anything_routes(era: Era, setup: tuple[Setup, str]) -> None:
    state, base = setup
    with pytest.raises(Exception):  # noqa: B017, PT011 - no token: the SDK client's own error for a 401
        async with client_for(url(base, "aggregate"), era) as client:
            await client.call_tool("svc__echo", {"text": "anonymous"})
    assert state.recorder.exchanges and all(e.status == 401 for e in state.recorder.exchanges)
    assert "echo" not in state.log.calls
