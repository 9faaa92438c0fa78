"""Which messages spend rate-limit tokens, as the `mcp` SDK client sends them (docs/ratelimit.md).

The SDK client checks a tool's result against the tool's output schema, and when it has not listed
that tool yet it sends a `tools/list` of its own right after the call (`ClientSession.call_tool` →
`validate_tool_result` → `list_tools`, mcp/client/session.py). So the first `call_tool` of a client
costs two requests, and with a small budget the call runs and then the list is refused: the caller
gets the 429 of the list, for a call that did its work.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.server.mcpserver import MCPServer

from mcp_middleware.core import ErrorCode, get_decisions, get_mcp_request
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from mcp_middleware.ratelimit import BucketPolicy, RateLimitMiddleware
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_oauth import EXAMPLE
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

SLOW = 0.001
"""One token per 1000 s: nothing refills during a test."""

CONNECT = {"modern": "server/discover", "legacy": "initialize"}
"""The one request `Client(url)` sends on entering, per era (legacy also sends a notification, opens a GET stream)."""


class Bumps:
    """A server whose `bump` tool counts how often it really ran."""

    def __init__(self) -> None:
        self.ran = 0
        self.server = MCPServer("bumps")

        @self.server.tool()
        def bump() -> str:
            """Count one run."""
            self.ran += 1
            return f"ran {self.ran}"


def limited(bumps: Bumps, *policies: BucketPolicy) -> DecisionRecorder:
    return DecisionRecorder(RateLimitMiddleware(bumps.server.streamable_http_app(), policies=list(policies)))


def counted(recorder: DecisionRecorder) -> list[str]:
    """The method of every request that spent tokens (had a rate-limit decision), in order."""
    methods = []
    for scope in recorder.scopes:
        request = get_mcp_request(scope)
        if request is not None and any(d.component == "ratelimit" for d in get_decisions(scope)):
            methods.append(request.method or f"({request.kind.name})")
    return methods


def client(url: str, era: Era) -> Client:
    """What a user writes: `Client(url)` with the SDK's defaults (its client-side cache on)."""
    return Client(url, mode="legacy" if era == "legacy" else "auto")


@pytest.mark.parametrize("era", ERAS)
async def test_the_first_call_tool_spends_a_second_token_on_the_sdks_own_tools_list(era: Era, serve: Any) -> None:
    bumps = Bumps()
    recorder = limited(bumps, BucketPolicy("all", selector="*", rate=SLOW, capacity=100))
    served = serve(recorder)
    async with client(served.mcp_url, era) as session:
        assert counted(recorder) == [CONNECT[era]]
        await session.call_tool("bump")
        assert counted(recorder) == [CONNECT[era], "tools/call", "tools/list"]  # the list nobody asked for
        await session.call_tool("bump")  # the tool is known now: one token
        assert counted(recorder) == [CONNECT[era], "tools/call", "tools/list", "tools/call"]
    assert bumps.ran == 2
    remaining = [d.attributes["remaining"] for d in recorder.decisions if d.component == "ratelimit"]
    assert remaining == [99, 98, 97, 96]
    # Not counted, though they reached the limiter: legacy's notifications/initialized, GET stream, DELETE.
    if era == "legacy":
        kinds = [request.kind.name for s in recorder.scopes if (request := get_mcp_request(s)) is not None]
        assert {"NOTIFICATION", "STREAM", "TERMINATE"} <= set(kinds)


@pytest.mark.parametrize("era", ERAS)
async def test_with_a_small_budget_a_call_that_ran_is_reported_as_rate_limited(era: Era, serve: Any) -> None:
    """The surprise, exactly: the call spends the last token and runs; the SDK's list is refused."""
    bumps = Bumps()
    recorder = limited(bumps, BucketPolicy("all", selector="*", rate=SLOW, capacity=2))
    served = serve(recorder)
    async with client(served.mcp_url, era) as session:
        with pytest.raises(MCPError) as refused:
            await session.call_tool("bump")
    assert refused.value.code == ErrorCode.RATE_LIMITED and refused.value.error.data["policy"] == "all"
    assert bumps.ran == 1  # ... although the tool ran
    assert counted(recorder) == [CONNECT[era], "tools/call", "tools/list"]
    assert [d.outcome for d in recorder.decisions if d.component == "ratelimit"] == ["allow", "allow", "deny"]


