"""Namespaced names: always portable, stable, reversible; collisions resolved deterministically and reported."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_middleware.router import NameTable, NamingPolicy, PrefixMode
from mcp_middleware.router.names import namespace_uri, split_uri

PORTABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
servers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=48)
names = st.text(min_size=1, max_size=150)  # any unicode, any length: what backends really send
entries = st.lists(st.tuples(servers, names), max_size=40)
policies = st.builds(
    NamingPolicy,
    separator=st.sampled_from(["__", "_", "-", "--"]),
    prefix=st.sampled_from(list(PrefixMode)),
    on_conflict=st.sampled_from(["first", "prefix"]),
)


@given(policies, entries)
def test_public_names_are_portable_unique_and_route_back(policy: NamingPolicy, pairs: list[tuple[str, str]]) -> None:
    table = NameTable.build(policy, pairs)
    assert len(set(table.names)) == len(table.names)
    for public in table.names:
        assert PORTABLE.fullmatch(public), public
        server, name = table.resolve(public)  # type: ignore[misc]
        assert table.public_name(server, name) == public
    hidden = [pair for pair in dict.fromkeys(pairs) if table.public_name(*pair) is None]
    if policy.prefix is not PrefixMode.NEVER or policy.on_conflict == "prefix":
        assert hidden == []  # only the explicit "first wins" rule hides anything
    assert len(hidden) == len([c for c in table.collisions if c.assigned is None])


@given(policies, entries)
def test_same_input_same_table(policy: NamingPolicy, pairs: list[tuple[str, str]]) -> None:
    assert NameTable.build(policy, pairs).names == NameTable.build(policy, list(pairs)).names


@given(servers, names, names)
def test_a_backends_name_does_not_depend_on_the_others(server: str, name: str, other: str) -> None:
    policy = NamingPolicy(prefix=PrefixMode.ALWAYS)
    alone = NameTable.build(policy, [(server, name)]).public_name(server, name)
    crowded = NameTable.build(policy, [(server, name), ("zz-other", other)]).public_name(server, name)
    assert alone == crowded


def test_long_and_foreign_names_get_a_stable_hash() -> None:
    policy = NamingPolicy()
    long_name = "a" * 100
    table = NameTable.build(policy, [("github", long_name), ("github", "dotted.name"), ("github", "ünïcode")])
    assert [len(n) for n in table.names] == [64, len(table.names[1]), len(table.names[2])]
    assert table.names[0].startswith("github__aaaa") and re.fullmatch(r".*_[0-9a-f]{8}", table.names[0])
    assert table.names[1].startswith("github__dotted_name_")
    again = NameTable.build(policy, [("github", long_name), ("github", "dotted.name"), ("github", "ünïcode")])
    assert again.names == table.names  # stable across runs: a hash, not a counter


def test_collision_in_always_mode_is_resolved_by_mount_order_and_reported() -> None:
    policy = NamingPolicy(separator="_")
    table = NameTable.build(policy, [("a", "b_c"), ("a_b", "c")])  # both want "a_b_c"
    assert table.public_name("a", "b_c") == "a_b_c"
    loser = table.public_name("a_b", "c")
    assert loser is not None and loser != "a_b_c" and PORTABLE.fullmatch(loser)
    assert [c.describe() for c in table.collisions] == [
        {"name": "a_b_c", "kept": "a:b_c", "renamed": "a_b:c", "as": loser}
    ]


@pytest.mark.parametrize(
    ("mode", "rule", "expected"),
    [
        (PrefixMode.ALWAYS, "prefix", ["x__only_x", "x__shared", "y__only_y", "y__shared"]),
        (PrefixMode.ON_COLLISION, "prefix", ["only_x", "x__shared", "only_y", "y__shared"]),
        (PrefixMode.NEVER, "prefix", ["only_x", "x__shared", "only_y", "y__shared"]),
        (PrefixMode.NEVER, "first", ["only_x", "shared", "only_y"]),
    ],
)
def test_prefix_modes(mode: PrefixMode, rule: str, expected: list[str]) -> None:
    policy = NamingPolicy(prefix=mode, on_conflict=rule)  # type: ignore[arg-type]
    pairs = [("x", "only_x"), ("x", "shared"), ("y", "only_y"), ("y", "shared")]
    assert list(NameTable.build(policy, pairs).names) == expected


def test_policy_refuses_separators_that_break_names() -> None:
    for bad in ("::", ".", "/", "", "_____"):
        with pytest.raises(ValueError, match="separator"):
            NamingPolicy(separator=bad)


@given(servers, st.text(max_size=200))
def test_resource_uris_round_trip(server: str, uri: str) -> None:
    assert split_uri(namespace_uri(server, uri), {server}) == (server, uri)


def test_uri_of_an_unknown_server_does_not_resolve() -> None:
    assert split_uri("gamma+gamma://readme", {"alpha"}) is None
    assert split_uri("no-plus-sign", {"no-plus-sign"}) is None
