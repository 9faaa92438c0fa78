"""`LoneLimit.admit`, the lone policy's one-frame decision, against the exact path it stands for.

`admit` decides a caller it has seen before, whose bucket the store holds, with the store's step written
out once more (`MemoryBucketStore.decide_one`), remembers the last principal's storage key, and records a
shared `allow` decision. These tests drive two twins with the same traffic on one clock of the test's own:
one through `admit`, one through `take` (the store's own step, checked against `TokenBucket.decide` in
`test_stores.py`) with the decision `_admitted` records built by hand, and compare every answer bit for
bit, every recorded decision attribute for attribute, and the buckets the two stores keep, in order.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Scope

from mcp_middleware.core import ANONYMOUS, Era, McpRequest, Principal, RequestKind, get_decisions
from mcp_middleware.core.decisions import Component, Outcome
from mcp_middleware.core.request import REQUEST_SCOPE_KEY
from mcp_middleware.ratelimit import BucketPolicy, MemoryBucketStore, RateLimiter, RateLimitMiddleware
from mcp_middleware.ratelimit.bucket import EPSILON
from mcp_middleware.ratelimit.lone import LoneLimit

pytestmark = pytest.mark.anyio

_REQUEST = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1, params={"name": "e"})

_ALICE = Principal(subject="alice", client_id="app", issuer="https://issuer.test")
_CALLERS: list[tuple[str | None, Any]] = [
    ("192.0.2.1", _ALICE),
    ("192.0.2.1", Principal(subject="alice", client_id="app", issuer="https://issuer.test")),  # her twin object
    ("192.0.2.2", Principal(subject="bob", issuer="https://issuer.test")),
    ("192.0.2.3", Principal(client_id="service")),
    ("192.0.2.1", None),  # anonymous, by address (alice's address: another bucket)
    ("198.51.100.7", ANONYMOUS),
    ("2001:db8::1", None),
    (None, None),  # no address: the limiter decides
    ("192.0.2.9", {"subject": "not a Principal"}),  # the limiter decides
]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _twin(clock: Clock, capacity: float, rate: float, cost: float, max_buckets: int) -> LoneLimit:
    store = MemoryBucketStore(max_buckets=max_buckets, clock=clock)
    limiter = RateLimiter([BucketPolicy("per-caller", rate=rate, capacity=capacity, cost=cost)], store=store)
    lone = LoneLimit.of(limiter)
    assert lone is not None
    return lone


def _scope(address: str | None, principal: Any) -> Scope:
    scope: Scope = {"type": "http", "client": (address, 4000) if address else None, "headers": []}
    scope[REQUEST_SCOPE_KEY] = _REQUEST  # (read by the core, as it is when the limiter decides)
    if principal is not None:
        scope["mcp_middleware.principal"] = principal
    return scope


def _kept(lone: LoneLimit) -> list[tuple[str, tuple[str, ...]]]:
    """The buckets the store keeps, in its order, every float by its `repr` (-0.0 told from 0.0)."""
    return [(key, tuple(repr(x) for x in entry)) for key, entry in lone._store._buckets.items()]


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.sampled_from([1.0, 2.0, 3.0, 1e9]),
    rate=st.sampled_from([0.001, 0.3, 1.0, 7.0, 1e9]),
    cost=st.sampled_from([1.0, 0.5, 0.3, 1 / 3]),
    max_buckets=st.sampled_from([1, 2, 100]),
    steps=st.lists(
        st.tuples(
            st.integers(0, len(_CALLERS) - 1),
            st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 1.0 + 5e-10, 3.0, 30.0, -0.5, 1e9]),
        ),
        min_size=1,
        max_size=40,
    ),
    start=st.floats(0, 2e9, allow_nan=False),
)
def test_admit_answers_records_and_keeps_what_the_exact_path_does(
    capacity: float, rate: float, cost: float, max_buckets: int, steps: list[tuple[int, float]], start: float
) -> None:
    clock = Clock(start)
    fast, exact = (_twin(clock, capacity, rate, cost, max_buckets) for _ in range(2))
    for caller, gap in steps:
        clock.now += gap
        address, principal = _CALLERS[caller]
        fast_scope, exact_scope = _scope(address, principal), _scope(address, principal)
        answer = fast.admit(fast_scope, principal)
        decision = exact.take(exact_scope, _REQUEST)
        if decision is None:
            assert answer is False
            assert get_decisions(fast_scope) == ()
        elif decision.allowed:
            assert answer is None
            (recorded,) = get_decisions(fast_scope)
            assert recorded.component is Component.RATELIMIT and recorded.outcome is Outcome.ALLOW
            expected = {"policy": "per-caller", "remaining": int(decision.remaining + EPSILON)}
            assert recorded.attributes == expected
            assert [type(v) for v in recorded.attributes.values()] == [str, int]
        else:
            assert answer is not None and answer is not False
            assert type(answer) is type(decision)
            assert [repr(x) for x in answer] == [repr(x) for x in decision]
            assert get_decisions(fast_scope) == ()  # a refusal is recorded by the middleware, with its headers
        assert _kept(fast) == _kept(exact)
        assert set(fast._keys) == set(exact._keys)


def test_a_principal_object_seen_last_is_keyed_as_its_fields_say() -> None:
    """The last principal's key is kept by identity; another object with other fields never finds it."""
    clock = Clock(1000.0)
    lone = _twin(clock, 2.0, 0.001, 1.0, 100)
    bob = Principal(subject="bob", issuer="https://issuer.test")
    for principal in (_ALICE, _ALICE, bob, _ALICE):
        lone.admit(_scope("192.0.2.1", principal), principal)
    # alice: 3 requests, capacity 2: the third is refused; bob: one, one token left.
    limiter = lone._limiter
    alice_key = limiter.storage_key(lone.policy, _scope("192.0.2.1", _ALICE), _REQUEST)
    bob_key = limiter.storage_key(lone.policy, _scope("192.0.2.1", bob), _REQUEST)
    assert lone._store._buckets[alice_key][0] < 0.01
    assert 0.99 < lone._store._buckets[bob_key][0] < 1.01
    refused = lone.admit(_scope("192.0.2.1", _ALICE), _ALICE)
    assert refused is not None and refused is not False and not refused.allowed


