"""The usual rate limit decided in one step: one bucket for every request, per caller, in memory.

Most deployments have one `BucketPolicy` matching everything, keyed by the default
:class:`~.keys.CallerKey`, on the default :class:`~.stores.MemoryBucketStore`. For them the
general path (a `BucketTake`, a list for the store, a `PolicyState` and an `Admission` for the
middleware, a storage key formatted per request) is work that always gives the same answer for
the same caller. :class:`LoneLimit` remembers each caller's storage key, keyed by what
`CallerKey` reads (the principal's client id, subject and issuer; for an anonymous caller, the
peer address) and asks the store about that one bucket. The decision is the store's own
(:meth:`~.stores.MemoryBucketStore.decide_one`, written out once more in :meth:`LoneLimit.admit`
for a bucket the store holds), so the counts are the same either way.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final, Literal

from starlette.types import Scope

from mcp_middleware.core import McpRequest, Principal
from mcp_middleware.core.decisions import Component, Decision, Outcome, add_decision
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY
from mcp_middleware.core.request import REQUEST_SCOPE_KEY

from .bucket import EPSILON, BucketDecision
from .keys import CallerKey
from .limiter import RateLimiter
from .policies import BucketPolicy
from .stores import _IDLE_SLACK, MemoryBucketStore

__all__ = ["LoneLimit"]

_REMEMBERED = 4096
"""Callers whose storage key is kept (the table is cleared when full: a flood only costs recomputing)."""
_REMEMBERED_LENGTH = 512
"""Longer addresses or identities are keyed each time, never kept."""
_NOBODY: Final[Any] = object()
"""The last caller before there was one (no principal is it)."""
_new: Any = tuple.__new__


class LoneLimit:
    """A limiter's lone bucket policy, decided per caller in one call (see the module docstring).

    Built by :meth:`of` only when it gives the same answers as the limiter: one bucket policy for
    every request (no quota), without its own key function or a bucket per target, the limiter's
    key an exact `CallerKey`, the store an exact `MemoryBucketStore` (a subclass may observe or
    fault its decisions). :meth:`take` answers `None` where the general path must decide (a
    principal of another type, an anonymous caller behind trusted proxies, no peer address).
    """

    __slots__ = (
        "_allowed",
        "_buckets",
        "_by_address",
        "_capacity",
        "_keys",
        "_last",
        "_last_entry",
        "_last_key",
        "_left",
        "_limiter",
        "_rate",
        "_remaining",
        "_store",
        "bucket",
        "cost",
        "name",
        "policy",
    )

    def __init__(self, limiter: RateLimiter, policy: BucketPolicy, store: MemoryBucketStore, by_address: bool) -> None:
        self._limiter = limiter
        self.policy = policy
        self.name = policy.name
        self.bucket = policy.bucket
        self.cost = policy.cost
        self._capacity = policy.bucket.capacity
        self._rate = policy.bucket.rate
        self._store = store
        self._buckets = store._buckets
        self._by_address = by_address
        self._keys: dict[Any, str] = {}
        self._last: Any = _NOBODY
        """The principal of the last request decided by its remembered key, that key (`_last_key`) and its bucket
        in the store (`_last_entry`, emptied by the store once it lets it go): auth hands out one principal object
        per remembered token, so a caller's next request finds its bucket at once. (It keeps that one principal.)"""
        self._last_key = ""
        self._last_entry: list[float] | None = None
        self._left = -1.0
        """The tokens left after the last admission, and the `allow` decision it was recorded with (`_allowed`,
        its `remaining` in `_remaining`): a constant, made again only when the count it shows changes."""
        self._remaining = -1
        self._allowed: Decision = _new(Decision, (Component.RATELIMIT, Outcome.ALLOW, MappingProxyType({})))

    @classmethod
    def of(cls, limiter: RateLimiter) -> LoneLimit | None:
        policy = limiter.lone_policy
        store, key = limiter.store, limiter.key
        if (
            policy is None
            or policy.key is not None
            or policy.per_target
            or type(store) is not MemoryBucketStore
            or type(key) is not CallerKey
        ):
            return None
        return cls(limiter, policy, store, not key.reads_headers)

    def admit(self, scope: Scope, principal: Any) -> BucketDecision | Literal[False] | None:
        """:meth:`take` for the request in the scope (read by the core) whose principal (or None) this is, its
        admission recorded: `None` once admitted (charged, its `allow` decision added to the scope: nothing is left
        to decide), the store's refusal (nothing charged), or False: ask the limiter.

        A caller seen before, whose bucket the store holds, is decided here: the store's step
        (:meth:`~.stores.MemoryBucketStore.decide_one`) written out once more, operation for operation (one
        frame fewer; `tests/ratelimit/test_lone_admit.py` compares the two and the bucket's rule). Anything
        else (a new caller, a forgotten bucket, idle buckets to forget first) takes the store's own step."""
        key = self._last_key
        entry = self._last_entry
        if principal is not self._last:
            found = (
                self._keys.get((principal.client_id, principal.subject, principal.issuer))
                if type(principal) is Principal
                else None
            )
            if found is None:
                return self.recorded(scope, self.take(scope, scope[REQUEST_SCOPE_KEY]))
            key = self._last_key = found
            entry = None
            self._last = principal
        if not entry:  # (another caller than the last, or the store let its bucket go: look it up)
            entry = self._last_entry = self._buckets.get(key)
            if entry is None:  # a new bucket: the store's own step
                return self.recorded(scope, self._store.decide_one(key, self.bucket, self.cost))
        now = self._store.clock()
        buckets = self._buckets
        if buckets[next(iter(buckets))][2] <= now:  # idle buckets to forget first: the store's own step
            return self.recorded(scope, self._store.decide_one(key, self.bucket, self.cost, now))
        tokens, updated, _ = entry
        capacity = self._capacity
        elapsed = now - updated
        if elapsed > 0:
            refilled = tokens + elapsed * self._rate
            tokens = refilled if refilled < capacity else capacity  # (`min(capacity, refilled)`, exactly)
        # The rule's `if tokens + EPSILON >= cost: tokens = max(0.0, tokens - cost)`, in the order that tells the
        # usual case in one test: `tokens >= cost` implies the rule's test, and a difference that is never below 0.
        if tokens >= self.cost:
            tokens -= self.cost
        elif tokens + EPSILON >= self.cost:
            tokens = 0.0  # (`max(0.0, tokens - cost)` of a difference below 0)
        else:
            buckets.move_to_end(key)  # a refused caller is a live one: never the first to be dropped
            rate = self._rate
            decision: BucketDecision = _new(
                BucketDecision, (False, tokens, (self.cost - tokens) / rate, (capacity - tokens) / rate)
            )
            return decision
        entry[0] = tokens  # (in place, as the store keeps it)
        entry[1] = now
        entry[2] = now + (capacity - tokens) / self._rate + _IDLE_SLACK
        buckets.move_to_end(key)
        if tokens != self._left:
            self._allowance(tokens)
        add_decision(scope, self._allowed)
        return None

    def recorded(self, scope: Scope, decision: BucketDecision | None) -> BucketDecision | Literal[False] | None:
        """:meth:`admit`'s answer for the store's decision (`None`: the limiter decides), an admission recorded."""
        if decision is None:
            return False
        if not decision[0]:
            return decision
        if decision[1] != self._left:
            self._allowance(decision[1])
        add_decision(scope, self._allowed)
        return None

    def _allowance(self, tokens: float) -> None:
        """Remember the `allow` decision of an admission that left `tokens` (what `_admitted` records)."""
        self._left = tokens
        remaining = int(tokens + EPSILON)
        if remaining != self._remaining:
            self._remaining = remaining
            # (read-only, as every decision shared by requests: an observer cannot change the next request's)
            attributes = MappingProxyType({"policy": self.name, "remaining": remaining})
            self._allowed = _new(Decision, (Component.RATELIMIT, Outcome.ALLOW, attributes))

    def take(self, scope: Scope, request: McpRequest) -> BucketDecision | None:
        """The store's decision for this request's caller (charged if allowed), or `None`: ask the limiter."""
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        caller: Any
        if principal is not None:
            if type(principal) is not Principal:
                return None
            # Only authenticated principals are remembered (below): an anonymous one's fields find nothing
            # here, and it is keyed by its address, as `CallerKey` keys it.
            caller = (principal.client_id, principal.subject, principal.issuer)
            key = self._keys.get(caller)
            if key is not None:
                return self._store.decide_one(key, self.bucket, self.cost)
            if principal.authenticated:
                size = sum(len(field) for field in caller if field is not None)
                return self._store.decide_one(self._key(scope, request, caller, size), self.bucket, self.cost)
        if not self._by_address:
            return None
        client = scope.get("client")
        if not client or type(client[0]) is not str:
            return None
        caller = client[0]  # a str; principals are remembered by tuples: the two never meet
        key = self._keys.get(caller)
        if key is None:
            key = self._key(scope, request, caller, len(caller))
        return self._store.decide_one(key, self.bucket, self.cost)

    def _key(self, scope: Scope, request: McpRequest, caller: Any, size: int) -> str:
        """The limiter's storage key for this caller, remembered unless the caller is spelt long."""
        key = self._limiter.storage_key(self.policy, scope, request)
        if size <= _REMEMBERED_LENGTH:
            keys = self._keys
            if len(keys) >= _REMEMBERED:
                keys.clear()
            keys[caller] = key
        return key
