"""The bad-input corpus: malformed MCP requests of both eras, each with the bare SDK's answer and ours.

Shared by tests/core/test_bad_input.py (the core in front of the SDK server) and
tests/security/test_bad_input_gateway.py (the reference gateway, every middleware on).
`assert_never_worse` is the rule both apply: our answer is a JSON-RPC error object, never a
500 or a traceback, with the SDK's status and code or the better one the case names, and
with the request's id wherever the SDK gave it (and wherever the body gave it to us).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson

from mcp_middleware.core import ErrorCode
from tests.support.requests import ENVELOPE, modern_body, modern_headers

ACCEPT = {"accept": "application/json, text/event-stream"}
JSON = {"content-type": "application/json", **ACCEPT}
MODERN = {**JSON, "mcp-protocol-version": "2026-07-28"}
LEGACY = {**JSON, "mcp-protocol-version": "2025-11-25"}
_ENVELOPE_JSON = orjson.dumps(ENVELOPE)
NO_ID = object()
"""`Case.bare_id` when the SDK's answer has no JSON-RPC body at all."""


def modern_call(request_id: int, name: str, **headers: str) -> tuple[dict[str, str], bytes]:
    body = modern_body("tools/call", {"name": name, "arguments": {"text": "x"}}, request_id)
    return modern_headers("tools/call", name, **headers), body


def modern_raw(request_id: bytes, method: str, params: bytes = b"{}", **headers: str) -> tuple[dict[str, str], bytes]:
    """A modern request written by hand (for JSON orjson refuses); `params` gets the envelope added."""
    params = params[:-1] + (b"," if params != b"{}" else b"") + b'"_meta":' + _ENVELOPE_JSON + b"}"
    body = b'{"jsonrpc":"2.0","id":' + request_id + b',"method":"' + method.encode() + b'","params":' + params + b"}"
    return {**MODERN, "mcp-method": method, **headers}, body


@dataclass
class Case:
    headers: dict[str, str] | list[tuple[str, str]]
    body: bytes
    status: int
    """Our status (the core's)."""
    code: int | None
    """Our JSON-RPC error code."""
    request_id: int | str | None = None
    """The id we answer with."""
    bare_status: int | None = None
    """The SDK's status where ours differs; `None` means the same."""
    bare_code: int | None = None
    """The SDK's code where ours is clearer (0: the SDK sends no JSON-RPC body); `None`: the same."""
    bare_id: object = None
    """The id the SDK answers with (`NO_ID`: no JSON-RPC body)."""
    method: str = "POST"
    drop_accept: bool = False
    """Send no `Accept` header at all (HTTP clients add `*/*` by default)."""
    why: str = ""
    """Where we answer differently from the SDK: why ours is the better answer."""


_mismatch = modern_call(5, "echo", **{"mcp-name": "other"})
_dup_headers, _dup_body = modern_call(9, "echo")
_surrogate_name = modern_call(21, "placeholder", **{"mcp-name": "x"})
_tools_list = (
    b'{"jsonrpc":"2.0","id":31,"method":"tools/list","params":{"_meta":' + _ENVELOPE_JSON + b"}}",
    {**MODERN, "mcp-method": "tools/list"},
)
_STRICTER = "its strings are not valid Unicode or its numbers not a double: no log, label or cache key could carry it"

