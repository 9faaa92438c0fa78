"""The app's error answers completed on the way out: the request's id filled in, empty 405/406 given a body,
and nothing that streams held back.

The SDK answers some refusals with `"id": null` although the core read the id (legacy session errors,
406) and answers 405/406 of the modern era with an empty body. `McpCoreMiddleware` (its start guard)
and the response tap (tracing, cache, breaker) complete those answers; everything else passes as sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware import McpCoreMiddleware
from mcp_middleware.core.error_answers import ErrorHold, complete_error
from tests.conftest import Served, connect
from tests.servers import build_server

pytestmark = pytest.mark.anyio

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
LEGACY = {**HEADERS, "mcp-protocol-version": "2025-11-25"}


def start(status: int, *headers: tuple[bytes, bytes]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(content: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": content, "more_body": more}


JSON_TYPE = (b"content-type", b"application/json")
NULL_ID = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'


def test_an_id_null_error_gets_the_request_id_and_a_matching_length() -> None:
    head, tail = complete_error(7, start(404, JSON_TYPE, (b"content-length", b"81")), body(NULL_ID))
    assert orjson.loads(tail["body"]) == {"jsonrpc": "2.0", "id": 7, "error": orjson.loads(NULL_ID)["error"]}
    assert dict(head["headers"])[b"content-length"] == str(len(tail["body"])).encode()
    assert head["status"] == 404


@pytest.mark.parametrize(
    ("request_id", "head", "tail"),
    [
        (None, start(404, JSON_TYPE), body(NULL_ID)),  # the id is not known: nothing to fill in
        (7, start(404, JSON_TYPE), body(NULL_ID, more=True)),  # streamed: never held for a rewrite
        (7, start(404, (b"content-type", b"text/plain")), body(NULL_ID)),
        (7, start(404, JSON_TYPE, (b"content-encoding", b"gzip")), body(NULL_ID)),
        (7, start(404, JSON_TYPE), body(NULL_ID.replace(b"null", b"3"))),  # an id of its own
        (7, start(404, JSON_TYPE), body(b'{"error":"invalid_token","id":null}')),  # not JSON-RPC
        (7, start(404, JSON_TYPE), body(b'{"jsonrpc":"2.0","id":null,"result":{}}')),  # not an error
        (7, start(404, JSON_TYPE), body(b"null")),
        (7, start(200, JSON_TYPE), body(NULL_ID)),  # not an error status
        (7, start(404), body(b"")),  # empty, but neither 405 nor 406
        (7, start(404, JSON_TYPE), body(b'{"jsonrpc":"2.0","id":null,"error":' + b" " * 70_000 + b"{}}")),
    ],
)
def test_anything_else_passes_as_it_was_sent(request_id: int | None, head: Message, tail: Message) -> None:
    assert complete_error(request_id, head, tail) == (head, tail)


@pytest.mark.parametrize(("status", "words"), [(405, "Method Not Allowed"), (406, "Not Acceptable")])
def test_an_empty_405_or_406_gets_a_json_rpc_body(status: int, words: str) -> None:
    head, tail = complete_error(3, start(status, (b"allow", b"POST"), (b"content-length", b"0")), body(b""))
    message = orjson.loads(tail["body"])
    assert message["id"] == 3 and message["error"]["code"] == -32600 and words in message["error"]["message"]
    assert dict(head["headers"]) == {
        b"allow": b"POST",
        b"content-type": b"application/json",
        b"content-length": str(len(tail["body"])).encode(),
    }


def test_a_chunked_error_is_held_until_its_end_then_completed() -> None:
    """A proxied answer arrives in chunks (the last one empty): held while small, then completed whole."""
    hold = ErrorHold.start(7, start(404, JSON_TYPE, (b"content-length", b"81")))
    assert hold is not None
    assert hold.add(body(NULL_ID[:30], more=True)) is None
    assert hold.add(body(NULL_ID[30:], more=True)) is None
    released = hold.add(body(b""))
    assert released is not None and len(released) == 2
    head, tail = released
    assert orjson.loads(tail["body"])["id"] == 7 and tail["more_body"] is False
    assert dict(head["headers"])[b"content-length"] == str(len(tail["body"])).encode()


def test_what_cannot_need_completing_is_not_held() -> None:
    assert ErrorHold.start(7, start(200, JSON_TYPE)) is None
    assert ErrorHold.start(7, start(404, (b"content-type", b"text/event-stream"))) is None
    assert ErrorHold.start(7, start(404, JSON_TYPE, (b"content-encoding", b"br"))) is None
    assert ErrorHold.start(None, start(404, JSON_TYPE)) is None  # no id to fill in, no empty 405/406
    assert ErrorHold.start(None, start(406)) is not None


def test_a_large_error_body_is_released_as_it_came_once_past_the_bound() -> None:
    hold = ErrorHold.start(7, start(400, JSON_TYPE))
    assert hold is not None
    chunks = [body(b"x" * 40_000, more=True), body(b"y" * 40_000, more=True)]
    assert hold.add(chunks[0]) is None
    released = hold.add(chunks[1])
    assert released == [start(400, JSON_TYPE), *chunks]  # and from now on the caller forwards as usual


def test_nothing_to_complete_keeps_the_original_chunks() -> None:
    hold = ErrorHold.start(7, start(404, JSON_TYPE))
    assert hold is not None
    parts = [body(b'{"jsonrpc":"2.0","id":7,', more=True), body(b'"error":{"code":1,"message":"m"}}')]
    assert hold.add(parts[0]) is None
    assert hold.add(parts[1]) == [start(404, JSON_TYPE), *parts]


def test_an_id_only_the_stdlib_can_write_is_written() -> None:
    _, tail = complete_error("\ud800", start(404, JSON_TYPE), body(NULL_ID))
    assert b'"id":"\\ud800"' in tail["body"]


class _Crashes:
    """Starts an error response, then crashes before its body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "http.response.start", "status": 404, "headers": [JSON_TYPE]})
        raise RuntimeError("boom")


