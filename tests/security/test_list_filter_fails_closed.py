"""Attacker: a caller with few scopes wants to see the tools it may not call. It cannot make the list
larger, but when the list is larger than the filter's bound the filter must refuse, not wave it through.

Real servers on loopback, real static tokens, the `mcp` SDK client in both eras (modern answers JSON,
legacy answers SSE here), and raw HTTP to read exactly what went over the wire.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import MCPError
from mcp.client.streamable_http import streamable_http_client
from starlette.types import Message

from mcp_middleware.auth import AuthMiddleware, ListFilter, StaticTokenVerifier
from mcp_middleware.core import CoreConfig, ErrorCode
from tests.auth.conftest import post_mcp, serve_late
from tests.conftest import ERAS, Era, connect
from tests.servers import build_server
from tests.support.requests import legacy_body, legacy_headers, legacy_session
from tests.support.sse import sse_messages

pytestmark = pytest.mark.anyio

BOUND = 512
"""Smaller than the test server's tools/list (five tools with their schemas, ~1.5 KB)."""


def start(serve: Any, *, json_response: bool, bound: int = BOUND) -> str:
    mcp_app = build_server().streamable_http_app(json_response=json_response)
    served, slot = serve_late(serve, mcp_app)
    slot.app = AuthMiddleware(
        mcp_app,
        verifier=StaticTokenVerifier({"reader": ["mcp:read"]}, resource=served.mcp_url),
        resource=served.mcp_url,
        required_scopes=["mcp:read"],
        scopes={"tools/call:large": "admin", "tools/call:slow": "admin"},
        filter_lists=True,
        config=CoreConfig(max_inspect_bytes=bound),
    )
    return served.mcp_url


async def legacy_list(url: str, *, json_response: bool) -> httpx2.Response:
    """A legacy session by hand (initialize, initialized, tools/list), to read the raw answer."""
    async with httpx2.AsyncClient(timeout=10) as http:
        session = await legacy_session(http, url, authorization="Bearer reader")
        listing = legacy_body("tools/list", {}, "list-1")
        return await http.post(url, content=listing, headers=legacy_headers(session, authorization="Bearer reader"))


async def test_a_json_list_over_the_bound_is_an_error_with_the_request_id(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = start(serve, json_response=True)
    with caplog.at_level(logging.WARNING, "mcp_middleware.auth"):
        answer = await post_mcp(url, authorization="Bearer reader", method="tools/list", params={}, request_id=41)
    assert answer.status_code == 502
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content)
    body = answer.json()
    assert body["id"] == 41 and body["error"]["code"] == ErrorCode.BAD_GATEWAY
    assert body["error"]["data"] == {"maxInspectBytes": BOUND}
    assert '"large"' not in answer.text and '"slow"' not in answer.text, "no tool name leaked"
    assert any("max_inspect_bytes" in r.getMessage() for r in caplog.records), "the operator is told"


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_a_legacy_list_over_the_bound_is_an_error_in_sse_and_json(serve: Any, json_response: bool) -> None:
    url = start(serve, json_response=json_response)
    answer = await legacy_list(url, json_response=json_response)
    assert '"large"' not in answer.text and '"slow"' not in answer.text, "no tool name leaked"
    if json_response:
        assert answer.status_code == 502
        messages = [answer.json()]
    else:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(answer.text)
    [error] = [m for m in messages if m.get("id") == "list-1"]
    assert error["error"]["code"] == ErrorCode.BAD_GATEWAY
    assert not any("result" in m for m in messages)


@pytest.mark.parametrize("era", ERAS)
async def test_the_sdk_client_sees_an_error_not_the_unfiltered_list(era: Era, serve: Any) -> None:
    url = start(serve, json_response=False)
    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer reader"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        with pytest.raises(MCPError) as refused:
            await client.list_tools()
        assert refused.value.error.code == ErrorCode.BAD_GATEWAY
        assert "larger than the 512 bytes" in refused.value.error.message


@pytest.mark.parametrize("era", ERAS)
async def test_under_the_bound_the_list_is_filtered_as_before(era: Era, serve: Any) -> None:
    url = start(serve, json_response=False, bound=1 << 20)
    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer reader"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        names = sorted(t.name for t in (await client.list_tools()).tools)
    assert names == ["echo", "failing", "lookup"]


# --- the wrapper itself, with streams a hostile or broken backend could produce ----------------------


def run_filter(chunks: list[bytes], *, bound: int, request_id: int = 9) -> list[dict[str, Any]]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def drive() -> None:
        wrapper = ListFilter(
            send, method="tools/list", request_id=request_id, allowed=lambda m, n: n == "public", max_bytes=bound
        )
        await wrapper(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
        )
        for n, chunk in enumerate(chunks):
            await wrapper({"type": "http.response.body", "body": chunk, "more_body": n < len(chunks) - 1})

    anyio.run(drive)
    assert sent[-1]["more_body"] is False
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return [orjson.loads(line[5:]) for line in body.splitlines() if line.startswith(b"data:")]


def event(message: dict[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + orjson.dumps(message) + b"\r\n\r\n"


def listing(names: list[str], request_id: int = 9) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"tools": [{"name": n} for n in names]}}


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=6000), max_size=10))
def test_a_huge_result_event_never_passes_whatever_the_chunking(cuts: list[int]) -> None:
    stream = event(listing(["public", *[f"secret_{n:04}" for n in range(300)]]))
    points = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    messages = run_filter(chunks, bound=1024)
    assert messages == [
        {
            "jsonrpc": "2.0",
            "id": 9,
            "error": {
                "code": ErrorCode.BAD_GATEWAY,
                "message": "The tools/list result is larger than the 1024 bytes the access filter inspects",
                "data": {"maxInspectBytes": 1024},
            },
        }
    ]


def test_a_huge_event_before_a_small_result_is_dropped_and_the_result_filtered() -> None:
    noise = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x" * 5000}}
    messages = run_filter([event(noise), event(listing(["public", "secret"]))], bound=1024)
    assert messages == [listing(["public"])]


def test_a_result_written_with_escapes_is_still_filtered() -> None:
    raw = orjson.dumps(listing(["public", "secret"])).replace(b'"result"', b'"\\u0072esult"')
    raw = raw.replace(b'"secret"', b'"secr\\u0065t \\ud800"')  # a lone surrogate orjson refuses, JSON allows
    messages = run_filter([b"data: " + raw + b"\n\n"], bound=1 << 20)
    assert messages == [listing(["public"])]
