"""The usual rate limit in one step (`ratelimit/lone.py`): the same answers and the same buckets as the general path.

The lone path is taken for one bucket policy on everything, the default `CallerKey` and the memory
store, with `headers=False`; each test runs the same traffic through it and, where it compares,
through the general path (`headers=True`, which needs the policy states) and checks the buckets, the
decisions and the refusals agree.
"""

from __future__ import annotations

import math
from typing import Any

import httpx2
import orjson
import pytest
from starlette.types import Scope

from mcp_middleware import stack
from mcp_middleware.auth import StaticTokenVerifier
from mcp_middleware.core import ANONYMOUS, Principal, set_principal
from mcp_middleware.ratelimit import BucketPolicy, CallerKey, MemoryBucketStore, RateLimitMiddleware, global_key
from mcp_middleware.ratelimit.lone import LoneLimit
from tests.ratelimit.wire import call_tool, error_of
from tests.servers import build_server
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

SLOW = 0.001
"""One token per 1000 s: nothing refills during a test."""
_RESOURCE = "http://127.0.0.1/mcp"


def _limiter(**options: Any) -> RateLimitMiddleware:
    policies = options.pop("policies", [BucketPolicy("per-caller", rate=SLOW, capacity=2)])
    return RateLimitMiddleware(build_server().streamable_http_app(), policies=policies, **options)


def test_the_lone_path_is_taken_only_where_it_answers_as_the_limiter() -> None:
    assert _limiter()._lone is not None
    assert _limiter(headers=True)._lone is None  # the fields are written from the general path's states
    assert _limiter(trusted_proxies=["10.0.0.0/8"])._lone is not None  # principals still; addresses not (below)
    assert _limiter(key=global_key)._lone is None
    assert _limiter(key=CallerKey())._lone is not None

    class Watched(MemoryBucketStore):
        def decide(self, takes, now=None):  # type: ignore[no-untyped-def]
            return super().decide(takes, now)

    assert _limiter(store=Watched())._lone is None  # a subclass may observe or fault its decisions
    for policies in (
        [BucketPolicy("calls", selector="tools/call", rate=SLOW, capacity=2)],
        [BucketPolicy("p", rate=SLOW, capacity=2, per_target=True)],
        [BucketPolicy("p", rate=SLOW, capacity=2, key=global_key)],
        [BucketPolicy("a", rate=SLOW, capacity=2), BucketPolicy("b", rate=SLOW, capacity=3)],
    ):
        assert _limiter(policies=policies)._lone is None, policies


def _scope(client: str | None = "192.0.2.1", principal: Any = None, headers: list[tuple[bytes, bytes]] = ()) -> Scope:
    scope: Scope = {"type": "http", "client": (client, 4000) if client else None, "headers": list(headers)}
    if principal is not None:
        scope["mcp_middleware.principal"] = principal
    return scope


async def test_each_caller_gets_the_general_paths_own_bucket_key() -> None:
    middleware = _limiter()
    lone = LoneLimit.of(middleware.limiter)
    assert lone is not None
    limiter, policy = middleware.limiter, middleware.limiter.policies[0]
    alice = Principal(subject="alice", client_id="app", issuer="https://issuer.test")
    twin = Principal(subject="alice", client_id="app", issuer="https://issuer.test", scopes=frozenset({"x"}))
    mallory = Principal(subject="app|alice", issuer="https://issuer.test")  # cannot spell alice's key
    giant = Principal(subject="g" * 100_000)
    cases = [
        _scope(principal=alice),
        _scope(principal=twin),  # another object, the same caller: the same bucket
        _scope(principal=mallory),
        _scope(principal=giant),
        _scope(principal=giant),
        _scope("192.0.2.1"),
        _scope("2001:db8:1:2::1"),
        _scope("2001:db8:1:2::ffff"),  # the same /64
        _scope("192.0.2.1", principal=ANONYMOUS),  # an anonymous principal counts by its address
        _scope("198.51.100.7", principal=ANONYMOUS),
    ]
    request = _request()
    store = middleware.limiter.store
    assert isinstance(store, MemoryBucketStore)
    for scope in cases:
        decision = lone.take(scope, request)
        assert decision is not None and decision.allowed
        assert limiter.storage_key(policy, scope, request) in set(store)
    assert len(store) == 6  # alice, mallory, giant, 192.0.2.1, the /64, 198.51.100.7: nothing else
    key = limiter.storage_key
    assert store._buckets[key(policy, cases[0], request)][0] < 0.01  # alice and her twin: both tokens taken
    assert store._buckets[key(policy, cases[3], request)][0] < 0.01
    assert store._buckets[key(policy, cases[5], request)][0] < 0.01  # 192.0.2.1 alone and as ANONYMOUS
    assert store._buckets[key(policy, cases[6], request)][0] < 0.01  # one /64
    assert all(len(caller) < 600 for caller in lone._keys if isinstance(caller, str))
    assert not any(isinstance(caller, tuple) and caller[1] == giant.subject for caller in lone._keys)  # not kept
    # A third request of alice is refused, by the store's own decision.
    refused = lone.take(_scope(principal=alice), request)
    assert refused is not None and not refused.allowed and refused.retry_after > 900


