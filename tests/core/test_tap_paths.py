"""The tap's `send` is a plain call for the common messages (observe, then return the forward's awaitable) and a
coroutine for the rest (`_send_held`: forward, then observe). Every message sequence, hostile ones included, must
leave the same forwarded messages and the same observations whichever path each message takes."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.types import Message

from mcp_middleware.core.request import Era, McpRequest, RequestKind
from mcp_middleware.core.tap import ResponseTap

REQUEST = McpRequest(kind=RequestKind.REQUEST, era=Era.MODERN, protocol_version="2026-07-28", method="tools/call", id=3)
NOTIFICATION = McpRequest(kind=RequestKind.NOTIFICATION, era=Era.MODERN, protocol_version="2026-07-28")

_ANSWERS = [
    orjson.dumps({"jsonrpc": "2.0", "id": 3, "result": {"content": [], "isError": False}}),
    orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "bad"}}),
    orjson.dumps({"jsonrpc": "2.0", "id": 4, "result": {}}),
    b"event: message\r\ndata: " + orjson.dumps({"jsonrpc": "2.0", "id": 3, "result": {"x": 1}}) + b"\r\n\r\n",
    b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n',
    b"{not json",
    b"",
    b"x" * 300,
]
_TYPES = [b"application/json", b"text/event-stream", b"Application/JSON; charset=utf-8", b"text/plain", None]


@st.composite
def _messages(draw: st.DrawFn) -> list[Message]:
    """A response as an app may send it: a start (any status, type, encoding), then a body in parts; sometimes
    a second start (after a failure), a body before any start, or a message of another type."""
    messages: list[Message] = []
    for _ in range(draw(st.integers(1, 2))):
        headers: list[tuple[bytes, bytes]] = []
        content_type = draw(st.sampled_from(_TYPES))
        if content_type is not None:
            headers.append((b"content-type", content_type))
        if draw(st.booleans()) and draw(st.booleans()):
            headers.append((b"content-encoding", draw(st.sampled_from([b"gzip", b"identity", b" Identity "]))))
        if draw(st.booleans()):
            headers.append((b"content-length", b"12"))
        status = draw(st.sampled_from([200, 202, 400, 404, 405, 406, 500, 503]))
        messages.append({"type": "http.response.start", "status": status, "headers": headers})
        body = draw(st.sampled_from(_ANSWERS))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        for i, part in enumerate(parts):
            message: Message = {"type": "http.response.body", "body": part}
            if i < len(parts) - 1 or draw(st.booleans()):
                message["more_body"] = i < len(parts) - 1
            messages.append(message)
    if draw(st.booleans()):
        messages.insert(
            draw(st.integers(0, len(messages))),
            {"type": draw(st.sampled_from(["http.response.trailers", "http.response.body"])), "body": b"{}"},
        )
    return messages


def _through(messages: list[Message], request: McpRequest, max_bytes: int, general: bool) -> tuple[Any, ...]:
    forwarded: list[Message] = []

    async def send(message: Message) -> None:
        forwarded.append(message)

    async def main() -> tuple[Any, ...]:
        tap = ResponseTap(send, request, max_bytes=max_bytes)
        for message in messages:
            await (tap._send_held(message) if general else tap.send(message))
        status, result, error, _ = tap.found()
        outcome = tap.outcome()
        return (
            forwarded,
            status,
            result,
            error,
            tap.content_type,
            tap.bytes,
            tap.complete,
            tap.truncated,
            outcome[:3],
            outcome[4:],
        )

    return anyio.run(main)


_AT_THE_BOUND = [  # a JSON answer exactly as long as the bound (kept), in one part and in two
    {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]},
    {"type": "http.response.body", "body": _ANSWERS[0]},
]
_IN_TWO = [_AT_THE_BOUND[0], {**_AT_THE_BOUND[1], "body": _ANSWERS[0][:9], "more_body": True}]
_IN_TWO.append({"type": "http.response.body", "body": _ANSWERS[0][9:], "more_body": False})


@settings(max_examples=400, deadline=None)
@example(messages=_AT_THE_BOUND, max_bytes=len(_ANSWERS[0]), notification=False)
@example(messages=_AT_THE_BOUND, max_bytes=len(_ANSWERS[0]) - 1, notification=False)
@example(messages=_IN_TWO, max_bytes=len(_ANSWERS[0]), notification=False)
@given(
    messages=_messages(), max_bytes=st.sampled_from([8, 64, len(_ANSWERS[0]), 300, 1 << 20]), notification=st.booleans()
)
def test_the_plain_send_observes_what_forwarding_first_observes(
    messages: list[Message], max_bytes: int, notification: bool
) -> None:
    request = NOTIFICATION if notification else REQUEST
    assert _through(messages, request, max_bytes, general=False) == _through(messages, request, max_bytes, general=True)


def test_the_common_messages_take_no_coroutine_of_the_tap() -> None:
    handed: list[object] = []

    def send(message: Message) -> object:
        handed.append(marker := object())
        return marker

    tap = ResponseTap(send, REQUEST)  # type: ignore[arg-type]
    start = tap.send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    body = tap.send({"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":3,"result":{}}'})
    assert [start, body] == handed  # the forward's own awaitables, as they are
    assert tap.found()[:3] == (200, {}, None)
