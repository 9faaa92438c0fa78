"""The aggregated endpoint: a real MCP server merging many backends under namespaced names."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import MCPError
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from mcp_middleware.router import ROUTER_META_KEY, HttpBackend, InProcessBackend, McpRouter, NamingPolicy, PrefixMode
from tests.conftest import ERAS, Era, connect, free_port
from tests.router.servers import team_server
from tests.servers import PROGRESS_INTERVAL, ToolLog, build_server

# Handshake-era features (logging, sampling, resources/subscribe) are tested on purpose.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]


def team_router(**options: Any) -> McpRouter:
    router = McpRouter(**options)
    router.mount("alpha", team_server("alpha").streamable_http_app())
    router.mount("beta", team_server("beta", tools=("search", "delete")).streamable_http_app())
    return router


@pytest.mark.parametrize("era", ERAS)
async def test_merges_everything_under_namespaced_names_and_routes_back(era: Era, serve: Any) -> None:
    served = serve(team_router())
    async with connect(served.mcp_url, era) as client:
        tools = await client.list_tools()
        prompts = await client.list_prompts()
        resources = await client.list_resources()
        templates = await client.list_resource_templates()
        searched = await client.call_tool("beta__search", {"query": "q"})
        prompt = await client.get_prompt("alpha__summarize", {"topic": "t"})
        readme = await client.read_resource("beta+beta://readme")
        item = await client.read_resource("alpha+alpha://items/7")
    assert [tool.name for tool in tools.tools] == [
        "alpha__create",
        "alpha__search",
        "beta__delete",
        "beta__search",
    ]
    assert tools.tools[0].description == "create in alpha"
    assert [p.name for p in prompts.prompts] == ["alpha__summarize", "beta__summarize"]
    assert [r.uri for r in resources.resources] == ["alpha+alpha://readme", "beta+beta://readme"]
    assert [t.uri_template for t in templates.resource_templates] == [
        "alpha+alpha://items/{item}",
        "beta+beta://items/{item}",
    ]
    assert searched.content[0].text == "beta:search:q"  # type: ignore[union-attr]
    assert prompt.messages[0].content.text == "[alpha] summarize t"  # type: ignore[union-attr]
    assert readme.contents[0].uri == "beta+beta://readme"  # the URI a client reads again
    assert readme.contents[0].text == "readme of beta"  # type: ignore[union-attr]
    assert item.contents[0].text == "alpha item 7"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_prefix_on_collision_and_never_with_conflict_rule(era: Era, serve: Any) -> None:
    on_collision = serve(team_router(naming=NamingPolicy(prefix=PrefixMode.ON_COLLISION)))
    never_first = serve(team_router(naming=NamingPolicy(prefix=PrefixMode.NEVER, on_conflict="first")))
    async with connect(on_collision.mcp_url, era) as client:
        shared = await client.list_tools()
        created = await client.call_tool("create", {"query": "x"})
    async with connect(never_first.mcp_url, era) as client:
        bare = await client.list_tools()
        first = await client.call_tool("search", {"query": "y"})
    assert [t.name for t in shared.tools] == ["alpha__search", "beta__search", "create", "delete"]
    assert created.content[0].text == "alpha:create:x"  # type: ignore[union-attr]
    assert [t.name for t in bare.tools] == ["create", "delete", "search"]
    assert first.content[0].text == "alpha:search:y"  # type: ignore[union-attr]  # mount order wins
    if era == "modern":  # legacy results carry no _meta
        report = bare.meta[ROUTER_META_KEY]  # type: ignore[index]
        assert report["collisions"] == [
            {"name": "search", "kept": "alpha:search", "renamed": "beta:search", "as": None}
        ]


@pytest.mark.parametrize("era", ERAS)
async def test_unknown_namespaced_tool_is_an_error_naming_it(era: Era, serve: Any) -> None:
    served = serve(team_router())
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("gamma__search", {"query": "q"})
        with pytest.raises(MCPError) as unknown_resource:
            await client.read_resource("gamma+gamma://readme")
        still_fine = await client.call_tool("alpha__search", {"query": "after"})
    assert unknown.value.code == -32602
    assert "gamma__search" in unknown.value.message
    assert unknown_resource.value.code == -32602
    assert still_fine.content[0].text == "alpha:search:after"  # type: ignore[union-attr]


def paged_backend(prefix: str, count: int, page: int) -> Server[Any]:
    """A low-level server that pages its own tools list (`page` per page, cursors are offsets)."""
    tools = [types.Tool(name=f"{prefix}{i:03d}", input_schema={"type": "object"}) for i in range(count)]

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + page
        return types.ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < count else None)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=f"{prefix}:{params.name}")])

    return Server(f"paged-{prefix}", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.parametrize("era", ERAS)
async def test_merged_pages_list_every_item_exactly_once(era: Era, serve: Any) -> None:
    router = McpRouter(page_size=7)
    router.mount("one", paged_backend("t", 23, page=5).streamable_http_app())
    router.mount("two", paged_backend("u", 11, page=4).streamable_http_app())
    router.mount("three", team_server("three").streamable_http_app())
    served = serve(router)
    walked: list[str] = []
    pages = 0
    async with connect(served.mcp_url, era) as client:
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            pages += 1
            assert len(page.tools) <= 7
            walked.extend(tool.name for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        routed = await client.call_tool("two__u007", {})
    expected = sorted([f"one__t{i:03d}" for i in range(23)] + [f"two__u{i:03d}" for i in range(11)])
    expected += ["three__create", "three__search"]
    assert walked == sorted(expected)  # every item once, in a deterministic order, across backends' own pages
    assert pages == -(-len(expected) // 7)
    assert routed.content[0].text == "u:u007"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_malformed_cursor_is_invalid_params(era: Era, serve: Any) -> None:
    served = serve(team_router())
    async with connect(served.mcp_url, era) as client:
        for cursor in ("not-a-cursor!!", "", "eyJ2IjoxfQ", "eyJ2IjoxLCJrIjoicHJvbXB0cyIsImEiOiJ4In0"):
            with pytest.raises(MCPError) as invalid:
                await client.list_tools(cursor=cursor)
            assert invalid.value.code == -32602, cursor


class Garbage:
    """A backend that answers every request with something that is not MCP."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"surprise": true'})