CASES: dict[str, Case] = {
    "invalid JSON": Case(JSON, b'{"jsonrpc":', 400, -32700),
    "invalid JSON (modern)": Case(MODERN, b'{"jsonrpc":', 400, -32700),
    "invalid UTF-8": Case(JSON, b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}', 400, -32700),
    # Not UTF-8, but the SDK's modern parser takes surrogates encoded in it: the id is recovered too.
    "UTF-8 encoded surrogate (modern)": Case(
        {**MODERN, "mcp-method": "tools/list"},
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","x":"\xed\xa0\x80"}',
        400,
        -32602,
        request_id=1,
        bare_id=1,
    ),
    "UTF-16 body (modern)": Case(
        {**MODERN, "mcp-method": "tools/list"},
        _tools_list[0].replace(b'"id":31', b'"id":2').decode().encode("utf-16"),
        400,
        -32700,
        request_id=2,
        bare_status=200,
        bare_code=0,
        bare_id=2,
        why="JSON exchanged between systems must be UTF-8 (RFC 8259 section 8.1)",
    ),
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
        bare_id=NO_ID,
        why="RFC 9110: an unsupported body type is 415, and the SDK's answer is plain text",
    ),
    "missing Content-Type": Case(
        ACCEPT,
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        415,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        bare_status=400,
        bare_code=0,
        bare_id=NO_ID,
        why="RFC 9110: an unsupported body type is 415, and the SDK's answer is plain text",
    ),
    "header/body mismatch (modern)": Case(_mismatch[0], _mismatch[1], 400, -32020, request_id=5, bare_id=5),
    "duplicated routing header (modern)": Case(
        [*_dup_headers.items(), ("mcp-method", "tools/call")], _dup_body, 400, -32020, request_id=9, bare_id=9
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
        bare_id=6,
    ),
    "missing envelope (modern)": Case(
        {**MODERN, "mcp-method": "tools/list"},
        b'{"jsonrpc":"2.0","id":8,"method":"tools/list"}',
        400,
        -32602,
        8,
        bare_id=8,
    ),
    # --- JSON that orjson refuses but the grammar allows: the id is recovered by the stdlib parser.
    "lone surrogate in the tool name (modern)": Case(
        _surrogate_name[0], _surrogate_name[1].replace(b'"placeholder"', b'"\\ud800"'), 400, -32020, 21, bare_id=21
    ),
    "lone surrogate in the tool name (legacy)": Case(
        JSON,
        b'{"jsonrpc":"2.0","id":22,"method":"tools/call","params":{"name":"\\ud800","arguments":{}}}',
        400,
        -32700,
        22,
        why="the SDK cannot read the id of this valid JSON text; the core can",
    ),
    "lone low surrogate in an argument (modern)": Case(
        *modern_raw(b"23", "tools/call", b'{"name":"echo","arguments":{"text":"\\udc00"}}', **{"mcp-name": "echo"}),
        400,
        -32700,
        23,
        bare_status=200,
        bare_code=0,
        bare_id=23,
        why=_STRICTER,
    ),
    "lone surrogate as the id (modern)": Case(
        _tools_list[1],
        _tools_list[0].replace(b'"id":31', b'"id":"\\ud800"'),
        400,
        -32700,
        "\ud800",
        bare_status=200,
        bare_code=0,
        bare_id="\ud800",
        why=_STRICTER,
    ),
    "number past a double (modern)": Case(
        *modern_raw(b"24", "tools/call", b'{"name":"echo","arguments":{"text":1e400}}', **{"mcp-name": "echo"}),
        400,
        -32700,
        24,
        bare_status=200,
        bare_code=0,
        bare_id=24,
        why=_STRICTER,
    ),
    "NaN (legacy)": Case(
        JSON,
        b'{"jsonrpc":"2.0","id":25,"method":"tools/call","params":{"name":"echo","arguments":{"text":NaN}}}',
        400,
        -32700,
        25,
        bare_code=-32600,
        why="NaN is not JSON; the SDK takes it, then asks for a session",
    ),
    # --- HTTP-level refusals: JSON-RPC bodies in both eras, with the id once the body was read.
    "GET (modern)": Case(
        MODERN, b"", 405, -32600, method="GET", bare_code=0, bare_id=NO_ID, why="a JSON-RPC body for an empty one"
    ),
    "DELETE (modern)": Case(
        MODERN, b"", 405, -32600, method="DELETE", bare_code=0, bare_id=NO_ID, why="a JSON-RPC body for an empty one"
    ),
    "PUT (modern)": Case(
        MODERN, b"{}", 405, -32600, method="PUT", bare_code=0, bare_id=NO_ID, why="a JSON-RPC body for an empty one"
    ),
    "PUT (legacy)": Case(JSON, b"{}", 405, -32600, method="PUT"),
    "Accept without JSON (modern)": Case(
        {**_tools_list[1], "accept": "text/event-stream"},
        _tools_list[0],
        406,
        -32600,
        31,
        bare_code=0,
        bare_id=NO_ID,
        why="a JSON-RPC body with the id for an empty one",
    ),
    "Accept without event-stream (modern)": Case(
        {**_tools_list[1], "accept": "application/json"},
        _tools_list[0],
        406,
        -32600,
        31,
        bare_code=0,
        bare_id=NO_ID,
        why="a JSON-RPC body with the id for an empty one (completed on the way out)",
    ),
    "empty Accept (legacy)": Case(
        {**JSON, "accept": ""}, b'{"jsonrpc":"2.0","id":32,"method":"ping"}', 406, -32600, 32, why="the id"
    ),
    "no Accept at all (legacy)": Case(
        JSON, b'{"jsonrpc":"2.0","id":33,"method":"ping"}', 406, -32600, 33, drop_accept=True, why="the id"
    ),
    "Accept without event-stream (legacy)": Case(
        {**JSON, "accept": "application/json"},
        b'{"jsonrpc":"2.0","id":34,"method":"ping"}',
        406,
        -32600,
        34,
        why="the id (completed on the way out)",
    ),
    # --- The SDK's legacy session errors, with the id filled in on the way out.
    "missing session (legacy)": Case(
        LEGACY, b'{"jsonrpc":"2.0","id":35,"method":"tools/list"}', 400, -32600, 35, why="the id"
    ),
    "unknown session (legacy)": Case(
        {**LEGACY, "mcp-session-id": "0123456789abcdef0123456789abcdef"},
        b'{"jsonrpc":"2.0","id":"s-36","method":"tools/list"}',
        404,
        -32600,
        "s-36",
        why="the id",
    ),
}


