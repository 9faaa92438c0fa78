"""A request through the breaker leaves none of its state to the garbage collector.

At the end of every request the `mcp` SDK cancels its disconnect watcher if it is still waiting in
`receive`, and the cancellation's traceback is a reference cycle only the collector frees; it holds
every frame the watcher waited in. The breaker's `receive` is such a frame: it must not hold the call,
and through it the request's scope, decisions and response state (measured: 27 more objects a
request for the collector).

uvicorn wakes the watcher with `http.disconnect` as soon as the response is complete, so it is not
cancelled there; a host that reports the disconnect only when the connection closes (an HTTP/2 or
in-process host, the router's own in-process calls, this benchmark's driver) leaves it waiting. So
the test is such a host: the real SDK app, called in process, its lifespan run, and a `receive` that
blocks after the body as long as the connection is open.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from starlette.types import ASGIApp, Message

from mcp_middleware.breaker import CircuitBreakerMiddleware
from mcp_middleware.breaker.call import Call
from mcp_middleware.core import DECISIONS_SCOPE_KEY, Decision, McpRequest
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

OURS = (Call, McpRequest, Decision)


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable during the test (kept for inspection, then freed)."""
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def call_echo(app: ASGIApp, request_id: int) -> list[Message]:
    """One modern `tools/call` of `echo`, on a connection that stays open after the response."""
    body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "hi"}}, request_id)
    headers = [(k.lower().encode(), v.encode()) for k, v in modern_headers("tools/call", "echo").items()]
    headers += [(b"host", b"127.0.0.1:8000"), (b"content-length", str(len(body)).encode())]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    delivered = False
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # the connection stays open: no disconnect to report
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(30):
        await app(scope, receive, send)
    return sent


async def test_a_guarded_request_leaves_no_call_scope_or_decision_in_a_reference_cycle(
    saved_garbage: list[object],
) -> None:
    server = build_server()
    app = CircuitBreakerMiddleware(server.streamable_http_app())
    async with server.session_manager.run():
        for request_id in range(3):
            sent = await call_echo(app, request_id)
            assert sent[0]["status"] == 200 and b'"hi"' in b"".join(m.get("body", b"") for m in sent[1:])
    gc.collect()
    saved_garbage.extend(gc.garbage)
    assert len(saved_garbage) > 0  # the SDK's cancelled watchers are there: the check looked at something
    assert [type(o).__qualname__ for o in saved_garbage if isinstance(o, OURS)] == []
    assert [o for o in saved_garbage if type(o) is dict and DECISIONS_SCOPE_KEY in o] == []
