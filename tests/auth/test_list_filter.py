"""With `filter_lists`, a caller sees only the tools, prompts and resources its scopes let it use."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.client.streamable_http import streamable_http_client
from starlette.types import Message

from mcp_middleware.auth import AuthMiddleware, ListFilter, StaticTokenVerifier
from tests.auth.conftest import serve_late
from tests.conftest import ERAS, Era, connect
from tests.servers import build_server

pytestmark = pytest.mark.anyio


def start(serve: Any, *, filter_lists: bool = True) -> str:
    mcp_app = build_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    slot.app = AuthMiddleware(
        mcp_app,
        verifier=StaticTokenVerifier(
            {"reader": ["mcp:read"], "admin": ["mcp:read", "admin", "prompts", "resources"]}, resource=served.mcp_url
        ),
        resource=served.mcp_url,
        authorization_servers=["https://idp.example"],
        required_scopes=["mcp:read"],
        scopes={
            "tools/call:large": "admin",
            "tools/call:slow": "admin",
            "prompts/get:*": "prompts",
            "resources/read:demo://*": "resources",
        },
        filter_lists=filter_lists,
    )
    return served.mcp_url


@asynccontextmanager
async def bearer_client(url: str, era: Era, token: str):  # type: ignore[no-untyped-def]
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client


@pytest.mark.parametrize("era", ERAS)
async def test_lists_show_only_what_the_caller_may_use(era: Era, serve: Any) -> None:
    url = start(serve)
    async with bearer_client(url, era, "reader") as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        prompts = (await client.list_prompts()).prompts
        resources = (await client.list_resources()).resources
        echoed = await client.call_tool("echo", {"text": "still works"})
    assert tools == ["echo", "failing", "lookup"]
    assert prompts == []
    assert resources == []
    assert echoed.content[0].text == "still works"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_a_caller_with_every_scope_sees_everything(era: Era, serve: Any) -> None:
    url = start(serve)
    async with bearer_client(url, era, "admin") as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        resources = [str(r.uri) for r in (await client.list_resources()).resources]
    assert tools == ["echo", "failing", "large", "lookup", "slow"]
    assert prompts == ["greet"]
    assert resources == ["demo://greeting"]


async def test_without_filtering_lists_are_untouched(serve: Any) -> None:
    url = start(serve, filter_lists=False)
    async with bearer_client(url, "modern", "reader") as client:
        assert len((await client.list_tools()).tools) == 5


def sse(event: dict[str, Any], split: int | None = None) -> list[bytes]:
    raw = b"event: message\r\ndata: " + orjson.dumps(event) + b"\r\n\r\n"
    return [raw] if split is None else [raw[:split], raw[split:]]


async def test_sse_events_other_than_the_result_pass_at_once() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    allowed = {"echo"}
    wrapper = ListFilter(
        send,
        method="tools/list",
        request_id=3,
        allowed=lambda method, name: method == "tools/call" and name in allowed,
        max_bytes=1 << 20,
    )
    await wrapper({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    assert sent[-1]["type"] == "http.response.start"
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
    await wrapper({"type": "http.response.body", "body": sse(progress)[0], "more_body": True})
    assert sent[-1]["body"] == sse(progress)[0], "a progress event is forwarded at once, unchanged"
    result = {"jsonrpc": "2.0", "id": 3, "result": {"tools": [{"name": "echo"}, {"name": "secret"}]}}
    first, second = sse(result, split=25)
    await wrapper({"type": "http.response.body", "body": first, "more_body": True})
    await wrapper({"type": "http.response.body", "body": second, "more_body": True})
    await wrapper({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": False})
    body = b"".join(m.get("body", b"") for m in sent[2:])
    data = [line[6:] for line in body.split(b"\r\n") if line.startswith(b"data: ")]
    assert orjson.loads(data[0])["result"]["tools"] == [{"name": "echo"}]
    assert body.endswith(b": ping\r\n\r\n")
    assert sent[-1]["more_body"] is False


async def test_a_json_result_gets_a_corrected_content_length() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    wrapper = ListFilter(
        send, method="prompts/list", request_id="a", allowed=lambda m, n: n == "keep", max_bytes=1 << 20
    )
    body = orjson.dumps({"jsonrpc": "2.0", "id": "a", "result": {"prompts": [{"name": "keep"}, {"name": "drop"}]}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await wrapper({"type": "http.response.start", "status": 200, "headers": headers})
    assert sent == [], "the start waits for the one JSON message it must rewrite"
    await wrapper({"type": "http.response.body", "body": body[:10], "more_body": True})
    await wrapper({"type": "http.response.body", "body": body[10:], "more_body": False})
    start, end = sent
    new_body = end["body"]
    assert orjson.loads(new_body)["result"]["prompts"] == [{"name": "keep"}]
    assert dict(start["headers"])[b"content-length"] == str(len(new_body)).encode()


async def test_an_error_response_passes_untouched() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    wrapper = ListFilter(send, method="tools/list", request_id=1, allowed=lambda m, n: False, max_bytes=1 << 20)
    await wrapper({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})
    await wrapper({"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":1,"error":{}}', "more_body": False})
    assert sent[1]["body"] == b'{"jsonrpc":"2.0","id":1,"error":{}}'


progress_events = st.lists(st.integers(min_value=0, max_value=10**6), max_size=4)
tool_names = st.lists(st.text(alphabet="abcdefghij_", min_size=1, max_size=8), max_size=6, unique=True)


@settings(max_examples=150, deadline=None)
@given(
    before=progress_events,
    names=tool_names,
    after=progress_events,
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12),
    line_end=st.sampled_from([b"\r\n", b"\n"]),
)
def test_any_chunking_of_an_sse_stream_gives_the_same_filtered_events(
    before: list[int], names: list[str], after: list[int], cuts: list[int], line_end: bytes
) -> None:
    def event(message: dict[str, Any]) -> bytes:
        return b"event: message" + line_end + b"data: " + orjson.dumps(message) + line_end + line_end

    def progress(n: int) -> bytes:
        return event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}})

    result = {"jsonrpc": "2.0", "id": 9, "result": {"tools": [{"name": n} for n in names]}}
    stream = b"".join([*map(progress, before), event(result), *map(progress, after)])
    points = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def drive() -> None:
        wrapper = ListFilter(
            send, method="tools/list", request_id=9, allowed=lambda m, n: n.startswith("a"), max_bytes=1 << 20
        )
        await wrapper(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
        )
        for n, chunk in enumerate(chunks):
            await wrapper({"type": "http.response.body", "body": chunk, "more_body": n < len(chunks) - 1})

    anyio.run(drive)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[-1]["more_body"] is False
    messages = [orjson.loads(line.split(b"data: ", 1)[1]) for line in body.splitlines() if line.startswith(b"data: ")]
    expected = [{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}} for n in before]
    expected.append({"jsonrpc": "2.0", "id": 9, "result": {"tools": [{"name": n} for n in names if n.startswith("a")]}})
    expected += [{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}} for n in after]
    assert messages == expected