def slow_list_server(delay: float) -> MCPServer:
    server = MCPServer("sluggish")

    @server.tool()
    def idle() -> str:
        return "idle"

    original = server._lowlevel_server._request_handlers["tools/list"]  # the test needs a slow tools/list

    async def slow(ctx: Any, params: Any) -> Any:
        await anyio.sleep(delay)
        return await original.handler(ctx, params)

    server._lowlevel_server.add_request_handler("tools/list", original.params_type, slow)
    return server


@pytest.mark.parametrize("era", ERAS)
async def test_failing_backends_do_not_fail_the_list(era: Era, serve: Any) -> None:
    router = McpRouter(failure_cooldown=30)
    router.mount("good", build_server().streamable_http_app())
    router.mount("dead", HttpBackend(f"http://127.0.0.1:{free_port()}/mcp", timeout=3))
    router.mount("garbage", InProcessBackend(Garbage(), timeout=3))
    router.mount("slow", InProcessBackend(slow_list_server(5).streamable_http_app(), timeout=0.5))
    served = serve(router)
    async with connect(served.mcp_url, era) as client:
        started = time.monotonic()
        first = await client.list_tools()
        first_took = time.monotonic() - started
        started = time.monotonic()
        second = await client.list_tools()
        second_took = time.monotonic() - started
        called = await client.call_tool("good__echo", {"text": "still here"})
        with pytest.raises(MCPError) as unavailable:
            await client.call_tool("slow__idle", {})
    names = [t.name for t in first.tools]
    assert "good__echo" in names and not any(n.startswith(("dead", "garbage", "slow")) for n in names)
    assert first_took < 4  # the slow backend was cut off at its own timeout, concurrently with the rest
    assert second_took < 1  # the timed-out backend is cooling down: no second wait on it
    assert [t.name for t in second.tools] == names
    assert called.content[0].text == "still here"  # type: ignore[union-attr]
    assert unavailable.value.code in (-32602, -32015)
    if era == "modern":
        report = first.meta[ROUTER_META_KEY]  # type: ignore[index]
        assert report["partial"] is True
        assert {f["server"] for f in report["failed"]} == {"dead", "garbage", "slow"}
        assert {f["server"]: f["error"] for f in report["failed"]}["slow"] == "timeout"


class DiesMidCall:
    """A backend that streams the start of an answer to tools/call and then drops the connection."""

    def __init__(self) -> None:
        self.inner = build_server().streamable_http_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.inner(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if b'"tools/call"' not in body:
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.inner(scope, replay, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'event: message\r\ndata: {"json', "more_body": True})
        raise RuntimeError("backend died mid-call")