@pytest.mark.parametrize("era", ERAS)
async def test_listing_first_moves_any_refusal_before_the_work(era: Era, serve: Any) -> None:
    """`list_tools()` before the first call: no list after it, so a refusal never follows a call that ran."""
    bumps = Bumps()
    recorder = limited(bumps, BucketPolicy("all", selector="*", rate=SLOW, capacity=2))
    served = serve(recorder)
    async with client(served.mcp_url, era) as session:
        await session.list_tools()
        with pytest.raises(MCPError) as refused:
            await session.call_tool("bump")
    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert bumps.ran == 0  # refused before it ran: the answer is true
    assert counted(recorder) == [CONNECT[era], "tools/list", "tools/call"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_list_policy_of_its_own_keeps_the_call_budget_for_calls(era: Era, serve: Any) -> None:
    bumps = Bumps()
    recorder = limited(
        bumps,
        BucketPolicy("calls", selector="tools/call", rate=SLOW, capacity=1),
        BucketPolicy("lists", selector="*/list", rate=SLOW, capacity=10),
    )
    served = serve(recorder)
    async with client(served.mcp_url, era) as session:
        assert (await session.call_tool("bump")).content[0].text == "ran 1"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:  # the second call is over the call budget: not run
            await session.call_tool("bump")
        assert [tool.name for tool in (await session.list_tools()).tools] == ["bump"]  # lists: their own budget
    assert refused.value.error.data["policy"] == "calls"
    assert bumps.ran == 1
    # The connect request matches neither policy: it spends nothing.
    assert counted(recorder) == ["tools/call", "tools/list", "tools/call", "tools/list"]


# --- the example gateway: lists have their own, cheaper policy ------------------------------------


@pytest.fixture
def example() -> Iterator[tuple[Gateway, Served]]:
    port = free_port()
    gateway = build_gateway(load_config(EXAMPLE), port=port)
    with serve_app(gateway.app, port=port) as served:
        yield gateway, served


def test_the_example_config_gives_list_methods_their_own_policy() -> None:
    policies = {p.name: p for p in load_config(EXAMPLE).ratelimit.policies}
    assert policies["lists"].selector == "*/list" and policies["per-user"].selector == "tools/call"
    assert policies["lists"].capacity > policies["per-user"].capacity  # cheaper: a larger budget


async def test_the_example_gateway_counts_lists_and_calls_apart(example: tuple[Gateway, Served]) -> None:
    gateway, served = example
    url = f"{served.base}/mcp/demo"
    assert gateway.authorization_server is not None  # the example runs the embedded dev server
    issued, _ = gateway.authorization_server.issue_access_token(
        subject="dora", client_id="counting-test", scope="mcp", resource=f"{gateway.base_url}/mcp/demo"
    )
    auth = {"authorization": f"Bearer {issued}"}
    async with httpx2.AsyncClient(timeout=30) as http:
        listed = await http.post(
            url, content=modern_body("tools/list"), headers={**modern_headers("tools/list"), **auth}
        )
        called = await http.post(
            url,
            content=modern_body("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
            headers={**modern_headers("tools/call", "echo"), **auth},
        )
    assert listed.status_code == 200 and called.status_code == 200
    assert '"lists"' in listed.headers["ratelimit-policy"] and "per-user" not in listed.headers["ratelimit-policy"]
    assert '"per-user"' in called.headers["ratelimit-policy"] and "lists" not in called.headers["ratelimit-policy"]
