"""Cache keys: stable for the same question, different for any difference that can change the answer."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_middleware.cache.keys import entry_key, entry_tags, invalidation_tag, request_digest
from mcp_middleware.core.request import Era, McpRequest, RequestKind

CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"


def request(params: dict[str, Any] | None, *, method: str = "tools/call", version: str = "2026-07-28") -> McpRequest:
    era = Era.MODERN if version == "2026-07-28" else Era.LEGACY
    return McpRequest(RequestKind.REQUEST, era, version, method=method, id=1, params=params)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=5)


@settings(max_examples=80, deadline=None)
@given(arguments, st.randoms())
def test_the_order_of_keys_never_matters(args: dict[str, Any], rnd: Any) -> None:
    items = list(args.items())
    rnd.shuffle(items)
    a = request({"name": "t", "arguments": args})
    b = request({"arguments": dict(items), "name": "t"})
    assert request_digest(a) == request_digest(b)


@settings(max_examples=50, deadline=None)
@given(arguments, st.text(max_size=10), st.integers())
def test_meta_that_cannot_change_the_result_is_left_out(args: dict[str, Any], trace: str, token: int) -> None:
    plain = request({"name": "t", "arguments": args, "_meta": {CAPABILITIES: {"x": 1}}})
    decorated = request(
        {
            "name": "t",
            "arguments": args,
            "_meta": {CAPABILITIES: {"x": 1}, "traceparent": trace, "progressToken": token, "x.y/z": 1},
        }
    )
    assert request_digest(plain) == request_digest(decorated)


def test_what_can_change_the_result_is_in_the_key() -> None:
    base = request({"name": "t", "arguments": {"a": 1}, "_meta": {CAPABILITIES: {}}})
    variants = [
        request({"name": "t", "arguments": {"a": 2}, "_meta": {CAPABILITIES: {}}}),
        request({"name": "u", "arguments": {"a": 1}, "_meta": {CAPABILITIES: {}}}),
        request({"name": "t", "arguments": {"a": 1}, "_meta": {CAPABILITIES: {"elicitation": {}}}}),
        request({"name": "t", "arguments": {"a": 1}}, version="2025-11-25"),
        request({"name": "t", "arguments": {"a": 1}, "_meta": {CAPABILITIES: {}}}, method="prompts/get"),
    ]
    digests = {request_digest(r) for r in [base, *variants]}
    assert len(digests) == 1 + len(variants)


def test_every_cursor_is_its_own_page() -> None:
    pages = [None, {}, {"cursor": ""}, {"cursor": "p2"}, {"cursor": "p3"}]
    assert len({request_digest(request(p, method="tools/list")) for p in pages}) == 4  # None and {} are one


def test_custom_meta_fields_can_join_the_key() -> None:
    a = request({"name": "t", "_meta": {"com.example/tenant": "a"}})
    b = request({"name": "t", "_meta": {"com.example/tenant": "b"}})
    assert request_digest(a) == request_digest(b)
    assert request_digest(a, frozenset({"com.example/tenant"})) != request_digest(b, frozenset({"com.example/tenant"}))


def test_tags_name_each_selection_and_unicode_uris() -> None:
    tags = entry_tags("/mcp", "resources/read", "p1", uri="file:///dätä/ü.txt")
    for selection in [("/mcp", None, None), (None, "resources/read", None), (None, None, "p1"), (None, None, None)]:
        assert invalidation_tag(*selection) in tags
    assert invalidation_tag(uri="file:///dätä/ü.txt") in tags
    assert invalidation_tag("/mcp", uri="file:///dätä/ü.txt") in tags
    assert invalidation_tag("/other", uri="file:///dätä/ü.txt") not in tags
    assert entry_key("/mcp", "tools/list", "d", "*") != entry_key("/mcp", "tools/list", "d", "p1")