@pytest.mark.parametrize("era", ERAS)
async def test_backend_dying_mid_call_fails_that_call_only(era: Era, serve: Any) -> None:
    router = McpRouter()
    router.mount("fragile", InProcessBackend(DiesMidCall(), timeout=5))
    router.mount("steady", build_server().streamable_http_app())
    served = serve(router)
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as failed:
            await client.call_tool("fragile__echo", {"text": "lost"})
        steady = await client.call_tool("steady__echo", {"text": "unaffected"})
    assert failed.value.code in (-32017, -32016)
    assert "fragile" in failed.value.message
    assert steady.content[0].text == "unaffected"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_progress_is_relayed_while_the_tool_runs(era: Era, serve: Any) -> None:
    router = McpRouter()
    router.mount("test", build_server().streamable_http_app())
    served = serve(router)
    arrivals: list[tuple[float, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append((time.monotonic(), progress))

    async with connect(served.mcp_url, era) as client:
        started = time.monotonic()
        result = await client.call_tool("test__slow", {"steps": 4}, progress_callback=on_progress)
        finished = time.monotonic()
    assert result.content[0].text == "done after 4 steps"  # type: ignore[union-attr]
    assert [progress for _, progress in arrivals] == [1, 2, 3, 4]
    assert arrivals[0][0] - started < finished - started - 2 * PROGRESS_INTERVAL


@pytest.mark.parametrize("era", ERAS)
async def test_backend_list_changed_reaches_clients_debounced(era: Era, serve: Any) -> None:
    backend = MCPServer("changing")

    @backend.tool()
    async def grow(names: list[str], ctx: Context) -> str:
        """Add tools, announcing each one separately (the router sends one notification for all)."""
        for name in names:
            backend.add_tool(lambda: "new", name=name)
            await ctx.notify_tools_changed()  # reaches the aggregate's subscriptions/listen stream
        return "grown"

    router = McpRouter(debounce=0.2)
    router.mount("changing", backend.streamable_http_app())
    served = serve(router)
    notifications: list[str] = []
    notified = anyio.Event()

    async def on_message(message: Any) -> None:
        if era == "legacy" and isinstance(message, types.ToolListChangedNotification):
            notifications.append(message.method)
            notified.set()

    async with connect(served.mcp_url, era, message_handler=on_message) as client:
        before = await client.list_tools()
        await anyio.sleep(0.3)  # the aggregate's change subscription to the backend is open by now
        if era == "modern":
            async with client.listen(tools_list_changed=True) as subscription:
                await client.call_tool("changing__grow", {"names": ["sprout", "shoot", "leaf"]})
                with anyio.fail_after(5):
                    event = await subscription.__anext__()
                notifications.append(type(event).__name__)
                with anyio.move_on_after(0.5):  # a second, undebounced event would arrive here
                    notifications.append(type(await subscription.__anext__()).__name__)
        else:
            await client.call_tool("changing__grow", {"names": ["sprout", "shoot", "leaf"]})
            with anyio.fail_after(5):
                await notified.wait()
        await anyio.sleep(0.5)  # time for any extra (undebounced) notification to show up
        after = await client.list_tools()
    assert "changing__sprout" not in [t.name for t in before.tools]
    assert {"changing__sprout", "changing__shoot", "changing__leaf"} <= {t.name for t in after.tools}
    expected = "ToolsListChanged" if era == "modern" else "notifications/tools/list_changed"
    assert notifications == [expected]


async def test_unknown_http_path_next_to_the_aggregate(serve: Any) -> None:
    served = serve(team_router())
    async with httpx2.AsyncClient(base_url=served.base) as http:
        response = await http.post("/elsewhere", json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == -32600


def asking_backend() -> Server[Any]:
    """A modern backend whose tool needs an answer from the user first (MRTR `input_required`)."""

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
        answers = params.input_responses or {}
        if "name" not in answers:
            question = types.ElicitRequest(
                params=types.ElicitRequestFormParams(
                    message="Your name?",
                    requested_schema={"type": "object", "properties": {"name": {"type": "string"}}},
                )
            )
            return types.InputRequiredResult(input_requests={"name": question}, request_state="asked-once")
        answer = answers["name"]
        assert isinstance(answer, types.ElicitResult) and params.request_state == "asked-once"
        return types.CallToolResult(content=[types.TextContent(text=f"hello {answer.content['name']}")])  # type: ignore[index]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="greet", input_schema={"type": "object"})])

    return Server("asking", on_call_tool=call_tool, on_list_tools=list_tools)


async def test_input_required_passes_through_and_the_retry_is_routed_back(serve: Any) -> None:
    router = McpRouter()
    router.mount("asking", asking_backend().streamable_http_app())
    served = serve(router)
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async with connect(served.mcp_url, "modern", elicitation_callback=answer) as client:
        result = await client.call_tool("asking__greet", {})
    assert asked == ["Your name?"]  # the backend's question reached the client unchanged
    assert result.content[0].text == "hello Ada"  # type: ignore[union-attr]  # the retry reached the backend


def legacy_asking_server() -> MCPServer:
    server = MCPServer("legacy-asking")

    @server.tool()
    async def confirm(action: str, ctx: Context) -> str:
        """Ask the user (legacy elicitation, a server-to-client request) before acting."""

        class Answer(BaseModel):
            ok: bool

        answer = await ctx.elicit(f"Really {action}?", Answer)
        return f"{action}: {answer.action} {answer.data.ok if answer.data else None}"

    @server.tool()
    async def ask_model(question: str, ctx: Context) -> str:
        """Ask the client's model (legacy sampling)."""
        result = await ctx.session.create_message(
            [types.SamplingMessage(role="user", content=types.TextContent(text=question))], max_tokens=10
        )
        return f"model said {result.content.text}"  # type: ignore[union-attr]

    return server


async def test_legacy_server_to_client_requests_reach_the_calling_client(serve: Any) -> None:
    router = McpRouter()
    # The aggregate's session to this backend speaks 2025-11-25, so the backend asks with real
    # server-to-client requests (a 2026-07-28 backend would answer input_required instead, tested above).
    router.mount("asking", InProcessBackend(legacy_asking_server().streamable_http_app(), mode="legacy"))
    served = serve(router)
    seen: list[str] = []

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.append(params.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="42"), model="test")

    async with connect(
        served.mcp_url, "legacy", elicitation_callback=elicitation, sampling_callback=sampling
    ) as client:
        confirmed = await client.call_tool("asking__confirm", {"action": "deploy"})
        sampled = await client.call_tool("asking__ask_model", {"question": "meaning of life?"})
    assert seen == ["Really deploy?", "meaning of life?"]
    assert confirmed.content[0].text == "deploy: accept True"  # type: ignore[union-attr]
    assert sampled.content[0].text == "model said 42"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_backend_logs_during_a_call_reach_the_calling_client(era: Era, serve: Any) -> None:
    backend = MCPServer("chatty")

    @backend.tool()
    async def work(ctx: Context) -> str:
        await ctx.info("working on it")
        return "worked"

    router = McpRouter()
    router.mount("chatty", backend.streamable_http_app())
    served = serve(router)
    logs: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    options: dict[str, Any] = {"logging_callback": on_log}
    if era == "modern":
        options["log_level"] = "info"  # 2026-07-28: logs are an opt-in per request
    async with connect(served.mcp_url, era, **options) as client:
        if era == "legacy":
            await client.set_logging_level("info")
        result = await client.call_tool("chatty__work", {})
    assert result.content[0].text == "worked"  # type: ignore[union-attr]
    assert logs == ["working on it"]


@pytest.mark.parametrize("era", ERAS)
async def test_client_cancellation_reaches_the_backend(era: Era, serve: Any) -> None:
    log = ToolLog()
    router = McpRouter()
    router.mount("test", build_server(log).streamable_http_app())
    served = serve(router)
    async with connect(served.mcp_url, era) as client:
        with anyio.move_on_after(0.5):
            await client.call_tool("test__slow", {"steps": 20})
        with anyio.fail_after(5):
            while log.events[-1:] != ["cancelled"]:  # noqa: ASYNC110 (the backend's log is plain data)
                await anyio.sleep(0.05)
    assert log.events == ["started", "cancelled"]


def completing_server() -> MCPServer:
    server = team_server("gamma")

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> types.Completion:
        target = ref.name if isinstance(ref, types.PromptReference) else ref.uri
        return types.Completion(values=[f"{target}:{argument.name}={argument.value}!"])

    return server


@pytest.mark.parametrize("era", ERAS)
async def test_completions_are_routed_by_prompt_name_and_template_uri(era: Era, serve: Any) -> None:
    router = McpRouter()
    router.mount("gamma", completing_server().streamable_http_app())
    served = serve(router)
    async with connect(served.mcp_url, era) as client:
        prompt = await client.complete(types.PromptReference(name="gamma__summarize"), {"name": "topic", "value": "a"})
        template = await client.complete(
            types.ResourceTemplateReference(uri="gamma+gamma://items/{item}"), {"name": "item", "value": "4"}
        )
    assert prompt.completion.values == ["summarize:topic=a!"]  # the backend saw its own prompt name
    assert template.completion.values == ["gamma://items/{item}:item=4!"]  # and its own template


async def test_never_mode_reads_templated_uris_and_relays_legacy_resource_updates(serve: Any) -> None:
    backend = team_server("delta")

    @backend.tool()
    async def touch(ctx: Context) -> str:
        """Say the readme changed (to every session subscribed to it)."""
        await ctx.session.send_resource_updated("delta://readme")
        return "touched"

    subscribed: list[str] = []

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.append(f"+{params.uri}")
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.append(f"-{params.uri}")
        return types.EmptyResult()

    backend._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    backend._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)

    router = McpRouter(naming=NamingPolicy(prefix=PrefixMode.NEVER))
    router.mount("delta", backend.streamable_http_app())
    served = serve(router)
    updated = anyio.Event()
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(message.params.uri)
            updated.set()

    async with connect(served.mcp_url, "legacy", message_handler=on_message) as client:
        item = await client.read_resource("delta://items/9")  # no such listed resource: matched by its template
        await client.session.subscribe_resource("delta://readme")
        await client.call_tool("touch", {})
        with anyio.fail_after(5):
            await updated.wait()
        await client.session.unsubscribe_resource("delta://readme")
    assert item.contents[0].text == "delta item 9"  # type: ignore[union-attr]
    assert updates == ["delta://readme"]
    assert subscribed == ["+delta://readme", "-delta://readme"]  # the backend saw its own URI


@pytest.mark.parametrize("era", ERAS)
async def test_a_walk_sees_every_lasting_item_once_while_backends_change(era: Era, serve: Any) -> None:
    backend = MCPServer("shifting")
    for index in range(10):
        backend.add_tool(lambda: "old", name=f"t{index:02d}")
    router = McpRouter(page_size=4, list_ttl=0)  # every page asks the backend again
    router.mount("s", backend.streamable_http_app())
    served = serve(router)
    walked: list[str] = []
    async with connect(served.mcp_url, era) as client:
        page = await client.list_tools()
        walked += [t.name for t in page.tools]
        backend.add_tool(lambda: "new", name="a00")  # sorts before the cursor: a walk in progress skips it
        backend.add_tool(lambda: "new", name="t05b")  # sorts after it: the walk picks it up
        while page.next_cursor is not None:
            page = await client.list_tools(cursor=page.next_cursor)
            walked += [t.name for t in page.tools]
    assert len(walked) == len(set(walked))  # nothing twice
    assert {f"s__t{i:02d}" for i in range(10)} <= set(walked)  # everything that lasted, once
    assert "s__t05b" in walked and "s__a00" not in walked


async def test_legacy_server_to_client_requests_reach_the_right_client_among_concurrent_ones(serve: Any) -> None:
    """Two handshake-era clients call the same backend at the same time; each backend request is relayed to
    the client whose call made it (each client has its own session to the backend), never to the other."""
    router = McpRouter()
    router.mount("asking", InProcessBackend(legacy_asking_server().streamable_http_app(), mode="legacy"))
    served = serve(router)
    both_asked = anyio.Event()
    asked: list[str] = []

    def answering(name: str) -> Any:
        async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            asked.append(f"{name}: {params.messages[0].content.text}")  # type: ignore[union-attr]
            if len(asked) == 2:
                both_asked.set()
            with anyio.fail_after(10):
                await both_asked.wait()  # both calls are running on the backend at once
            return types.CreateMessageResult(role="assistant", content=types.TextContent(text=name), model="test")

        return sampling

    results: dict[str, str] = {}

    async def client(name: str) -> None:
        async with connect(served.mcp_url, "legacy", sampling_callback=answering(name)) as session:
            result = await session.call_tool("asking__ask_model", {"question": f"question of {name}"})
            results[name] = result.content[0].text  # type: ignore[union-attr]

    async with anyio.create_task_group() as group:
        group.start_soon(client, "alice")
        group.start_soon(client, "bob")
    assert sorted(asked) == ["alice: question of alice", "bob: question of bob"]
    assert results == {"alice": "model said alice", "bob": "model said bob"}
