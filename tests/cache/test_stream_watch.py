"""The stream watch reads notifications up to its bound; a larger event passes through untouched and unread."""

from __future__ import annotations

import orjson
import pytest
from starlette.types import Message

from mcp_middleware.cache.invalidation import NOTIFICATION_MAX_BYTES, StreamWatch

pytestmark = pytest.mark.anyio

LIST_CHANGED = "notifications/tools/list_changed"


def event(message: dict[str, object]) -> bytes:
    return b"event: message\r\ndata: " + orjson.dumps(message) + b"\r\n\r\n"


def stream(padding: int) -> list[Message]:
    """A notification stream: one list_changed event `padding` bytes large (in 16 KiB chunks), then a small one."""
    big = event({"jsonrpc": "2.0", "method": LIST_CHANGED, "params": {"_meta": {"pad": "x" * padding}}})
    small = event({"jsonrpc": "2.0", "method": LIST_CHANGED})
    chunks = [big[i : i + 16384] for i in range(0, len(big), 16384)] + [small]
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    return [
        {"type": "http.response.start", "status": 200, "headers": headers},
        *({"type": "http.response.body", "body": chunk, "more_body": True} for chunk in chunks),
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


async def watch(messages: list[Message], max_bytes: int) -> tuple[list[Message], list[tuple[str, str | None]]]:
    forwarded: list[Message] = []
    invalidated: list[tuple[str, str | None]] = []

    async def send(message: Message) -> None:
        forwarded.append(message)

    async def invalidate(notification: str, uri: str | None) -> None:
        invalidated.append((notification, uri))

    watcher = StreamWatch(send, invalidate, max_bytes=max_bytes)
    for message in messages:
        await watcher.send(message)
    return forwarded, invalidated


async def test_an_event_over_the_bound_passes_through_untouched_and_is_not_read() -> None:
    messages = stream(padding=1 << 20)
    forwarded, invalidated = await watch(messages, max_bytes=NOTIFICATION_MAX_BYTES)
    assert forwarded == messages  # every message, in order, unchanged
    assert invalidated == [
        (LIST_CHANGED, None)
    ]  # only the small event was read; the parser recovered after the big one


async def test_the_bound_is_the_one_given() -> None:
    messages = stream(padding=200 * 1024)
    _, read_with_room = await watch(messages, max_bytes=1 << 20)
    assert read_with_room == [(LIST_CHANGED, None)] * 2  # a bound above the event: both are read
    _, read_tight = await watch(messages, max_bytes=1024)
    assert read_tight == [(LIST_CHANGED, None)]


async def test_a_json_response_is_not_parsed() -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "method": LIST_CHANGED})
    messages: list[Message] = [
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]
    forwarded, invalidated = await watch(messages, max_bytes=NOTIFICATION_MAX_BYTES)
    assert forwarded == messages and invalidated == []
