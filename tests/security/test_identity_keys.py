"""Attacker: chooses (or registers) an identity whose fields hold the key separator, so that its rate-limit
bucket or cache partition is spelled like a victim's: it then spends the victim's budget or reads the
victim's private cached answers. Auth0 subjects really do hold `|` (`auth0|abc`). And on IPv6, one
attacker owns a whole /64: a bucket per address would be a bucket per request.

Property tests over separator-bearing fields, then the attacks themselves on loopback with real static
tokens (each its own principal, with the subject and client id the attacker picked).
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.cache import ResponseCacheMiddleware, partition_of
from mcp_middleware.cache.keys import entry_key, invalidation_tag
from mcp_middleware.core import Era, McpRequest, Principal, RequestKind, get_principal, set_principal
from mcp_middleware.gateway.config import parse_config
from mcp_middleware.ratelimit import BucketPolicy, CallerKey, MemoryBucketStore, RateLimiter, RateLimitMiddleware
from tests.auth.conftest import post_mcp, serve_late
from tests.ratelimit.wire import call_tool
from tests.servers import build_server

pytestmark = pytest.mark.anyio

REQUEST = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1, params={"name": "x"})

hostile_text = st.text(
    alphabet=st.sampled_from(["a", "b", "|", "\x1f", "\x00", ":", "1", "2", "-", "#", "é"]), max_size=6
)
field = st.none() | hostile_text
principals = st.builds(Principal, subject=field, client_id=field, issuer=field).filter(lambda p: p.authenticated)


def identity(principal: Principal) -> tuple[str | None, str | None, str | None]:
    return principal.client_id, principal.subject, principal.issuer


def rate_key(principal: Principal) -> str:
    scope: dict[str, Any] = {"type": "http", "client": ("192.0.2.1", 1), "headers": []}
    set_principal(scope, principal)
    return CallerKey()(scope, REQUEST)


@settings(max_examples=400, deadline=None)
@given(st.lists(principals, min_size=2, max_size=8, unique_by=identity))
def test_distinct_principals_never_share_a_rate_limit_key_or_a_cache_partition(people: list[Principal]) -> None:
    assert len({rate_key(p) for p in people}) == len(people)
    assert len({partition_of(p) for p in people}) == len(people)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Principal(client_id="app", subject="auth0|abc"), Principal(client_id="app|auth0", subject="abc")),
        (Principal(subject="a|b", issuer="c"), Principal(subject="a", issuer="b|c")),
        (Principal(subject="x\x1fy", client_id="z"), Principal(subject="x", client_id="y\x1fz")),
        (Principal(subject="y", issuer="i\x1fx"), Principal(subject="x\x1fy", issuer="i")),
        (Principal(subject="", client_id="c"), Principal(subject=None, client_id="c")),
    ],
    ids=["auth0-pipe", "pipe-issuer", "unit-separator", "unit-separator-issuer", "empty-vs-none"],
)
def test_the_spellings_that_used_to_collide_are_apart(a: Principal, b: Principal) -> None:
    assert rate_key(a) != rate_key(b)
    assert partition_of(a) != partition_of(b)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab|*", min_size=1, max_size=12))
def test_one_spelling_split_at_different_separators_is_different_cache_keys(joined: str) -> None:
    """`mount|method` written one way can be cut at each `|`: every cut is another (mount, method)."""
    splits = {(joined[:i], joined[i + 1 :]) for i, c in enumerate(joined) if c == "|"}
    assume(len(splits) >= 2)
    assert len({entry_key(m, f, "d" * 32, "p" * 24) for m, f in splits}) == len(splits)
    named = {(m, f) for m, f in splits if m and f}
    assert len({invalidation_tag(m, f) for m, f in named}) == len(named)


def test_a_mount_named_star_is_not_every_mount() -> None:
    assert invalidation_tag("*", "tools/list") != invalidation_tag(None, "tools/list")


@pytest.mark.parametrize("size", [0, 1, 128, 129, 100_000])
def test_store_keys_stay_short_whatever_the_fields(size: int) -> None:
    key = entry_key("/mcp/" + "é" * size, "x" * size, "d" * 32, "p" * 24)
    assert len(key) <= 128 + 1 + 128 + 1 + 32 + 1 + 24


def subject_key(scope: Any, request: McpRequest) -> str:
    """A custom key function: whatever it returns may hold any character."""
    return get_principal(scope).subject or ""


async def test_limiter_storage_keys_are_bounded_and_per_target_keys_injective() -> None:
    store = MemoryBucketStore()
    limiter = RateLimiter([BucketPolicy("p", rate=1, capacity=1, per_target=True)], store=store, key=subject_key)
    # identity "A\0B" + target "C" and identity "A" + target "B\0C" were one bucket
    for subject, target in [("A\x00B", "C"), ("A", "B\x00C"), ("A" * 100_000, "t")]:
        scope: dict[str, Any] = {"type": "http", "client": ("192.0.2.1", 1), "headers": []}
        set_principal(scope, Principal(subject=subject))
        assert (await limiter.check(scope, REQUEST._replace(params={"name": target}))).allowed
    assert len(set(store)) == 3
    assert all(len(key) == len("p:") + 32 for key in store)


# --- the attacks, on the wire -----------------------------------------------------------------------


async def test_an_auth0_style_subject_cannot_spend_another_principals_budget(serve: Any) -> None:
    tokens = {
        "victim": {"client_id": "app", "subject": "auth0|abc", "scopes": ["mcp"]},
        "attacker": {"client_id": "app|auth0", "subject": "abc", "scopes": ["mcp"]},
    }
    mcp_app = build_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    limited = RateLimitMiddleware(mcp_app, policies=[BucketPolicy("per-user", rate=0.001, capacity=2)])
    slot.app = AuthMiddleware(
        limited, verifier=StaticTokenVerifier(tokens, resource=served.mcp_url), resource=served.mcp_url
    )
    async with httpx2.AsyncClient(timeout=10) as http:

        async def as_(token: str) -> int:
            answer = await call_tool(
                http, served.mcp_url, "echo", {"text": "x"}, headers={"authorization": f"Bearer {token}"}
            )
            return answer.status_code

        assert [await as_("attacker") for _ in range(3)] == [200, 200, 429]
        assert await as_("victim") == 200, "the attacker's flood left the victim's bucket alone"


def whoami_server() -> MCPServer:
    server = MCPServer("private")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    def whoami() -> str:
        """Private: who the token says is calling."""
        token = get_access_token()
        return f"secret of {token.subject!r}" if token else "nobody"

    return server


async def test_a_unit_separator_in_a_subject_cannot_read_another_principals_cached_answer(serve: Any) -> None:
    tokens = {
        "victim": {"subject": "x\x1fy", "client_id": "z", "scopes": ["mcp"]},
        "attacker": {"subject": "x", "client_id": "y\x1fz", "scopes": ["mcp"]},
    }
    mcp_app = whoami_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    cached = ResponseCacheMiddleware(mcp_app, rules={"tools/call:whoami": 60}, allow_tools=["whoami"])
    slot.app = AuthMiddleware(
        cached, verifier=StaticTokenVerifier(tokens, resource=served.mcp_url), resource=served.mcp_url
    )
    call = {"name": "whoami", "arguments": {}}

    async def ask(token: str) -> tuple[str, str | None]:
        answer = await post_mcp(served.mcp_url, authorization=f"Bearer {token}", params=call)
        assert answer.status_code == 200, answer.text
        return answer.json()["result"]["content"][0]["text"], answer.headers.get("x-mcp-cache")

    victim_secret = "secret of " + repr("x\x1fy")
    assert (await ask("victim"))[0] == victim_secret
    text, cache = await ask("attacker")
    assert text == "secret of 'x'", "the attacker got its own answer, not the victim's cached one"
    assert cache != "hit"
    assert (await ask("victim")) == (victim_secret, "hit"), "the victim's entry is still cached"


# --- IPv6: one bucket per /64 ---------------------------------------------------------------------


def scope_from(peer: str, *headers: tuple[str, str]) -> dict[str, Any]:
    return {"type": "http", "client": (peer, 1), "headers": [(k.encode(), v.encode()) for k, v in headers]}


def test_anonymous_ipv6_callers_share_a_bucket_per_64() -> None:
    key = CallerKey()
    same = [key(scope_from(a), REQUEST) for a in ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe")]
    other = key(scope_from("2001:db8:1:3::1"), REQUEST)
    assert same[0] == same[1] == "address:2001:db8:1:2::/64"
    assert other == "address:2001:db8:1:3::/64"
    assert key(scope_from("::1"), REQUEST) == key(scope_from("::2"), REQUEST) == "address:::/64"
    assert key(scope_from("::ffff:192.0.2.7"), REQUEST) == "address:192.0.2.7", "IPv4-mapped counts as IPv4"
    assert key(scope_from("192.0.2.7"), REQUEST) != key(scope_from("192.0.2.8"), REQUEST), "IPv4 stays per address"


def test_the_prefix_is_configurable() -> None:
    per_address = CallerKey(ipv6_prefix=128)
    assert per_address(scope_from("2001:db8::1"), REQUEST) != per_address(scope_from("2001:db8::2"), REQUEST)
    wide = CallerKey(ipv6_prefix=48)
    assert wide(scope_from("2001:db8:1:2::1"), REQUEST) == wide(scope_from("2001:db8:1:ffff::1"), REQUEST)
    with pytest.raises(ValueError, match="ipv6_prefix"):
        CallerKey(ipv6_prefix=0)
    assert (
        parse_config('[[servers]]\nname = "a"\napp = "a:b"\n[ratelimit]\nipv6_prefix = 56\n').ratelimit.ipv6_prefix
        == 56
    )


def from_127_0_0_2() -> httpx2.AsyncClient:
    """TCP peer 127.0.0.2, our trusted proxy (uvicorn itself would rewrite forwarded headers from 127.0.0.1)."""
    return httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(local_address="127.0.0.2"), timeout=10)


@pytest.mark.parametrize(("prefix", "neighbour_status"), [(64, 429), (128, 200)])
async def test_behind_a_trusted_proxy_a_64_is_one_bucket(serve: Any, prefix: int, neighbour_status: int) -> None:
    app = RateLimitMiddleware(
        build_server().streamable_http_app(),
        policies=[BucketPolicy("p", rate=0.001, capacity=1)],
        trusted_proxies=["127.0.0.2"],
        ipv6_prefix=prefix,
    )
    served = serve(app)
    async with from_127_0_0_2() as http:

        async def status(address: str) -> int:
            answer = await call_tool(http, served.mcp_url, "echo", {"text": "x"}, headers={"x-forwarded-for": address})
            return answer.status_code

        assert await status("2001:db8:aa:1::1") == 200
        assert await status("2001:db8:aa:1:dead:beef:0:2") == neighbour_status  # same /64, another address
        assert await status("2001:db8:aa:2::1") == 200  # the next /64 is somebody else


async def test_the_gateway_applies_its_ipv6_prefix_setting(tmp_path: Any) -> None:
    from mcp_middleware.gateway.app import build_gateway
    from tests.conftest import serve_app

    config = parse_config(
        '[[servers]]\nname = "local"\napp = "tests.servers:build_server"\n'
        '[ratelimit]\ntrusted_proxies = ["127.0.0.2"]\nipv6_prefix = 128\n'
        '[[ratelimit.policies]]\nname = "p"\ncapacity = 1\nrate = 0.001\n'
    )
    with serve_app(build_gateway(config).app) as served:
        async with from_127_0_0_2() as http:
            statuses = [
                (
                    await call_tool(
                        http, f"{served.base}/mcp/local", "echo", {"text": "x"}, headers={"x-forwarded-for": address}
                    )
                ).status_code
                for address in ("2001:db8:aa:1::1", "2001:db8:aa:1::2")
            ]
    assert statuses == [200, 200], "with ipv6_prefix = 128 two addresses of one /64 are two callers"
