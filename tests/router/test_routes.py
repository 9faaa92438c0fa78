"""Primary and fallback routes at the aggregate: real backends, real breakers, real clients in both eras.

Two in-process `MCPServer` vendors offer the same tools; a route names `vendor_a` the primary
of `search` (read-only), `book` (not annotated: it must not run twice) and the prompt `brief`,
`vendor_b` their fallback. Each vendor has its own stack (a breaker, in most tests), built once
and shared by its path mount and the aggregate. The tests switch a vendor off (its app raises),
make a tool hang past its timeout, or point the primary at a closed port, and assert what the
client sees (`_meta`, the JSON-RPC error), what each backend ran, and the router's decisions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.breaker import BreakerPolicy, CircuitBreakerMiddleware
from mcp_middleware.core import CoreConfig, ErrorCode, JsonRpcCode
from mcp_middleware.router import ROUTER_META_KEY, HttpBackend, InProcessBackend, McpRouter, Route
from tests.conftest import ERAS, Era, connect, free_port
from tests.support.decisions import DecisionRecorder
from tests.support.requests import legacy_body, legacy_headers, legacy_post, legacy_session
from tests.support.waiting import held_within

pytestmark = pytest.mark.anyio

EVERY_PATH = CoreConfig(paths=("*",))
ROUTES = (
    Route(tool="search", primary="vendor_a", fallback=("vendor_b",)),
    Route(tool="book", primary="vendor_a", fallback=("vendor_b",)),
    Route(prompt="brief", primary="vendor_a", fallback=("vendor_b",)),
    Route(tool="claim_outage", primary="vendor_a", fallback=("vendor_b",)),
)


@dataclass
class Vendor:
    """One backend: what it ran, and the faults a test switches on."""

    name: str
    calls: dict[str, int] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    down: bool = False
    """Its app raises before answering anything (a backend that broke)."""
    chatty: bool = False
    """Tools report progress before they run (the answer is an SSE stream from its first byte)."""
    release: threading.Event | None = None
    """When set, tools wait for it (at most 20 s) before they answer."""

    def ran(self, tool: str) -> int:
        return self.calls.get(tool, 0)


def vendor_server(vendor: Vendor) -> MCPServer:
    server = MCPServer(vendor.name)

    async def run(tool: str, ctx: Context) -> None:
        vendor.calls[tool] = vendor.calls.get(tool, 0) + 1
        if vendor.chatty:
            await ctx.report_progress(0, 1, "started")
        if tool in vendor.hang:
            await anyio.sleep(3600)
        with anyio.move_on_after(20):
            while vendor.release is not None and not vendor.release.is_set():  # noqa: ASYNC110 (another thread sets it)
                await anyio.sleep(0.02)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def search(query: str, ctx: Context) -> str:
        """Read-only: safe to send to another vendor."""
        await run("search", ctx)
        return f"{vendor.name}:{query}"

    @server.tool()
    async def book(item: str, ctx: Context) -> str:
        """Books something: not annotated, it must not run twice."""
        await run("book", ctx)
        return f"{vendor.name} booked {item}"

    @server.tool()
    def claim_outage() -> str:
        """Ran, then says -32015 itself: a backend's own words are not the breaker's."""
        vendor.calls["claim_outage"] = vendor.calls.get("claim_outage", 0) + 1
        raise MCPError(code=ErrorCode.UNAVAILABLE, message="I am unavailable, honest")

    @server.tool(name=f"only_{vendor.name}")
    def only() -> str:
        """A tool no route names: namespaced as usual."""
        return vendor.name

    @server.prompt(name="brief")
    def brief(topic: str) -> str:
        """A prompt both vendors offer."""
        return f"[{vendor.name}] {topic}"

    return server


class Switchable:
    """The vendor's app, or an app that raises (the vendor is down) while `vendor.down` is set."""

    def __init__(self, app: ASGIApp, vendor: Vendor) -> None:
        self.app = app
        self.vendor = vendor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.vendor.down:
            raise ConnectionResetError(f"{self.vendor.name} is down")
        await self.app(scope, receive, send)


def breaker() -> Middleware:
    return Middleware(
        CircuitBreakerMiddleware,
        # open_for: the tests make two calls while the circuit must stay open; 0.5 s was too short on a loaded machine
        policy=BreakerPolicy(consecutive_failures=1, open_for=2.0, jitter=0.0),
        timeouts={"*": 30.0, "tools/call:search": 1.0, "tools/call:book": 1.0},
        config=EVERY_PATH,
    )


@dataclass
class Routed:
    vendors: dict[str, Vendor]
    recorder: DecisionRecorder
    url: str

    def fallbacks(self) -> list[dict[str, Any]]:
        return [attributes for outcome, attributes in self.recorder.of("router") if outcome == "fallback"]

    def routed(self) -> list[dict[str, Any]]:
        return [attributes for outcome, attributes in self.recorder.of("router") if outcome == "routed"]