async def test_where_the_lone_path_cannot_key_it_leaves_the_decision_to_the_limiter() -> None:
    behind_proxy = LoneLimit.of(_limiter(trusted_proxies=["10.0.0.0/8"]).limiter)
    assert behind_proxy is not None
    forwarded = _scope("10.1.2.3", headers=[(b"x-forwarded-for", b"203.0.113.9")])
    assert behind_proxy.take(forwarded, _request()) is None  # the address is in a header: the limiter reads it
    assert behind_proxy.take(_scope(principal=Principal(subject="alice")), _request()) is not None
    lone = LoneLimit.of(_limiter().limiter)
    assert lone is not None
    assert lone.take(_scope(client=None), _request()) is None
    assert lone.take(_scope(principal={"subject": "alice"}), _request()) is None  # not a Principal


def _request() -> Any:
    from mcp_middleware.core import Era, McpRequest, RequestKind

    return McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1, params={"name": "echo"})


def _normal(error: dict[str, Any]) -> Any:
    """A refusal without what the clock changes between two runs (the retry delay, to the second)."""
    data = error.get("data") or {}
    retry = data.get("retryAfterMs")
    return error["code"], error["id"], data.get("policy"), None if retry is None else math.ceil(retry / 1000)


def _stacked(headers: bool, recorder_into: list[Any]) -> Any:
    app = stack(
        build_server().streamable_http_app(),
        auth={
            "verifier": StaticTokenVerifier({"alice": ["mcp"], "bob": ["mcp"]}, resource=_RESOURCE),
            "resource": _RESOURCE,
        },
        ratelimit={"policies": [BucketPolicy("per-caller", rate=SLOW, capacity=2)], "headers": headers},
    )
    recorder = DecisionRecorder(app)
    recorder_into.append(recorder)
    return recorder


async def test_behind_auth_the_lone_path_answers_as_the_general_path(serve: Any) -> None:
    recorders: list[DecisionRecorder] = []
    lone, general = serve(_stacked(False, recorders)), serve(_stacked(True, recorders))
    results: list[list[tuple[int, Any]]] = []
    async with httpx2.AsyncClient(timeout=10) as http:
        for served in (lone, general):
            seen: list[tuple[int, Any]] = []
            for n, token in enumerate(["alice", "bob", "alice", "alice", "bob", "bob", "mallory"]):
                response = await call_tool(
                    http,
                    served.mcp_url,
                    "echo",
                    {"text": "x"},
                    request_id=f"r{n}",
                    headers={"authorization": f"Bearer {token}"},
                )
                body = (
                    orjson.loads(response.content) if response.headers["content-type"] == "application/json" else None
                )
                seen.append(
                    (response.status_code, _normal(error_of(response)) if response.status_code >= 400 else None)
                )
                assert body is None or body["id"] == f"r{n}"
            results.append(seen)
    assert results[0] == results[1]
    assert [status for status, _ in results[0]] == [200, 200, 200, 429, 200, 429, 401]
    assert results[0][3][1] == (-32014, "r3", "per-caller", 1000)  # (a token refills in 1000 s)
    # The decisions the observers see are the same, attribute for attribute.
    of_lone, of_general = (
        [
            (outcome, {**attributes, "retry_after_ms": math.ceil(attributes.get("retry_after_ms", 0) / 1000)})
            for outcome, attributes in recorder.of("ratelimit")
        ]
        for recorder in recorders
    )
    assert of_lone == of_general
    assert recorders[0].of("ratelimit")[:3] == [
        ("allow", {"policy": "per-caller", "remaining": 1}),
        ("allow", {"policy": "per-caller", "remaining": 1}),
        ("allow", {"policy": "per-caller", "remaining": 0}),
    ]
    assert of_lone[3][0] == "deny" and of_lone[3][1]["policy"] == "per-caller"


async def test_an_anonymous_caller_is_counted_by_address_on_the_lone_path(serve: Any) -> None:
    recorder = DecisionRecorder(_limiter())
    served = serve(recorder)
    async with httpx2.AsyncClient(timeout=10) as http:
        statuses = []
        for n in range(3):
            response = await http.post(
                served.mcp_url,
                content=modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, n),
                headers=modern_headers("tools/call", "echo"),
            )
            statuses.append(response.status_code)
    assert statuses == [200, 200, 429]
    assert [outcome for outcome, _ in recorder.of("ratelimit")] == ["allow", "allow", "deny"]
    # Auth never ran, so the limiter's after-check had its chance and found nothing.
    assert recorder.app.outside_auth.detected is False  # type: ignore[attr-defined]


async def test_a_principal_set_further_in_is_still_noticed(serve: Any) -> None:
    """The lone path keeps `__call__`'s after-check: a limiter outside auth learns it is."""

    class AuthInside:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                set_principal(scope, Principal(subject="alice"))
            await self.app(scope, receive, send)

    middleware = RateLimitMiddleware(
        AuthInside(build_server().streamable_http_app()), policies=[BucketPolicy("p", rate=SLOW, capacity=5)]
    )
    assert middleware._lone is not None
    served = serve(middleware)
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await call_tool(http, served.mcp_url, "echo", {"text": "x"})
    assert response.status_code == 200
    # (checked after the app returned, which may be just after the client has its answer)
    await until(lambda: middleware.outside_auth.detected, patience=10)
