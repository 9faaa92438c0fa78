"""`read_request`'s three answers, each unpacked in one line: a request, another path, or already answered."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mcp_middleware.core import ANSWERED, RequestKind, read_request

pytestmark = pytest.mark.anyio

HEADERS = [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream")]


def scope_of(path: str = "/mcp", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": list(HEADERS)}


class Wire:
    def __init__(self, *messages: dict[str, Any]) -> None:
        self.inbox = list(messages)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return self.inbox.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def test_a_request_comes_back_with_a_receive_that_replays_its_body() -> None:
    body = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'
    wire = Wire({"type": "http.request", "body": body})
    request, receive = await read_request(scope_of(), wire.receive, wire.send)
    assert request is not None and request.kind is RequestKind.REQUEST and request.id == 7
    assert receive is not ANSWERED and receive != wire.receive
    assert await receive() == {"type": "http.request", "body": body, "more_body": False}
    assert wire.sent == []


async def test_another_path_comes_back_unread_with_the_same_receive() -> None:
    wire = Wire({"type": "http.request", "body": b"not json"})
    request, receive = await read_request(scope_of("/api/items"), wire.receive, wire.send)
    assert request is None and receive == wire.receive  # (a bound method: equal, not identical)
    assert len(wire.inbox) == 1 and wire.sent == []  # the body was not read


async def test_bad_input_is_answered_by_the_core_and_comes_back_answered() -> None:
    wire = Wire({"type": "http.request", "body": b'{"jsonrpc":"2.0","id":3,"method":'})
    request, receive = await read_request(scope_of(), wire.receive, wire.send)
    assert request is None and receive is ANSWERED
    start, body = wire.sent
    assert start["status"] == 400
    assert orjson.loads(body["body"])["error"]["code"] == -32700


async def test_a_client_that_left_comes_back_answered_with_nothing_sent() -> None:
    wire = Wire({"type": "http.disconnect"})
    request, receive = await read_request(scope_of(), wire.receive, wire.send)
    assert request is None and receive is ANSWERED and wire.sent == []
    assert await receive() == {"type": "http.disconnect"}  # called anyway: the client has gone


async def test_a_later_middleware_gets_the_same_view_without_reading_again() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    wire = Wire({"type": "http.request", "body": body})
    scope = scope_of()
    first, receive = await read_request(scope, wire.receive, wire.send)
    second, again = await read_request(scope, receive, wire.send)
    assert second is first and again is receive


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
async def test_a_scope_that_is_not_http_passes_through_unread(kind: str) -> None:
    """Middlewares need no `scope["type"]` check of their own: the prologue passes these on."""
    wire = Wire({"type": "lifespan.startup"})
    scope: dict[str, Any] = {"type": kind} if kind == "lifespan" else {"type": kind, "path": "/mcp", "headers": []}
    request, receive = await read_request(scope, wire.receive, wire.send)
    assert request is None and receive == wire.receive
    assert wire.inbox == [{"type": "lifespan.startup"}] and wire.sent == []
    assert "mcp_middleware.request" not in scope  # nothing decided for a later HTTP scope to trip over


@pytest.mark.parametrize("limit", [9, 10, 999.5, 1000, 4 * 1024 * 1024])
async def test_a_declared_length_is_refused_exactly_when_it_spells_more_than_the_bound(limit: float) -> None:
    """The kernel parses `Content-Length` only when it has as many characters as the bound has digits (a
    shorter value cannot spell more, whatever it holds): the answer is the parse's for every spelling."""
    from mcp_middleware.core import CoreConfig

    config = CoreConfig(max_body_size=limit)  # type: ignore[arg-type]  # (a float bound, as a config may give)
    digits = len(str(int(limit)))
    values = {"", "0", "abc", " 9", "+9", "-99999999", "1_0", "9" * (digits - 1), "9" * digits, "9" * (digits + 1)}
    values |= {str(int(limit)), str(int(limit) + 1), f" {int(limit) + 1}", f"0{int(limit) + 1}", "1" + "0" * digits}
    values |= {"٣" * digits, "1e9", "0x" + "f" * digits, "9" * (digits - 1) + " "}
    for value in sorted(values):
        try:
            expected = int(value.encode()) > limit
        except ValueError:
            expected = False
        body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
        wire = Wire({"type": "http.request", "body": body})
        scope = scope_of()
        scope["headers"].append((b"content-length", value.encode()))
        request, receive = await read_request(scope, wire.receive, wire.send, config)
        refused = bool(wire.sent) and wire.sent[0]["status"] == 413
        assert refused is (expected or len(body) > limit), (limit, value)
        assert (len(wire.inbox) == 1) is expected, (limit, value)  # refused by its declared length: body unread
        if not refused:
            assert request is not None and receive is not ANSWERED, (limit, value)


async def test_the_replay_hands_the_app_the_message_the_server_sent_or_one_whole_body() -> None:
    """A whole body in one message (`more_body: False`) is handed on as the server sent it; a body without
    `more_body`, or sent in chunks, is handed as one message of the whole body. Once, then the real receive."""
    body = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'
    whole = {"type": "http.request", "body": body, "more_body": False}
    chunked = (
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.request", "body": body[10:], "more_body": False},
    )
    for messages, same in (((whole,), True), (({"type": "http.request", "body": body},), False), (chunked, False)):
        wire = Wire(*messages, {"type": "http.disconnect"})
        request, receive = await read_request(scope_of(), wire.receive, wire.send)
        assert request is not None and request.id == 7
        replayed = await receive()
        assert replayed == {"type": "http.request", "body": body, "more_body": False}
        assert (replayed is messages[0]) is same
        assert await receive() == {"type": "http.disconnect"}