def build(
    routes: tuple[Route, ...] = ROUTES, *, primary_url: str | None = None
) -> tuple[DecisionRecorder, dict[str, Vendor]]:
    vendors = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}
    router = McpRouter(routes=routes)
    if primary_url is not None:
        router.mount("gone", HttpBackend(primary_url, timeout=5.0), middleware=[breaker()])
    for name, vendor in vendors.items():
        app = Switchable(vendor_server(vendor).streamable_http_app(), vendor)
        router.mount(name, InProcessBackend(app), middleware=[breaker()])
    return DecisionRecorder(router), vendors


@pytest.fixture
def routed(serve: Any) -> Routed:
    recorder, vendors = build()
    return Routed(vendors, recorder, serve(recorder).mcp_url)


def served_by(result: Any) -> dict[str, Any]:
    meta = result.meta or {}
    report: dict[str, Any] = meta[ROUTER_META_KEY]
    return report


def text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.mark.parametrize("era", ERAS)
async def test_the_aggregate_lists_a_routed_tool_once_under_its_route_name(era: Era, routed: Routed) -> None:
    async with connect(routed.url, era) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
    assert tools.count("search") == 1 and tools.count("book") == 1
    assert not any(name.endswith(("__search", "__book")) for name in tools)
    assert {"vendor_a__only_vendor_a", "vendor_b__only_vendor_b"} <= set(tools)
    assert prompts == ["brief"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_primary_whose_breaker_opens_hands_calls_over_and_gets_them_back(era: Era, routed: Routed) -> None:
    vendor_a, vendor_b = routed.vendors["vendor_a"], routed.vendors["vendor_b"]
    async with connect(routed.url, era) as client:
        await client.list_tools()
        first = await client.call_tool("search", {"query": "one"})
        assert text(first) == "vendor_a:one"
        assert served_by(first) == {"route": "search", "server": "vendor_a", "fallback": False}

        vendor_a.down = True  # it breaks: a read-only call may run again elsewhere; the breaker opens
        second = await client.call_tool("search", {"query": "two"})
        assert text(second) == "vendor_b:two"
        assert served_by(second)["tried"] == [{"server": "vendor_a", "reason": "backend_error"}]

        third = await client.call_tool("book", {"item": "room"})  # circuit open: nothing ran, even `book` moves
        assert text(third) == "vendor_b booked room"
        assert served_by(third) == {
            "route": "book",
            "server": "vendor_b",
            "fallback": True,
            "tried": [{"server": "vendor_a", "reason": "breaker_open"}],
        }
        assert vendor_a.ran("book") == 0 and vendor_b.ran("book") == 1

        vendor_a.down = False  # it recovers: after `open_for` the half-open probe succeeds, calls move back
        back: Any = None
        with anyio.fail_after(20):
            while back is None or served_by(back)["server"] != "vendor_a":
                await anyio.sleep(0.2)
                back = await client.call_tool("search", {"query": "three"})
        assert text(back) == "vendor_a:three" and served_by(back)["fallback"] is False
    reasons = [(f["server"], f["to"], f["reason"]) for f in routed.fallbacks()]
    assert reasons[:2] == [("vendor_a", "vendor_b", "backend_error"), ("vendor_a", "vendor_b", "breaker_open")]
    recovered = [r for r in routed.routed() if r.get("recovered")]
    assert recovered and recovered[-1]["server"] == "vendor_a" and recovered[-1]["route"] == "search"


@pytest.mark.parametrize("era", ERAS)
async def test_a_timeout_on_a_tool_that_may_not_run_twice_does_not_switch(era: Era, routed: Routed) -> None:
    vendor_a, vendor_b = routed.vendors["vendor_a"], routed.vendors["vendor_b"]
    vendor_a.hang.add("book")
    async with connect(routed.url, era) as client:
        await client.list_tools()
        with pytest.raises(MCPError) as failed:
            await client.call_tool("book", {"item": "room"})
    error = failed.value
    assert error.code == ErrorCode.TIMEOUT
    assert error.data["mayHaveRun"] is True and error.data["backend"] == "vendor_a"
    assert error.data["route"] == "book" and error.data["tried"] == ["vendor_a"]
    assert vendor_a.ran("book") == 1 and vendor_b.ran("book") == 0
    assert not routed.fallbacks()


@pytest.mark.parametrize("era", ERAS)
async def test_a_timeout_on_a_read_only_tool_switches(era: Era, routed: Routed) -> None:
    routed.vendors["vendor_a"].hang.add("search")
    async with connect(routed.url, era) as client:
        await client.list_tools()
        result = await client.call_tool("search", {"query": "slow"})
    assert text(result) == "vendor_b:slow"
    assert served_by(result)["tried"] == [{"server": "vendor_a", "reason": "timeout"}]
    assert routed.fallbacks()[0]["reason"] == "timeout"


@pytest.mark.parametrize("era", ERAS)
async def test_once_progress_reached_the_client_a_timeout_is_the_clients_even_for_a_read(
    era: Era, routed: Routed
) -> None:
    vendor_a = routed.vendors["vendor_a"]
    vendor_a.hang.add("search")
    vendor_a.chatty = True
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with connect(routed.url, era) as client:
        await client.list_tools()
        with pytest.raises(MCPError) as failed:
            await client.call_tool("search", {"query": "late"}, progress_callback=on_progress)
    assert failed.value.code == ErrorCode.TIMEOUT and progress == [0]
    assert routed.vendors["vendor_b"].ran("search") == 0 and not routed.fallbacks()


@pytest.mark.parametrize("era", ERAS)
async def test_a_backend_that_says_unavailable_itself_is_not_taken_at_its_word(era: Era, routed: Routed) -> None:
    async with connect(routed.url, era) as client:
        await client.list_tools()
        with pytest.raises(MCPError) as failed:
            await client.call_tool("claim_outage", {})
    assert failed.value.code == ErrorCode.UNAVAILABLE
    assert routed.vendors["vendor_a"].ran("claim_outage") == 1 and routed.vendors["vendor_b"].ran("claim_outage") == 0


async def test_a_legacy_client_gets_the_stream_head_while_a_routed_tool_runs(routed: Routed) -> None:
    vendor_a = routed.vendors["vendor_a"]
    vendor_a.release = threading.Event()
    body = legacy_body("tools/call", {"name": "search", "arguments": {"query": "long"}}, 2)
    with anyio.fail_after(20):
        async with httpx2.AsyncClient(timeout=30) as http:
            session = await legacy_session(http, routed.url)
            assert (await legacy_post(http, routed.url, session, "tools/list", 1)).status_code == 200
            async with http.stream("POST", routed.url, content=body, headers=legacy_headers(session)) as answer:
                # The head is here while the tool still waits: a client's header timeout is not the tool's time.
                assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
                assert await held_within(lambda: vendor_a.ran("search") == 1)  # it runs, and waits for us
                vendor_a.release.set()
                text = (await answer.aread()).decode()
    assert "vendor_a:long" in text and ROUTER_META_KEY in text


@pytest.mark.parametrize("era", ERAS)
async def test_a_prompt_route_switches_when_the_primary_is_down(era: Era, routed: Routed) -> None:
    routed.vendors["vendor_a"].down = True
    async with connect(routed.url, era) as client:
        prompt = await client.get_prompt("brief", {"topic": "routes"})
    assert prompt.messages[0].content.text == "[vendor_b] routes"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_an_unreachable_primary_hands_even_a_non_idempotent_call_over(era: Era, serve: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens: connecting fails, nothing is sent
    routes = (Route(tool="book", primary="gone", fallback=("vendor_b",)),)
    recorder, vendors = build(routes, primary_url=closed)
    url = serve(recorder).mcp_url
    async with connect(url, era) as client:
        result = await client.call_tool("book", {"item": "table"})
    assert text(result) == "vendor_b booked table"
    assert served_by(result)["tried"] == [
        {"server": "gone", "reason": "unreachable" if era == "modern" else "unavailable"}
    ]
    assert vendors["vendor_b"].ran("book") == 1


@pytest.mark.parametrize("era", ERAS)
async def test_the_members_namespaced_names_are_not_callable_at_the_aggregate(era: Era, routed: Routed) -> None:
    async with connect(routed.url, era) as client:
        for name in ("vendor_a__search", "vendor_b__book"):
            with pytest.raises(MCPError) as unknown:
                await client.call_tool(name, {"query": "x", "item": "x"})
            assert unknown.value.code == JsonRpcCode.INVALID_PARAMS
    assert routed.vendors["vendor_a"].calls == {} and routed.vendors["vendor_b"].calls == {}


@pytest.mark.parametrize("era", ERAS)
async def test_a_path_mount_is_not_routed(era: Era, routed: Routed) -> None:
    async with connect(routed.url + "/vendor_a", era) as client:  # its own mount: its own answer, no fallback
        routed.vendors["vendor_a"].down = True
        with pytest.raises(MCPError) as failed:
            await client.call_tool("search", {"query": "x"})
    assert failed.value.code == ErrorCode.BAD_GATEWAY
    assert routed.vendors["vendor_b"].calls == {}


def test_a_route_must_name_servers_of_the_aggregate() -> None:
    with pytest.raises(ValueError, match="own fallback"):
        Route(tool="search", primary="a", fallback=("a",))
    with pytest.raises(ValueError, match="exactly one of tool, prompt or resource_prefix"):
        Route(primary="a", tool="x", prompt="y")
    router = McpRouter(routes=(Route(tool="search", primary="vendor_a", fallback=("vendr_b",)),))
    router.mount("vendor_a", MCPServer("a").streamable_http_app())
    router.mount("vendor_b", MCPServer("b").streamable_http_app())
    with pytest.raises(ValueError, match="did you mean 'vendor_b'"):
        _ = router.aggregate


@pytest.mark.parametrize("name", ["search.v2", "", "x" * 65, "sëarch", "a b"])
def test_a_route_name_is_a_portable_public_name(name: str) -> None:
    with pytest.raises(ValueError, match="public name too"):
        Route(tool=name, primary="vendor_a")
