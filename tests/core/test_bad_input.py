"""Bad input gets a clear JSON-RPC answer, never a 500, and leaves nothing behind.

Every case is sent as raw HTTP to the bare SDK server and to the same server behind
the core. The core must answer with the same status and JSON-RPC code as the SDK,
or with the better answer named in the case (and say why).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx2
import orjson
import pytest
from mcp.server.mcpserver import MCPServer

from mcp_middleware import CoreConfig, McpCoreMiddleware
from mcp_middleware.core import ErrorCode
from tests.conftest import Served, serve_app
from tests.core.bad_input_corpus import CASES, JSON, NO_ID, answer, assert_never_worse, modern_call, send
from tests.servers import build_server

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024


@dataclass
class Pair:
    bare: Served
    core: Served
    core_server: MCPServer


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    bare_server, core_server = build_server(), build_server()
    core_app = McpCoreMiddleware(core_server.streamable_http_app(), config=CoreConfig(max_body_size=LIMIT))
    with serve_app(bare_server.streamable_http_app(max_request_body_size=LIMIT)) as bare, serve_app(core_app) as core:
        yield Pair(bare, core, core_server)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


def _error(response: httpx2.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/json", response.text
    message = orjson.loads(response.content)
    assert message["jsonrpc"] == "2.0"
    assert isinstance(message["error"], dict)
    return message


@pytest.mark.parametrize("name", CASES)
async def test_core_answers_bad_input_at_least_as_well_as_the_sdk(
    name: str, pair: Pair, http: httpx2.AsyncClient
) -> None:
    case = CASES[name]
    bare = await http.send(send(http, pair.bare.mcp_url, case))
    core = await http.send(send(http, pair.core.mcp_url, case))

    assert (core.status_code, bare.status_code) == (case.status, case.bare_status or case.status), bare.text
    message = answer(core)
    assert message is not None, core.text
    assert message["error"]["code"] == case.code
    assert message["id"] == case.request_id
    assert_never_worse(case, bare, core)
    theirs = answer(bare)
    expected_bare_code = case.code if case.bare_code is None else case.bare_code
    if expected_bare_code:
        assert theirs is not None and theirs["error"]["code"] == expected_bare_code, bare.text
        assert theirs["id"] == case.bare_id
    elif case.bare_id is NO_ID:
        assert theirs is None, bare.text
    else:
        assert theirs is not None and theirs.get("id") == case.bare_id, bare.text


async def test_bad_input_leaves_no_session_behind(pair: Pair, http: httpx2.AsyncClient) -> None:
    """The bare SDK mints a transport for some malformed legacy bodies; behind the core none is created."""
    manager = pair.core_server.session_manager
    before = len(manager._server_instances)
    for case in CASES.values():
        await http.send(send(http, pair.core.mcp_url, case))
    assert len(manager._server_instances) == before


async def test_declared_body_over_the_bound_is_refused_unread(pair: Pair, http: httpx2.AsyncClient) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"a" * LIMIT + b'"}}'
    bare = await http.post(pair.bare.mcp_url, content=body, headers=JSON)
    core = await http.post(pair.core.mcp_url, content=body, headers=JSON)
    assert bare.status_code == core.status_code == 413
    message = _error(core)
    assert message["error"] == {
        "code": ErrorCode.PAYLOAD_TOO_LARGE,
        "message": f"Request body exceeds {LIMIT} bytes",
        "data": {"maxBytes": LIMIT},
    }


async def test_streamed_body_over_the_bound_is_refused(pair: Pair, http: httpx2.AsyncClient) -> None:
    """No Content-Length (chunked transfer): the bound is enforced while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"'
        for _ in range(8):
            yield b"a" * (LIMIT // 4)
        yield b'"}}'

    core = await http.post(pair.core.mcp_url, content=chunks(), headers=JSON)
    assert "content-length" not in core.request.headers
    assert core.status_code == 413
    assert _error(core)["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE  # type: ignore[index]


async def test_server_still_serves_after_bad_input(pair: Pair, http: httpx2.AsyncClient) -> None:
    for case in CASES.values():
        await http.send(send(http, pair.core.mcp_url, case))
    headers, body = modern_call(11, "echo")
    response = await http.post(pair.core.mcp_url, content=body, headers=headers)
    assert response.status_code == 200
    result = orjson.loads(response.content)["result"]
    assert result["content"][0]["text"] == "x"


@pytest.mark.parametrize(
    "content_type", ["Application/JSON", "APPLICATION/JSON; charset=UTF-8", "application/json;v=1"]
)
async def test_content_type_is_matched_without_case(content_type: str, pair: Pair, http: httpx2.AsyncClient) -> None:
    """Media types are case-insensitive (RFC 9110 §8.3.1): the core passes what the SDK serves."""
    headers, body = modern_call(12, "echo", **{"content-type": content_type})
    bare = await http.post(pair.bare.mcp_url, content=body, headers=headers)
    core = await http.post(pair.core.mcp_url, content=body, headers=headers)
    assert bare.status_code == core.status_code == 200, core.text
    assert orjson.loads(core.content)["result"]["content"][0]["text"] == "x"


async def test_a_content_length_that_is_not_a_number_is_left_to_the_bound_on_reading() -> None:
    """ASGI servers refuse such requests before the app; the core, handed one anyway, reads with its bound."""
    from mcp_middleware.core import ANSWERED, read_request

    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", b"lots"),
        ],
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    view, replayed = await read_request(scope, receive, send)
    assert replayed is not ANSWERED and sent == []
    assert view is not None and view.method == "ping" and view.id == 1
