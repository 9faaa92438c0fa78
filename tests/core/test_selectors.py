"""Selectors pick requests by method and name glob; the most specific setting wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_middleware.core.request import Era, McpRequest, RequestKind
from mcp_middleware.core.selectors import Selector, SelectorMap


def request(method: str | None, name: str | None = None, uri: str | None = None) -> McpRequest:
    params = {k: v for k, v in (("name", name), ("uri", uri)) if v is not None}
    return McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method=method, params=params)


@pytest.mark.parametrize(
    ("selector", "method", "target", "matches"),
    [
        ("*", "tools/call", "x", True),
        ("*", None, None, True),  # GET stream: only "*" covers it
        ("tools/list", "tools/list", None, True),
        ("tools/list", "tools/call", "x", False),
        ("tools/call", "tools/call", "anything", True),
        ("tools/call:search_*", "tools/call", "search_docs", True),
        ("tools/call:search_*", "tools/call", "research", False),
        ("tools/call:search_*", "tools/call", None, False),
        ("tools/call:delete_?", "tools/call", "delete_x", True),
        ("tools/call:delete_?", "tools/call", "delete_xy", False),
        ("resources/read:file://*", "resources/read", "file:///etc/passwd", True),
        ("resources/read:file://*", "resources/read", "https://x", False),
        ("tools/*", "tools/list", None, True),
        ("tools/*", "prompts/list", None, False),
        ("tools/call:echo", "tools/call", "echo", True),
        ("tools/call:echo", "tools/call", "echo2", False),
        ("tools/call:a.b", "tools/call", "aXb", False),  # "." is literal, not a regex dot
    ],
)
def test_grammar(selector: str, method: str | None, target: str | None, matches: bool) -> None:
    assert Selector.parse(selector).matches_parts(method, target) is matches


@pytest.mark.parametrize("text", ["", "  ", ":x", "tools/call:"])
def test_malformed_selectors_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="selector"):
        Selector.parse(text)


def test_most_specific_rule_wins_whatever_the_order() -> None:
    rules = [
        ("*", "default"),
        ("tools/*", "tools"),
        ("tools/call", "calls"),
        ("tools/call:search_*", "search"),
        ("tools/call:search_docs", "docs"),
        ("tools/call:s*", "s"),
    ]
    for ordering in (rules, list(reversed(rules))):
        table = SelectorMap(ordering)
        assert table.lookup(request("tools/call", "search_docs")) == "docs"
        assert table.lookup(request("tools/call", "search_web")) == "search"
        assert table.lookup(request("tools/call", "summarise")) == "s"
        assert table.lookup(request("tools/call", "echo")) == "calls"
        assert table.lookup(request("tools/list")) == "tools"
        assert table.lookup(request("prompts/list")) == "default"


def test_ties_go_to_the_first_defined() -> None:
    assert SelectorMap([("tools/call:a*", 1), ("tools/call:a?", 2)]).lookup_parts("tools/call", "ab") == 1
    assert SelectorMap([("tools/call:a?", 2), ("tools/call:a*", 1)]).lookup_parts("tools/call", "ab") == 2


def test_no_match_is_none() -> None:
    assert SelectorMap({"tools/call:x": 1}).lookup(request("tools/list")) is None
    assert len(SelectorMap({"a": 1, "b": 2})) == 2


# Selectors are stripped of surrounding whitespace (they come from config files); names have none.
names = st.text(
    alphabet=st.characters(blacklist_characters="*?[", blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=20,
)


@given(literal=names, other=names)
def test_a_literal_target_matches_only_itself(literal: str, other: str) -> None:
    selector = Selector.parse(f"tools/call:{literal}")
    assert selector.matches_parts("tools/call", literal)
    assert selector.matches_parts("tools/call", other) is (other == literal)


@given(prefix=names, rest=st.text(max_size=20))
def test_a_trailing_star_matches_every_extension(prefix: str, rest: str) -> None:
    assert Selector.parse(f"tools/call:{prefix}*").matches_parts("tools/call", prefix + rest)
