"""The tool catalog's change handling on its own: the stream watch (split, huge and look-alike events), the
generation guard against a list read before a change, the fetcher's throttle lifted by a change, `ttlMs`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.types import Message

from mcp_middleware.policy import ArgumentValidationMiddleware, PolicyMiddleware, ToolCatalog
from mcp_middleware.policy.changes import ChangeWatch, watch_changes
from mcp_middleware.policy.fetch import fetcher_of
from mcp_middleware.router.stack_changes import tell_lists_changed

pytestmark = pytest.mark.anyio

TOOL = {"name": "t", "inputSchema": {"type": "object"}}
CHANGED = b'data: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}\r\n\r\n'
SSE_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream")],
}


def learned() -> ToolCatalog:
    catalog = ToolCatalog()
    catalog.learn([TOOL])
    return catalog


async def stream(catalog: ToolCatalog, chunks: list[bytes], start: Message = SSE_START) -> list[Message]:
    """Pass `chunks` through a watch; what came out, and the catalog's state at the moment each was forwarded."""
    out: list[Message] = []

    async def send(message: Message) -> None:
        out.append({**message, "known": catalog.get("t") is not None})

    watch = ChangeWatch(send, catalog)
    await watch(start)
    for index, chunk in enumerate(chunks):
        await watch({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})
    return out


async def test_a_list_changed_split_across_chunks_forgets_before_it_is_forwarded() -> None:
    catalog = learned()
    out = await stream(catalog, [b": ping\r\n\r\n", CHANGED[:20], CHANGED[20:]])
    assert b"".join(m.get("body", b"") for m in out) == b": ping\r\n\r\n" + CHANGED  # unchanged bytes
    assert [m["known"] for m in out] == [True, True, True, False]  # forgotten before the completing chunk went on
    assert catalog.get("t") is None and catalog.generation == 1


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}\r\n\r\n',
        b'data: {"jsonrpc":"2.0","id":4,"result":{"content":[{"type":"text",'
        b'"text":"notifications/tools/list_changed"}]}}\n\n',
        b'data: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"\r\n\r\n',  # broken JSON
        b"data: "
        + orjson.dumps({"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {"x": "y" * 70_000}})
        + b"\n\n",  # larger than any real one: passes unread (bounded work), the catalog ages out instead
    ],
    ids=["prompts", "a-result-mentioning-it", "broken-json", "over-64KiB"],
)
async def test_what_is_not_a_tools_list_changed_forgets_nothing(event: bytes) -> None:
    catalog = learned()
    out = await stream(catalog, [event])
    assert b"".join(m.get("body", b"") for m in out) == event
    assert catalog.get("t") is not None and catalog.generation == 0


async def test_a_json_answer_is_not_read() -> None:
    catalog = learned()
    start: Message = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    await stream(catalog, [b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}'], start)
    assert catalog.get("t") is not None


def test_the_policy_and_the_validator_sharing_a_catalog_watch_a_stream_once() -> None:
    catalog, other = ToolCatalog(), ToolCatalog()
    scope: dict[str, Any] = {}

    async def send(message: Message) -> None:
        pass

    first = watch_changes(scope, send, catalog)
    assert isinstance(first, ChangeWatch)
    assert watch_changes(scope, first, catalog) is first  # the inner layer adds no second parser
    assert isinstance(watch_changes(scope, first, other), ChangeWatch)  # another backend's catalog: its own


def test_a_list_read_before_a_change_is_not_learned_after_it() -> None:
    catalog = ToolCatalog()
    generation = catalog.generation
    catalog.forget()  # the backend said its tools changed while a fetch was reading the old list
    catalog.learn([TOOL], generation=generation)
    assert catalog.get("t") is None
    catalog.learn([TOOL], generation=catalog.generation)
    assert catalog.get("t") is not None


def test_a_change_lifts_the_fetch_throttle_and_ttl_ms_shortens_freshness() -> None:
    catalog = learned()
    fetcher = fetcher_of(catalog)
    fetcher._last = 1e18  # just fetched, as far as the throttle knows
    assert not fetcher._due("t") and not fetcher._due("u")
    catalog.forget()
    assert fetcher._due("t")  # fetched again at once, not after `interval`
    catalog.advertised_ttl = 0.001  # a hostile or careless `ttlMs: 1`
    assert catalog.fresh_for == 0.001 and catalog.needs_list("u")
    fetcher._last = __import__("time").monotonic()
    assert not fetcher._due("u")  # yet one fetch a second at most
    catalog.advertised_ttl = 10_000.0  # longer than max_age: max_age still bounds it
    assert catalog.fresh_for == catalog.max_age


def test_the_router_tells_every_layer_of_a_stack_that_keeps_a_catalog() -> None:
    async def backend(scope: Any, receive: Any, send: Any) -> None:
        pass

    catalog = learned()
    validator = ArgumentValidationMiddleware(backend, catalog=catalog)
    policy = PolicyMiddleware(validator, catalog=catalog, default="allow")

    class Opaque:  # a middleware of someone else's, with `app` as Starlette's have
        def __init__(self, app: Any) -> None:
            self.app = app

    stack = Opaque(policy)
    assert tell_lists_changed(stack, frozenset({"prompts"})) == 2 and catalog.get("t") is not None
    assert tell_lists_changed(stack, frozenset({"tools"})) == 2 and catalog.get("t") is None


async def test_a_list_answer_streaming_across_a_change_teaches_nothing() -> None:
    """The backend answers `tools/list` with what it had, and its list_changed arrives before the answer ends:
    the answer passes to the client as it is, but the catalog keeps nothing of it."""
    holder: dict[str, ArgumentValidationMiddleware] = {}

    async def backend(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        holder["validator"].lists_changed(frozenset({"tools"}))  # heard by the router while the list streams
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [TOOL]}})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    validator = holder["validator"] = ArgumentValidationMiddleware(backend, fetch_unknown=False)
    sent: list[Message] = []
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    headers = [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream")]
    headers.append((b"mcp-protocol-version", b"2025-11-25"))

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers, "query_string": b""}
    await validator(scope, receive, send)
    assert orjson.loads(sent[-1]["body"])["result"]["tools"] == [TOOL]
    assert validator.catalog.get("t") is None and validator.catalog.generation == 1
