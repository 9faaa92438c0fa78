"""The backends the cache tests put behind the cache: real SDK servers, a call counter, and a test principal.

`PrincipalFromHeader` is a TEST-ONLY stand-in for the auth middleware (built separately): it
turns the `x-test-user` header into a principal with `set_principal`, exactly the hand-off the
real auth middleware makes, so the cache's partitioning can be tested without tokens.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import orjson
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.caching import CacheHint
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import Principal, set_principal
from tests.conftest import Era, connect

ISSUER = "https://idp.test"
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
CACHEABLE = ("server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list")


class CountingApp:
    """Counts the JSON-RPC requests that reach the backend, by method and by `method:target`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.calls: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            parsed = orjson.loads(body)
            params = parsed.get("params") or {}
            if "id" in parsed:
                self.calls[parsed["method"]] += 1
                target = params.get("name") or params.get("uri")
                if target:
                    self.calls[f"{parsed['method']}:{target}"] += 1
        except (orjson.JSONDecodeError, AttributeError, KeyError):
            pass
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class PrincipalFromHeader:
    """TEST ONLY: `x-test-user: alice` → `Principal(subject="alice", issuer=ISSUER, client_id="test-client")`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-test-user":
                    set_principal(scope, Principal(subject=value.decode(), issuer=ISSUER, client_id="test-client"))
        await self.app(scope, receive, send)


class FlakyApp:
    """Answers 503 (as an open breaker would) or raises, while `mode` says so; otherwise the backend answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.mode: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.mode is not None:
            body = orjson.loads((await receive())["body"])
            if body.get("method") not in ("initialize", "notifications/initialized") and "id" in body:
                if self.mode == "raise":
                    raise RuntimeError("backend crashed")
                if self.mode == "stream_error":  # a legacy failure: an error event inside a 200 stream
                    error = {"code": -32603, "message": "Internal error"}
                    event = orjson.dumps({"jsonrpc": "2.0", "id": body["id"], "error": error})
                    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                    await send(
                        {"type": "http.response.body", "body": b"event: message\r\ndata: " + event, "more_body": True}
                    )
                    await send({"type": "http.response.body", "body": b"\r\n\r\n", "more_body": False})
                    return
                error = {"code": -32015, "message": "Backend unavailable"}
                payload = orjson.dumps({"jsonrpc": "2.0", "id": body["id"], "error": error})
                headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": payload})
                return
            replayed = orjson.dumps(body)

            async def replay() -> Message:
                return {"type": "http.request", "body": replayed, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


def build_backend(*, scope: str = "public", ttl_ms: int = 60_000) -> MCPServer:
    """An MCPServer whose cacheable results carry `ttlMs`/`cacheScope`, with tools for each cache behaviour."""
    hints: dict[Any, CacheHint] = {method: CacheHint(ttl_ms=ttl_ms, scope=scope) for method in CACHEABLE}  # type: ignore[arg-type]
    hints["resources/read"] = CacheHint(ttl_ms=ttl_ms, scope="private")
    server = MCPServer("cache-test-backend", cache_hints=hints)
    state = {"version": 0}

    @server.tool()
    def echo(text: str) -> str:
        """Not read-only: never cached unless allow-listed."""
        return text

    @server.tool(annotations=READ_ONLY)
    def lookup(key: str) -> str:
        """Read-only; the answer changes with every backend call, so a hit is recognisable."""
        state["version"] += 1
        return f"{key}@{state['version']}"

    @server.tool(annotations=READ_ONLY)
    async def slow_lookup(key: str) -> str:
        """Read-only and slow: concurrent identical calls overlap."""
        await anyio.sleep(0.3)
        state["version"] += 1
        return f"{key}@{state['version']}"

    @server.tool(annotations=READ_ONLY)
    def whoami(ctx: Context) -> str:
        """Read-only but private: who the backend thinks is calling (the test user header)."""
        request = ctx.request_context.request
        return request.headers.get("x-test-user", "nobody") if request is not None else "nobody"

    @server.tool(annotations=READ_ONLY)
    async def progress_lookup(key: str, ctx: Context) -> str:
        """Read-only, and reports progress first: the modern backend answers it as an event stream."""
        await ctx.report_progress(1, 1, "looked up")
        state["version"] += 1
        return f"{key}@{state['version']}"

    @server.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Adds a tool at runtime and says so, on the stream the client's era listens on."""

        def added() -> str:
            return name

        server.add_tool(added, name=name, description=f"added at runtime: {name}")
        with contextlib.suppress(Exception):
            await ctx.notify_tools_changed()  # modern: subscriptions/listen
        with contextlib.suppress(Exception):
            await ctx.request_context.session.send_tool_list_changed()  # legacy: the GET stream
        return f"added {name}"

    @server.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Says the resource at `uri` changed."""
        state["version"] += 1
        with contextlib.suppress(Exception):
            await ctx.notify_resource_updated(uri)
        with contextlib.suppress(Exception):
            await ctx.request_context.session.send_resource_updated(uri)
        return "touched"

    @server.resource("demo://counter")
    def counter() -> str:
        """The backend's version counter."""
        return f"version {state['version']}"

    @server.prompt()
    def greet(name: str) -> str:
        """A prompt with one argument."""
        state["version"] += 1
        return f"Say hello to {name} (v{state['version']})."

    return server


PAGES = {None: ("a", "p2"), "p2": ("b", ""), "": ("c", None)}
"""Three pages of resources; the last cursor is the empty string, which is a valid cursor."""


def build_paged_backend() -> Server[Any]:
    """A low-level server whose resources/list has three pages (cursors `p2` and `""`)."""

    async def list_resources(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        cursor = params.cursor if params is not None else None
        name, next_cursor = PAGES[cursor]
        return types.ListResourcesResult(
            resources=[types.Resource(uri=f"page://{name}", name=name)], next_cursor=next_cursor
        )

    return Server(
        "paged",
        cache_hints={"resources/list": CacheHint(ttl_ms=60_000, scope="public")},
        on_list_resources=list_resources,
    )


@contextlib.asynccontextmanager
async def connect_as(url: str, era: Era, user: str | None = None, **kwargs: Any) -> AsyncIterator[Client]:
    """`connect(...)` (client cache off) with the test user header on every request."""
    headers = {"x-test-user": user} if user is not None else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        transport = streamable_http_client(url, http_client=http)
        async with connect(transport, era, **kwargs) as client:  # type: ignore[arg-type]
            yield client