def send(http: httpx2.AsyncClient, url: str, case: Case, headers: dict[str, str] | None = None) -> httpx2.Request:
    """The request of `case` to `url` (extra `headers`, e.g. a bearer token, added)."""
    pairs = list(case.headers.items()) if isinstance(case.headers, dict) else list(case.headers)
    pairs += list((headers or {}).items())
    request = http.build_request(case.method, url, content=case.body or None, headers=pairs)
    if case.drop_accept:
        del request.headers["accept"]
    return request


def answer(response: httpx2.Response) -> dict[str, Any] | None:
    """The JSON-RPC body of a response, or `None` when it has none (stdlib JSON: an echoed id may hold a
    lone surrogate, which orjson refuses)."""
    if not response.content or not response.headers.get("content-type", "").startswith("application/json"):
        return None
    message = json.loads(response.content)
    return message if isinstance(message, dict) and message.get("jsonrpc") == "2.0" else None


def assert_never_worse(case: Case, bare: httpx2.Response, ours: httpx2.Response) -> None:
    """Ours is a JSON-RPC error and at least as good as the SDK's answer: the id wherever the SDK gave
    one, and the SDK's status and code unless the case says why ours differs."""
    assert ours.status_code < 500, ours.text
    assert "Traceback" not in ours.text
    mine = answer(ours)
    assert mine is not None, f"no JSON-RPC body: {ours.status_code} {ours.text!r}"
    assert isinstance(mine.get("error"), dict), mine
    theirs = answer(bare)
    if theirs is not None and theirs.get("id") is not None:
        assert mine["id"] == theirs["id"], (mine, theirs)
    their_error = theirs.get("error") if theirs is not None else None
    same_code = isinstance(their_error, dict) and their_error.get("code") == mine["error"]["code"]
    if ours.status_code != bare.status_code or not same_code:
        assert case.why or case.bare_code is not None, f"differs from the SDK, with no reason given: {mine} / {theirs}"
