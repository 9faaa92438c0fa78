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

from mcp_middleware import CoreConfig, ErrorCode, McpCoreMiddleware
from tests.conftest import Served, serve_app
from tests.servers import build_server

pytestmark = pytest.mark.anyio

ACCEPT = {"accept": "application/json, text/event-stream"}
JSON = {"content-type": "application/json", **ACCEPT}
MODERN = {**JSON, "mcp-protocol-version": "2026-07-28"}
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
LIMIT = 64 * 1024


def modern_call(request_id: int, name: str, **headers: str) -> tuple[dict[str, str], bytes]:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call"}
    body["params"] = {"name": name, "arguments": {"text": "x"}, "_meta": ENVELOPE}
    return {**MODERN, "mcp-method": "tools/call", "mcp-name": name, **headers}, orjson.dumps(body)


@dataclass
class Case:
    headers: dict[str, str] | list[tuple[str, str]]
    body: bytes
    status: int
    code: int | None
    request_id: int | None = None
    bare_status: int | None = None
    """The SDK's status where the core answers differently; `None` means the same."""
    bare_code: int | None = None
    """The SDK's JSON-RPC code where the core's is clearer (or the SDK sends plain text: 0)."""


_mismatch = modern_call(5, "echo", **{"mcp-name": "other"})
_dup_headers, _dup_body = modern_call(9, "echo")

CASES: dict[str, Case] = {
    "invalid JSON": Case(JSON, b'{"jsonrpc":', 400, -32700),
    "invalid JSON (modern)": Case(MODERN, b'{"jsonrpc":', 400, -32700),
    "invalid UTF-8": Case(JSON, b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}', 400, -32700),
    "nesting past any sane depth": Case(JSON, b"[" * 20_000 + b"]" * 20_000, 400, -32700),
    # The SDK's legacy path reports these as a pydantic dump under -32602; they are invalid requests.
    "non-object body": Case(JSON, b'"hello"', 400, -32600, bare_code=-32602),
    "batch array": Case(JSON, b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', 400, -32600, bare_code=-32602),
    "batch array (modern)": Case(MODERN, b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', 400, -32600),
    "missing method": Case(JSON, b'{"jsonrpc":"2.0","id":7}', 400, -32600, request_id=7, bare_code=-32602),
    "params of the wrong type": Case(
        JSON, b'{"jsonrpc":"2.0","id":3,"method":"ping","params":[1]}', 400, -32602, request_id=3
    ),
    # The SDK answers "Missing session ID" before it looks at the id.
    "id of the wrong type": Case(JSON, b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', 400, -32600),
    "method of the wrong type": Case(JSON, b'{"jsonrpc":"2.0","id":4,"method":12}', 400, -32600, 4, bare_code=-32602),
    "wrong jsonrpc version": Case(JSON, b'{"jsonrpc":"1.0","id":2,"method":"ping"}', 400, -32600, 2, bare_code=-32602),
    # RFC 9110: an unsupported body type is 415; the SDK sends 400 with a plain-text body.
    "wrong Content-Type": Case(
        {"content-type": "text/plain", **ACCEPT},
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        415,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        bare_status=400,
        bare_code=0,
    ),
    "missing Content-Type": Case(
        ACCEPT, b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, None, 400, 0
    ),
    "header/body mismatch (modern)": Case(_mismatch[0], _mismatch[1], 400, -32020, request_id=5),
    "duplicated routing header (modern)": Case(
        [*_dup_headers.items(), ("mcp-method", "tools/call")], _dup_body, 400, -32020, request_id=9
    ),
    "unknown protocol version": Case(
        {**JSON, "mcp-protocol-version": "2099-01-01", "mcp-method": "tools/list"},
        orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 6,
                "method": "tools/list",
                "params": {"_meta": {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}},
            }
        ),
        400,
        -32022,
        request_id=6,
    ),
    "missing envelope (modern)": Case(
        {**MODERN, "mcp-method": "tools/list"}, b'{"jsonrpc":"2.0","id":8,"method":"tools/list"}', 400, -32602, 8
    ),
}


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
    bare = await http.post(pair.bare.mcp_url, content=case.body, headers=case.headers)
    core = await http.post(pair.core.mcp_url, content=case.body, headers=case.headers)

    assert core.status_code == case.status
    assert bare.status_code == (case.bare_status or case.status), bare.text
    message = _error(core)
    assert message["error"]["code"] == case.code  # type: ignore[index]
    assert message["id"] == case.request_id
    assert "Traceback" not in core.text
    expected_bare_code = case.code if case.bare_code is None else case.bare_code
    if expected_bare_code:
        assert _error(bare)["error"]["code"] == expected_bare_code  # type: ignore[index]


async def test_bad_input_leaves_no_session_behind(pair: Pair, http: httpx2.AsyncClient) -> None:
    """The bare SDK mints a transport for some malformed legacy bodies; behind the core none is created."""
    manager = pair.core_server.session_manager
    before = len(manager._server_instances)
    for case in CASES.values():
        await http.post(pair.core.mcp_url, content=case.body, headers=case.headers)
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
        await http.post(pair.core.mcp_url, content=case.body, headers=case.headers)
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
    from mcp_middleware.core import read_request

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

    prepared = await read_request(scope, receive, send)
    assert prepared is not None and sent == []
    view, _ = prepared
    assert view is not None and view.method == "ping" and view.id == 1
