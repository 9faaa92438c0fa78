"""The request view: one parse, the SDK's era rule, headers trusted only once verified."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from mcp_middleware.core.headers import RequestHeaders
from mcp_middleware.core.parsing import describe_exchange, parse_post
from mcp_middleware.core.request import (
    REQUEST_SCOPE_KEY,
    TARGET_KEYS,
    Era,
    McpRequest,
    Rejection,
    RequestKind,
    get_mcp_request,
    target_of,
)

ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
LEGACY = RequestHeaders([(b"content-type", b"application/json")])


def modern_headers(method: str, name: str | None = None, version: str = "2026-07-28") -> RequestHeaders:
    raw = [(b"mcp-protocol-version", version.encode()), (b"mcp-method", method.encode())]
    if name is not None:
        raw.append((b"mcp-name", name.encode()))
    return RequestHeaders(raw)


def body(method: str, params: dict[str, Any] | None = None, request_id: Any = 1) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if params is not None:
        message["params"] = params
    return orjson.dumps(message)


def view(raw: bytes, headers: RequestHeaders) -> McpRequest:
    parsed = parse_post(raw, headers)
    assert isinstance(parsed, McpRequest), parsed
    return parsed


def test_legacy_tool_call() -> None:
    headers = RequestHeaders(
        [(b"mcp-protocol-version", b"2025-11-25"), (b"mcp-session-id", b"abc"), (b"mcp-name", b"spoofed")]
    )
    v = view(body("tools/call", {"name": "search_docs", "arguments": {"q": 1}, "_meta": {"progressToken": 3}}), headers)
    assert (v.kind, v.era, v.protocol_version, v.session_id) == (RequestKind.REQUEST, Era.LEGACY, "2025-11-25", "abc")
    assert (v.method, v.id, v.name, v.target, v.progress_token) == ("tools/call", 1, "search_docs", "search_docs", 3)
    assert not v.headers_verified  # legacy requests carry no verified routing headers


def test_modern_call_verifies_headers_against_the_body() -> None:
    params = {"name": "search", "arguments": {}, "_meta": ENVELOPE}
    v = view(body("tools/call", params, "x-1"), modern_headers("tools/call", "search"))
    assert (v.era, v.protocol_version, v.id, v.headers_verified) == (Era.MODERN, "2026-07-28", "x-1", True)
    assert v.meta == ENVELOPE and v.session_id is None


def test_modern_base64_name_header_is_decoded() -> None:
    params = {"name": "café ☕", "arguments": {}, "_meta": ENVELOPE}
    encoded = "=?base64?Y2Fmw6kg4piV?="
    assert view(body("tools/call", params), modern_headers("tools/call", encoded)).name == "café ☕"


def test_resource_uri_and_cursor() -> None:
    v = view(body("resources/read", {"uri": "file:///etc/hosts"}), LEGACY)
    assert v.uri == v.target == "file:///etc/hosts" and v.name is None
    assert view(body("tools/list", {"cursor": ""}), LEGACY).cursor == ""  # "" is a valid cursor


def test_initialize_version_comes_from_the_body_until_negotiated() -> None:
    v = view(body("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}}), LEGACY)
    assert v.protocol_version == "2025-06-18"
    assert view(body("tools/list"), LEGACY).protocol_version == "2025-03-26"  # the SDK's default


def test_notifications_and_client_responses() -> None:
    assert view(body("notifications/initialized", request_id=None), LEGACY).kind is RequestKind.NOTIFICATION
    response = view(b'{"jsonrpc":"2.0","id":4,"result":{}}', LEGACY)
    assert response.kind is RequestKind.RESPONSE and response.id == 4
    # 2026-07-28 has no client-to-server responses on HTTP.
    rejected = parse_post(b'{"jsonrpc":"2.0","id":4,"result":{}}', modern_headers("x"))
    assert isinstance(rejected, Rejection) and rejected.code == -32600


def test_modern_notification_only_checks_the_version() -> None:
    ok = parse_post(body("notifications/cancelled", request_id=None), modern_headers("notifications/cancelled"))
    assert isinstance(ok, McpRequest) and not ok.headers_verified
    bad = parse_post(body("notifications/x", request_id=None), modern_headers("notifications/x", version="2030-01-01"))
    assert isinstance(bad, Rejection) and bad.code == -32022 and bad.request_id is None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (modern_headers("tools/list", "echo"), -32020),  # method header lies
        (modern_headers("tools/call", "other"), -32020),  # name header lies
        (modern_headers("tools/call"), -32020),  # name header missing
        (RequestHeaders([(b"mcp-protocol-version", b"2099-01-01")]), -32020),  # envelope says 2026-07-28
    ],
)
def test_modern_mismatch_is_refused_with_the_request_id(headers: RequestHeaders, code: int) -> None:
    rejected = parse_post(body("tools/call", {"name": "echo", "_meta": ENVELOPE}, 42), headers)
    assert isinstance(rejected, Rejection)
    assert (rejected.status, rejected.code, rejected.request_id) == (400, code, 42)


def test_duplicated_routing_header_is_a_mismatch() -> None:
    headers = RequestHeaders(
        [(b"mcp-protocol-version", b"2026-07-28"), (b"mcp-method", b"tools/list"), (b"mcp-method", b"tools/list")]
    )
    assert headers.duplicated == "mcp-method"
    rejected = parse_post(body("tools/list", {"_meta": ENVELOPE}), headers)
    assert isinstance(rejected, Rejection) and rejected.code == -32020


@pytest.mark.parametrize("version", [None, "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"])
def test_era_is_legacy_for_absent_or_handshake_versions(version: str | None) -> None:
    raw = [] if version is None else [(b"mcp-protocol-version", version.encode())]
    assert RequestHeaders(raw).era is Era.LEGACY


@pytest.mark.parametrize("version", ["2026-07-28", "garbage", ""])
def test_era_is_modern_for_anything_else(version: str) -> None:
    assert RequestHeaders([(b"mcp-protocol-version", version.encode())]).era is Era.MODERN


def test_non_post_exchanges_are_described() -> None:
    headers = RequestHeaders([(b"mcp-session-id", b"s1"), (b"mcp-protocol-version", b"2025-11-25")])
    assert describe_exchange("GET", headers).kind is RequestKind.STREAM
    assert describe_exchange("DELETE", headers).session_id == "s1"
    assert describe_exchange("OPTIONS", headers).kind is RequestKind.OTHER


def test_view_from_scope_or_request() -> None:
    v = view(body("ping"), LEGACY)
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [], REQUEST_SCOPE_KEY: v}
    assert get_mcp_request(scope) is v
    assert get_mcp_request(Request(scope)) is v
    assert get_mcp_request({"type": "http", REQUEST_SCOPE_KEY: None}) is None


header_values = st.one_of(st.none(), st.sampled_from(["2026-07-28", "2025-11-25", "tools/call", "x"]), st.text())


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=512), version=header_values, method=header_values, name=header_values)
def test_parser_never_raises_on_arbitrary_bytes(
    raw: bytes, version: str | None, method: str | None, name: str | None
) -> None:
    pairs = [
        (k, v)
        for k, v in ((b"mcp-protocol-version", version), (b"mcp-method", method), (b"mcp-name", name))
        if v is not None
    ]
    headers = RequestHeaders([(k, v.encode("utf-8")) for k, v in pairs])
    assert isinstance(parse_post(raw, headers), McpRequest | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0"]) | json_values,
        "id": json_values,
        "method": st.sampled_from(["tools/call", "resources/read", "initialize"]) | json_values,
        "params": st.fixed_dictionaries({}, optional={"name": json_values, "uri": json_values, "_meta": json_values})
        | json_values,
        "result": json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(message=envelopes, modern=st.booleans())
def test_parser_never_raises_on_wrongly_typed_json(message: dict[str, Any], modern: bool) -> None:
    headers = modern_headers("tools/call", "x") if modern else LEGACY
    parsed = parse_post(orjson.dumps(message), headers)
    if isinstance(parsed, McpRequest):
        assert parsed.method is None or isinstance(parsed.method, str)
        assert parsed.name is None or isinstance(parsed.name, str)
        assert parsed.id is None or isinstance(parsed.id, str | int)
    else:
        assert parsed.status == 400 and isinstance(parsed.message, str)


routing_values = st.one_of(
    st.none(),
    st.sampled_from(["2026-07-28", "2025-11-25", "tools/call", "resources/read", "echo", "=?base64?ZWNobw==?="]),
)


@settings(max_examples=500, deadline=None)
@given(
    message=envelopes,
    meta=st.fixed_dictionaries(
        {},
        optional={
            "io.modelcontextprotocol/protocolVersion": st.sampled_from(["2026-07-28", "2025-11-25"]) | json_values,
            "io.modelcontextprotocol/clientCapabilities": json_values,
        },
    ),
    name=st.sampled_from(["echo", "other"]) | json_values,
    version=routing_values,
    method=routing_values,
    header_name=routing_values,
)
def test_fast_path_accepts_only_what_the_sdk_accepts(
    message: dict[str, Any], meta: dict[str, Any], name: Any, version: Any, method: Any, header_name: Any
) -> None:
    """The core's shortcut for well-formed modern requests never lets through what the SDK's ladder refuses:
    a request the parser calls verified is one the SDK routes."""
    from mcp.shared.inbound import InboundModernRoute, classify_inbound_request

    method_name = message.get("method") if isinstance(message.get("method"), str) else "tools/call"
    message = {**message, "jsonrpc": "2.0", "id": 1, "method": method_name}
    message["params"] = {"name": name, "uri": name, "_meta": meta}
    raw = [(b"mcp-protocol-version", version), (b"mcp-method", method), (b"mcp-name", header_name)]
    headers = RequestHeaders([(k, v.encode()) for k, v in raw if v is not None])
    routing = {k.decode(): v for k, v in raw if v is not None}
    parsed = parse_post(b"", headers, 0.0, _decoded=message)
    if isinstance(parsed, McpRequest) and parsed.headers_verified:
        assert isinstance(classify_inbound_request(message, headers=routing), InboundModernRoute)


target_methods = st.sampled_from(
    ["tools/call", "prompts/get", "resources/read", "resources/subscribe", "resources/unsubscribe", "tools/list"]
)


@settings(max_examples=500, deadline=None)
@given(
    method=target_methods,
    name=st.sampled_from(["echo", "=?base64?ZWNobw==?="]) | json_values,
    uri=st.sampled_from(["file:///a"]) | json_values,
    header_name=routing_values,
    modern=st.booleans(),
    request_id=st.sampled_from([1, "a", None]),
)
def test_the_parsed_target_is_the_one_any_view_derives(
    method: str, name: Any, uri: Any, header_name: Any, modern: bool, request_id: Any
) -> None:
    """`target` is filled in by the parser as it checks `Mcp-Name` (the verified modern path) and derived by
    every other way of building a view: for any request, both eras, verified or not, they agree; and the
    parsed view equals the one built by hand from the same fields."""
    params = {"name": name, "uri": uri, "_meta": ENVELOPE}
    raw = [(b"mcp-protocol-version", b"2026-07-28" if modern else b"2025-11-25"), (b"mcp-method", method.encode())]
    if header_name is not None:
        raw.append((b"mcp-name", header_name.encode()))
    parsed = parse_post(body(method, params, request_id), RequestHeaders(raw))
    if not isinstance(parsed, McpRequest):
        return
    expected = target_of(method, parsed.params)
    assert parsed.target == expected
    key = "name" if method in ("tools/call", "prompts/get") else "uri" if method.startswith("resources/") else None
    assert expected == (params[key] if key is not None and isinstance(params[key], str) else None)
    # `name` and `uri` are the target of their methods, read from `params` as they always were.
    name, uri = params["name"], params["uri"]
    is_name, is_uri = method in ("tools/call", "prompts/get"), method.startswith("resources/")
    assert parsed.name == (name if is_name and isinstance(name, str) else None)
    assert parsed.uri == (uri if is_uri and isinstance(uri, str) else None)
    rebuilt = McpRequest(*parsed[:-1])
    assert rebuilt == parsed and rebuilt.target == parsed.target
    assert parsed._replace(params={"name": "other", "uri": "other"}).target == (None if key is None else "other")


def test_target_is_derived_by_every_way_of_building_a_view() -> None:
    import copy
    import pickle

    call = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", params={"name": "echo"})
    assert call.target == "echo" and call._fields[-1] == "target" and len(call) == len(call._fields)
    assert call._replace(params={"name": "other"}).target == "other"
    assert call._replace(method="resources/read", params={"uri": "file:///x"}).target == "file:///x"
    assert call._replace(method="tools/list").target is None
    assert McpRequest._make(tuple(call)[:-1]) == call == McpRequest._make(call)
    assert McpRequest._make([*tuple(call)[:-1], "spoofed"]).target == "echo"  # (all the fields: derived again)
    assert copy.copy(call) == call and copy.deepcopy(call) == call and pickle.loads(pickle.dumps(call)) == call
    with pytest.raises(ValueError, match="target"):
        call._replace(target="spoofed")
    with pytest.raises(TypeError):
        McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", target="spoofed")  # type: ignore[call-arg]
    assert (
        McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", params={"name": 3}).target
        is None
    )


def test_the_parser_reads_every_header_checked_name_where_the_target_lives() -> None:
    """The verified modern path checks `Mcp-Name` against the target's own key: that holds only while every
    method the SDK checks a name for is one of the view's target methods, with the same key."""
    from mcp.shared.inbound import NAME_BEARING_METHODS

    assert NAME_BEARING_METHODS.items() <= TARGET_KEYS.items()