@pytest.mark.parametrize("hook", [None, lambda request, outcome: None])
async def test_a_crash_after_a_held_error_start_still_gets_the_json_rpc_500(
    serve: Callable[[Any], Served], hook: Any
) -> None:
    """The held start was never sent, so the client gets the core's 500 with its id, not a broken response."""
    served = serve(McpCoreMiddleware(_Crashes(), on_outcome=hook))
    async with httpx2.AsyncClient() as http:
        response = await http.post(served.mcp_url, content=b'{"jsonrpc":"2.0","id":4,"method":"ping"}', headers=LEGACY)
    assert response.status_code == 500
    assert orjson.loads(response.content) == {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": -32603, "message": "Internal error"},
    }


@pytest.mark.parametrize("hook", [None, lambda request, outcome: None], ids=["guard", "tap"])
async def test_the_sdks_session_errors_carry_the_request_id(serve: Callable[[Any], Served], hook: Any) -> None:
    served = serve(McpCoreMiddleware(build_server().streamable_http_app(), on_outcome=hook))
    request = b'{"jsonrpc":"2.0","id":"x-1","method":"tools/list"}'
    async with httpx2.AsyncClient() as http:
        missing = await http.post(served.mcp_url, content=request, headers=LEGACY)
        unknown = await http.post(served.mcp_url, content=request, headers={**LEGACY, "mcp-session-id": "f" * 32})
    assert (missing.status_code, unknown.status_code) == (400, 404)
    for response in (missing, unknown):
        message = orjson.loads(response.content)
        assert message["id"] == "x-1" and message["error"]["code"] == -32600
        assert response.headers["content-length"] == str(len(response.content))


@pytest.mark.parametrize("hook", [None, lambda request, outcome: None], ids=["guard", "tap"])
async def test_successful_and_streamed_answers_pass_untouched(serve: Callable[[Any], Served], hook: Any) -> None:
    """A legacy session with SSE answers and a modern JSON one: both work through the guard and the tap."""
    served = serve(McpCoreMiddleware(build_server().streamable_http_app(), on_outcome=hook))
    for era in ("legacy", "modern"):
        async with connect(served.mcp_url, era) as client:  # type: ignore[arg-type]
            result = await client.call_tool("slow", {"steps": 2})
            assert result.content[0].text == "done after 2 steps"  # type: ignore[union-attr]
            failed = await client.call_tool("failing", {"reason": "r"})
            assert failed.is_error
