"""Keys: who a limit counts against, and hostile key material that must not mint buckets or break anything."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from mcp_middleware.core import Era, McpRequest, Principal, RequestKind, set_principal
from mcp_middleware.ratelimit import (
    BucketPolicy,
    CallerKey,
    MemoryBucketStore,
    RateLimiter,
    RateLimitMiddleware,
    global_key,
)
from tests.ratelimit.wire import SubjectFromHeader, call_tool, error_of
from tests.servers import build_server

pytestmark = pytest.mark.anyio

REQUEST = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1, params={"name": "echo"})


def scope_from(peer: str, *headers: tuple[str, str]) -> dict[str, Any]:
    return {"type": "http", "client": (peer, 40000), "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers]}


def test_the_principal_wins_over_the_address() -> None:
    scope = scope_from("192.0.2.7")
    assert CallerKey()(scope, REQUEST) == "address:192.0.2.7"
    set_principal(scope, Principal(subject="alice", client_id="app", issuer="https://idp"))
    assert CallerKey()(scope, REQUEST) == "principal:3:app|5:alice|11:https://idp"


def test_remembered_keys_stay_injective_and_bounded() -> None:
    """The key function remembers identities and address buckets: the same answers as computing
    them, principals that differ only in where a `|` falls stay apart, and a flood stays bounded."""
    key = CallerKey()
    answers = []
    for _ in range(2):  # computed, then remembered
        for client_id, subject in (("a|b", "c"), ("a", "b|c"), (None, "a|b|c"), ("", "a|b|c")):
            scope = scope_from("192.0.2.7")
            set_principal(scope, Principal(subject=subject, client_id=client_id))
            answers.append(key(scope, REQUEST))
    assert answers[:4] == answers[4:] and len(set(answers)) == 4
    assert key.address_bucket("2001:db8:1:2:aaaa::1") == key.address_bucket("2001:db8:1:2:bbbb::2")
    assert key.address_bucket("::ffff:192.0.2.1") == "192.0.2.1"
    for n in range(5000):  # a flood of distinct callers: the table is cleared, never grows past its bound
        key(scope_from(f"10.0.{n // 256}.{n % 256}"), REQUEST)
    assert len(key._addresses) <= 4096
    assert key(scope_from("10.0.0.1"), REQUEST) == "address:10.0.0.1"
    huge = "x" * 100_000  # a giant identity is computed each time, never kept
    scope = scope_from("192.0.2.7")
    set_principal(scope, Principal(subject=huge))
    assert key(scope, REQUEST) == f"principal:-|{len(huge)}:{huge}|-"
    assert all(len(v) <= 512 for v in key._identities.values())


def test_forwarding_headers_are_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    forged = scope_from("198.51.100.9", ("x-forwarded-for", "203.0.113.1"))
    assert CallerKey()(forged, REQUEST) == "address:198.51.100.9"
    assert CallerKey(trusted_proxies=["10.0.0.0/8"])(forged, REQUEST) == "address:198.51.100.9"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("203.0.113.1", "203.0.113.1"),
        ("evil-forged, 6.6.6.6, 203.0.113.1", "203.0.113.1"),  # left of the first untrusted hop is the client's lie
        ("203.0.113.1, 10.0.0.2", "203.0.113.1"),  # trusted hops are skipped
        ("203.0.113.1:5555", "203.0.113.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("not-an-ip", "10.0.0.1"),  # junk counts as the proxy that handed it over: no fresh bucket per lie
        ("", "10.0.0.1"),
        ("x" * 10_000, "10.0.0.1"),
    ],
)
def test_x_forwarded_for_behind_a_trusted_proxy(header: str, expected: str) -> None:
    key = CallerKey(trusted_proxies=["10.0.0.0/8"])
    assert key.client_address(scope_from("10.0.0.1", ("x-forwarded-for", header))) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("for=6.6.6.6, for=192.0.2.60", "192.0.2.60"),
        ("for=_hidden", "127.0.0.1"),
        ("proto=https", "127.0.0.1"),
    ],
)
def test_forwarded_behind_a_trusted_proxy(header: str, expected: str) -> None:
    key = CallerKey(trusted_proxies=["127.0.0.1"], header="forwarded")
    assert key.client_address(scope_from("127.0.0.1", ("forwarded", header))) == expected


def test_a_long_chain_is_read_only_from_the_right() -> None:
    chain = ", ".join(["10.0.0.5"] * 100_000)
    key = CallerKey(trusted_proxies=["10.0.0.0/8"])
    assert key.client_address(scope_from("10.0.0.1", ("x-forwarded-for", chain))) == "10.0.0.5"


async def test_huge_and_unicode_subjects_are_hashed_into_short_storage_keys() -> None:
    store = MemoryBucketStore()
    limiter = RateLimiter([BucketPolicy("p", rate=1, capacity=1)], store=store)
    fullwidth_alice = "\uff41\uff4c\uff49\uff43\uff45"
    subjects = ["é🙂" * 50_000, "\udcff lone surrogate", "a\x00b", fullwidth_alice, "alice"]
    for subject in subjects:
        scope = scope_from("192.0.2.1")
        set_principal(scope, Principal(subject=subject))
        assert (await limiter.check(scope, REQUEST)).allowed
    keys = list(store)
    assert len(set(keys)) == len(subjects)  # distinct callers, distinct buckets
    assert all(len(k) == len("p:") + 32 and k.isascii() for k in keys)


def from_127_0_0_2() -> httpx2.AsyncClient:
    """A client whose TCP peer address is 127.0.0.2: uvicorn itself trusts forwarding headers from
    127.0.0.1 (its `forwarded_allow_ips` default) and would rewrite the peer before we see it."""
    return httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(local_address="127.0.0.2"))


async def test_forged_forwarding_headers_do_not_escape_the_limit(serve: Any) -> None:
    served = serve(
        RateLimitMiddleware(build_server().streamable_http_app(), policies=[BucketPolicy("p", rate=0.001, capacity=2)])
    )
    async with from_127_0_0_2() as http:
        answers = [
            await call_tool(http, served.mcp_url, "echo", {"text": "x"}, headers={"x-forwarded-for": f"203.0.113.{n}"})
            for n in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(serve: Any) -> None:
    app = RateLimitMiddleware(
        build_server().streamable_http_app(),
        policies=[BucketPolicy("p", rate=0.001, capacity=1)],
        trusted_proxies=["127.0.0.2"],
    )
    served = serve(app)
    async with from_127_0_0_2() as http:

        async def status(forwarded: str) -> int:
            answer = await call_tool(
                http, served.mcp_url, "echo", {"text": "x"}, headers={"x-forwarded-for": forwarded}
            )
            return answer.status_code

        assert [await status("203.0.113.1"), await status("203.0.113.2")] == [200, 200]
        assert await status("203.0.113.1") == 429
        assert await status("lies, 203.0.113.2") == 429  # a forged left part changes nothing


async def test_authenticated_callers_have_their_own_buckets_and_a_flood_leaves_others_alone(serve: Any) -> None:
    app = RateLimitMiddleware(
        build_server().streamable_http_app(), policies=[BucketPolicy("p", rate=0.001, capacity=2)], headers=True
    )
    served = serve(SubjectFromHeader(app))
    async with httpx2.AsyncClient() as http:

        async def as_(subject: str) -> httpx2.Response:
            header = {"x-test-subject": subject.encode()}
            return await call_tool(http, served.mcp_url, "echo", {"text": "x"}, headers=header)

        flood = [await as_("mallory") for _ in range(10)]
        assert [r.status_code for r in flood].count(200) == 2
        assert error_of(flood[-1])["data"]["policy"] == "p"
        huge = "ü🙂" * 2_000  # ~12 KB: as large as the HTTP server lets a header be
        assert (await as_(huge)).status_code == 200
        bob = await as_("bob")
    assert bob.status_code == 200
    assert bob.headers["ratelimit"] == '"p";r=1;t=1000'  # untouched by mallory's refused requests


async def test_malformed_requests_consume_nothing(serve: Any) -> None:
    served = serve(
        RateLimitMiddleware(
            build_server().streamable_http_app(), policies=[BucketPolicy("p", rate=0.001, capacity=3)], headers=True
        )
    )
    modern = {"content-type": "application/json", "mcp-protocol-version": "2026-07-28", "accept": "application/json"}
    async with httpx2.AsyncClient() as http:
        bad = [
            await http.post(served.mcp_url, content=b"{not json", headers=modern),
            await http.post(served.mcp_url, content=b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', headers=modern),
            await http.post(served.mcp_url, content=b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}', headers=modern),
            await http.post(served.mcp_url, content=b"{}", headers={"content-type": "text/plain"}),
            await http.post(served.mcp_url, content=b"x" * (5 * 1024 * 1024), headers=modern),
        ]
        assert [r.status_code for r in bad] == [400, 400, 400, 415, 413]
        assert all(r.headers["content-type"] == "application/json" and "ratelimit" not in r.headers for r in bad)
        ok = await call_tool(http, served.mcp_url, "echo", {"text": "x"})
    assert ok.headers["ratelimit"] == '"p";r=2;t=1000'


def test_global_key_is_one_bucket_for_everyone() -> None:
    assert global_key(scope_from("192.0.2.1"), REQUEST) == global_key(scope_from("192.0.2.2"), REQUEST)
