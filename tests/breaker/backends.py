"""Misbehaving MCP backends for the breaker tests: real `MCPServer` tools plus an ASGI fault injector.

- `flaky`: answers a JSON-RPC internal error (-32603) the first `fail_times` calls, then recovers;
- `hang`: never returns (until cancelled; the log says which);
- `stream`: reports progress, then returns (an SSE response in both eras);
- the :class:`FaultInjector` in front of the SDK app makes chosen tools drop the connection
  before responding (the app raises), vanish (return without a response), or break an SSE
  stream after its first event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import orjson
from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.breaker import BreakerRegistry
from mcp_middleware.core import JsonRpcCode, get_mcp_request
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import held_within

__all__ = [
    "BackendLog",
    "FaultInjector",
    "always",
    "build_backend",
    "first",
    "modern_call",
    "post_modern",
    "post_scope",
    "settled",
]


@dataclass
class BackendLog:
    """What the backend did, seen from the server side."""

    fail_times: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    def count(self, tool: str) -> int:
        self.calls[tool] = self.calls.get(tool, 0) + 1
        return self.calls[tool]


def build_backend(log: BackendLog) -> MCPServer:
    server = MCPServer("faulty-backend")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged (not annotated: never retried unless allow-listed)."""
        log.count("echo")
        return text

    @server.tool()
    def flaky(text: str) -> str:
        """Fail with a JSON-RPC internal error the first `log.fail_times` calls."""
        if log.count("flaky") <= log.fail_times:
            raise MCPError(code=JsonRpcCode.INTERNAL_ERROR, message="backend database is down")
        return f"recovered: {text}"

    @server.tool()
    def failing(reason: str) -> str:
        """A tool error (isError: true): the backend works, the tool reports a failure."""
        log.count("failing")
        raise ValueError(f"failed on purpose: {reason}")

    @server.tool()
    async def hang(ctx: Context) -> str:
        """Never returns until cancelled."""
        log.events.append("hang started")
        try:
            await ctx.report_progress(0, 1, "hanging")
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            log.events.append("hang cancelled")
            raise
        return "unreachable"

    @server.tool()
    async def quiet_hang() -> str:
        """Never returns and never sends anything (the modern era answers it as JSON, once it ends)."""
        log.events.append("quiet_hang started")
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            log.events.append("quiet_hang cancelled")
            raise
        return "unreachable"

    @server.tool()
    async def stream(steps: int, ctx: Context) -> str:
        """Report progress `steps` times, then return."""
        for done in range(steps):
            await ctx.report_progress(done + 1, steps)
            await anyio.sleep(0.05)
        return f"streamed {steps}"

    @server.tool()
    async def stream_fail(ctx: Context) -> str:
        """Report progress (so the response is an SSE stream in both eras), then fail with -32603."""
        await ctx.report_progress(1, 2)
        await anyio.sleep(0.05)
        raise MCPError(code=JsonRpcCode.INTERNAL_ERROR, message="lost the backend half-way")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def lookup(key: str) -> str:
        """Read-only: safe to retry."""
        log.count("lookup")
        return {"a": "alpha", "b": "beta"}.get(key, "unknown")

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, idempotent_hint=True))
    def set_flag(value: bool) -> str:
        """Idempotent: safe to retry."""
        log.count("set_flag")
        return f"flag={value}"

    return server


Fault = Callable[[int], str | None]


class FaultInjector:
    """Wraps the SDK app. For a `tools/call` of a tool (or another method) named in `faults`,
    `faults[name](n)` (n = the call's number, from 1) says what goes wrong:

    - `"raise"`: the app raises before responding (a proxy whose backend connection failed);
    - `"vanish"`: the app returns without a response;
    - `"break"`: an SSE response sends one notification (progress if asked for), then the app raises;
    - `"break_json"`: a JSON response sends part of its body, then the app raises;
    - `None`: behave.
    """

    def __init__(self, app: ASGIApp, faults: dict[str, Fault]) -> None:
        self.app = app
        self.faults = faults
        self.calls: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = get_mcp_request(scope) if scope["type"] == "http" else None
        name = None if request is None else request.name if request.method == "tools/call" else request.method
        if name is None or name not in self.faults:
            await self.app(scope, receive, send)
            return
        self.calls[name] = self.calls.get(name, 0) + 1
        fault = self.faults[name](self.calls[name])
        if fault == "raise":
            raise ConnectionResetError("backend connection reset")
        if fault == "vanish":
            return
        if fault == "break":
            assert request is not None
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            token = request.progress_token
            notification = (
                {"method": "notifications/progress", "params": {"progressToken": token, "progress": 1, "total": 2}}
                if token is not None
                else {"method": "notifications/message", "params": {"level": "info", "data": "working"}}
            )
            event = b"event: message\r\ndata: " + orjson.dumps({"jsonrpc": "2.0", **notification}) + b"\r\n\r\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
            raise ConnectionResetError("backend stream broke off")
        if fault == "break_json":
            headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"jsonrpc": "2.0", ', "more_body": True})
            raise ConnectionResetError("backend body broke off")
        await self.app(scope, receive, send)


def always(fault: str) -> Fault:
    return lambda n: fault


def first(times: int, fault: str) -> Fault:
    return lambda n: fault if n <= times else None


async def settled(registry: BreakerRegistry, calls: int, key: str = "/mcp") -> None:
    """Wait until the breaker `key` has judged `calls` calls.

    It judges a call when the response ends, which can be a moment after the client has read
    the JSON-RPC response from an SSE stream and moved on: a test that counts on the order of
    verdicts waits for them.
    """
    breaker = registry.get(key)
    assert await held_within(lambda: breaker.window_counts()[0] >= calls), breaker.snapshot()


def modern_call(tool: str, arguments: dict[str, Any], request_id: int = 1, *, progress: bool = False) -> dict[str, Any]:
    """The body and headers of a 2026-07-28 `tools/call` (what the SDK client sends), as `httpx2` post arguments."""
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if progress:
        params["_meta"] = {"progressToken": "p-1"}
    return {"content": modern_body("tools/call", params, request_id), "headers": modern_headers("tools/call", tool)}


def post_scope(body: bytes, headers: dict[str, str]) -> Scope:
    """The ASGI scope of a POST of `body` to `/mcp` with `headers`, as a server makes it (for in-process drives)."""
    return {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]
        + [(b"host", b"127.0.0.1:8000"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def post_modern(url: str, tool: str, arguments: dict[str, Any], request_id: int = 1) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(url, **modern_call(tool, arguments, request_id))


def scripted_receive(messages: list[Message]) -> Receive:
    """A host's `receive` that gives `messages` in order, then waits as an open connection does."""
    pending = iter(messages)

    async def receive() -> Message:
        message = next(pending, None)
        if message is None:
            await asyncio.Event().wait()
        assert message is not None
        return message

    return receive