def test_the_shared_allow_decision_changes_with_what_it_shows() -> None:
    """One `allow` decision object while the count it shows stays (a caller under its limit), a new one when
    it changes: an observer never sees an old count."""
    clock = Clock(1000.0)
    lone = _twin(clock, 3.0, 1.0, 1.0, 100)
    seen = []
    for gap in (0.0, 5.0, 5.0, 0.0, 0.0):
        clock.now += gap
        scope = _scope("192.0.2.1", _ALICE)
        assert lone.admit(scope, _ALICE) is None
        seen.append(get_decisions(scope)[0])
    assert [d.attributes["remaining"] for d in seen] == [2, 2, 2, 1, 0]
    assert seen[0] is seen[1] is seen[2]
    assert seen[3] is not seen[2] and seen[4] is not seen[3]
    with pytest.raises(TypeError):  # shared by requests: read-only, so one observer cannot change another's
        seen[0].attributes["remaining"] = 99  # type: ignore[index]


def test_a_request_no_layer_read_is_entered_by_call() -> None:
    """No view in the scope (no layer of ours read the request): the direct entry is `__call__`, which reads it."""

    def app(scope: Scope, receive: Any, send: Any) -> Any:
        raise AssertionError("not reached")

    middleware = RateLimitMiddleware(app, policies=[BucketPolicy("per-caller", rate=1.0, capacity=2.0)])
    receive: Any = None
    send: Any = None
    unread = _scope("192.0.2.1", _ALICE)
    del unread[REQUEST_SCOPE_KEY]
    entered: Any = middleware.mcp_direct(unread, receive, send)
    assert entered.cr_code.co_qualname == "RateLimitMiddleware.__call__"
    entered.close()


async def test_after_the_store_closes_the_last_callers_bucket_starts_again_full() -> None:
    """The store empties every bucket it lets go (here all, at close): the one `admit` kept is never used again."""
    clock = Clock(1000.0)
    fast, exact = (_twin(clock, 2.0, 0.001, 1.0, 100) for _ in range(2))
    for lone in (fast, exact):
        for _ in range(3):
            lone.admit(_scope("192.0.2.1", _ALICE), _ALICE)
        await lone._store.aclose()
        assert len(lone._store) == 0
    assert fast.admit(_scope("192.0.2.1", _ALICE), _ALICE) is None  # a full bucket again: admitted
    assert exact.take(_scope("192.0.2.1", _ALICE), _REQUEST) is not None
    assert _kept(fast) == _kept(exact) and len(fast._store) == 1


@pytest.mark.parametrize("short", [0.0, 5e-10, 1e-9, 2e-9, -5e-10])
@pytest.mark.parametrize("cost", [1.0, 0.3])
def test_a_bucket_a_hair_short_of_the_cost_is_decided_as_the_rule_decides(short: float, cost: float) -> None:
    """Within `EPSILON` of the cost (float rounding of a refill), the rule admits and leaves 0.0; further, it
    refuses: a bucket the store holds with those tokens, decided by both paths on the same clock."""
    clock = Clock(1000.0)
    fast, exact = (_twin(clock, 2.0, 0.001, cost, 100) for _ in range(2))
    for lone in (fast, exact):
        lone.take(_scope("192.0.2.1", _ALICE), _REQUEST)  # (alice is known, her bucket held)
        (entry,) = lone._store._buckets.values()
        entry[0] = cost - short  # (no refill: the clock does not move)
        entry[1] = clock.now
    fast_scope, exact_scope = _scope("192.0.2.1", _ALICE), _scope("192.0.2.1", _ALICE)
    answer = fast.admit(fast_scope, _ALICE)
    decision = exact.take(exact_scope, _REQUEST)
    assert decision is not None and decision.allowed == (cost - short + EPSILON >= cost)
    if decision.allowed:
        assert answer is None
        assert get_decisions(fast_scope)[0].attributes == {"policy": "per-caller", "remaining": 0}
    else:
        assert answer is not None and answer is not False
        assert [repr(x) for x in answer] == [repr(x) for x in decision]
    assert _kept(fast) == _kept(exact)
