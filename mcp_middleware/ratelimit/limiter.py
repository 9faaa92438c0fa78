"""The decision: which policies match a request, and whether every one of them admits it.

:class:`RateLimiter` is the middleware's engine, usable on its own (a router, a custom
middleware). Order of work, so that a refused request consumes nothing: window quotas are
tested (not counted), then every matching bucket is charged in one atomic store call (all
or nothing), then the quotas are counted; should a quota refuse in that last step (a race
with another instance), the bucket tokens are given back.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import limits.aio.storage
import limits.aio.strategies
from limits.errors import StorageError
from opentelemetry import metrics
from starlette.types import Scope

from mcp_middleware.core import McpRequest

from .bucket import EPSILON, BucketDecision
from .keys import CallerKey, KeyFunction
from .policies import BucketPolicy, Policy, QuotaPolicy
from .quota_storage import aclose_quota_storage, quota_storage_from_url
from .stores import BucketStore, BucketTake, MemoryBucketStore, StoreUnavailable

__all__ = ["FailureMode", "PolicyState", "RateLimiter", "Admission"]

logger = logging.getLogger("mcp_middleware.ratelimit")

FailureMode = Literal["open", "closed"]

_BASE_STORE_ERRORS: tuple[type[Exception], ...] = (StoreUnavailable, StorageError, OSError, TimeoutError)


def _store_errors() -> tuple[type[Exception], ...]:
    """What a store failure may raise; evaluated only when something was raised (an `except` clause's expression).

    A `limits` storage built without wrap_exceptions raises the client's own errors: redis-py's, which is
    loaded once a Redis client exists. Importing it up front would cost every process ~0.1 s at start (a
    serverless cold start) whether or not any store is Redis.
    """
    loaded = sys.modules.get("redis.exceptions")
    return _BASE_STORE_ERRORS if loaded is None else (*_BASE_STORE_ERRORS, loaded.RedisError)


class PolicyState(NamedTuple):
    """One policy's standing after a decision, as the `RateLimit`/`RateLimit-Policy` fields say it."""

    policy: str
    quota: int
    """`q`: the burst of a bucket, the limit of a quota."""
    window: int
    """`w`: seconds a bucket takes to fill, or the quota's window."""
    remaining: int
    """`r`: whole requests' worth left."""
    reset: int
    """`t`: seconds until the bucket is full again / the window resets."""


class Admission(NamedTuple):
    """Whether a request may go on, and the state of every policy that matched it."""

    allowed: bool
    states: tuple[PolicyState, ...] = ()
    """The matched policies; on a refusal, only the one that refused."""
    policy: str | None = None
    """The policy that refused."""
    retry_after: float = 0.0
    """Seconds until the refused request would be admitted."""
    degraded: bool = False
    """A store failed: `allowed` is the configured failure mode, not a count."""


_NOTHING_MATCHED = Admission(True)

_STRATEGIES: dict[str, type[limits.aio.strategies.RateLimiter]] = {
    "fixed-window": limits.aio.strategies.FixedWindowRateLimiter,
    "moving-window": limits.aio.strategies.MovingWindowRateLimiter,
    "sliding-window-counter": limits.aio.strategies.SlidingWindowCounterRateLimiter,
}


_CACHED_IDENTITY_LENGTH = 256
_DIGEST_CACHE_SIZE = 4096

P = TypeVar("P", BucketPolicy, QuotaPolicy)


def _digest(text: str) -> str:
    # 128 bits: collisions are not a concern, storage keys stay short whatever a subject looks like.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def lone_admission(policy: BucketPolicy, decision: BucketDecision) -> Admission:
    """The admission of one bucket policy's decision (what a limiter with one policy answers)."""
    reset = math.ceil(decision.reset_after - EPSILON)
    if decision.allowed:
        state = tuple.__new__(
            PolicyState, (policy.name, policy.quota, policy.window, int(decision.remaining + EPSILON), reset)
        )
        return tuple.__new__(Admission, (True, (state,), None, 0.0, False))
    state = PolicyState(policy.name, policy.quota, policy.window, 0, reset)
    return Admission(False, (state,), policy.name, decision.retry_after)


class RateLimiter:
    """Decide requests against bucket and quota policies.

    >>> import asyncio
    >>> from mcp_middleware.core import McpRequest, RequestKind, Era
    >>> limiter = RateLimiter([BucketPolicy("per-caller", rate=1, capacity=2)])
    >>> request = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1,
    ...                      params={"name": "echo"})
    >>> scope = {"type": "http", "client": ("192.0.2.1", 4000), "headers": []}
    >>> [asyncio.run(limiter.check(scope, request)).allowed for _ in range(3)]
    [True, True, False]

    `store` holds the buckets (default :class:`MemoryBucketStore`; a
    :class:`RedisBucketStore` shares them between instances); `quota_storage` holds the
    window counts (a `limits` storage or its URI: `"memory://"`, `"redis://host:6379/0"`).
    `key` is the default key function (:class:`CallerKey`). `namespace` prefixes every
    storage key, so several servers can share one Redis (and names the server in log lines).
    `failure` says what happens when a store cannot decide: `"open"` admits (`store_failures`
    counter, the OTel counter `mcp_middleware.ratelimit.store_errors`, `on_store_error`),
    `"closed"` refuses. Either way the outage is logged once at WARNING when it starts and once
    when the store answers again.
    """

    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        store: BucketStore | None = None,
        quota_storage: str | limits.aio.storage.Storage = "memory://",
        key: KeyFunction | None = None,
        namespace: str = "",
        failure: FailureMode = "open",
        quota_timeout: float = 0.25,
        on_store_error: Callable[[Exception], None] | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        if failure not in ("open", "closed"):
            raise ValueError("failure must be 'open' or 'closed'")
        names = [policy.name for policy in policies]
        if len(set(names)) != len(names):
            raise ValueError("policy names must be unique")
        self.policies = tuple(policies)
        self._buckets = tuple(p for p in self.policies if isinstance(p, BucketPolicy))
        self._quotas = tuple(p for p in self.policies if isinstance(p, QuotaPolicy))
        self._bucket_rules = tuple((p, p.everything) for p in self._buckets)
        self._quota_rules = tuple((p, p.everything) for p in self._quotas)
        # Every bucket policy applies to every request (the usual per-caller limit): no matching per request.
        self._every_bucket: list[BucketPolicy] | None = (
            list(self._buckets) if all(p.everything for p in self._buckets) else None
        )
        self.store: BucketStore = store if store is not None else MemoryBucketStore()
        # A store that decides without I/O (memory) is called directly: a coroutine fewer per request.
        self._sync = self.store.sync
        # The usual setup (one bucket for every request, a store without I/O, no quota) has a path of its own.
        self._lone: BucketPolicy | None = (
            self._buckets[0]
            if len(self._buckets) == 1 and self._buckets[0].everything and not self._quotas and self._sync is not None
            else None
        )
        self._digests: dict[str, str] = {}
        self.key: KeyFunction = key if key is not None else CallerKey()
        self.namespace = namespace
        self.failure: FailureMode = failure
        self.on_store_error = on_store_error
        self.store_failures = 0
        """How many decisions a failing store could not make (a metric for fail-open)."""
        self._errors = metrics.get_meter("mcp_middleware.ratelimit", meter_provider=meter_provider).create_counter(
            "mcp_middleware.ratelimit.store_errors",
            unit="{decision}",
            description="Rate-limit decisions a store could not make; decided by the failure mode instead",
        )
        self._down = False
        """The store failed its last decision: its outage was logged, its recovery will be (once each)."""
        self._quota_storage: limits.aio.storage.Storage | None = None
        self._strategies: dict[str, limits.aio.strategies.RateLimiter] = {}
        self._owns_quota_storage = False
        """Built here from a URI (not passed in, maybe shared): :meth:`aclose` closes it."""
        if self._quotas:
            self._quota_storage = _quota_storage(quota_storage, quota_timeout)
            self._owns_quota_storage = isinstance(quota_storage, str)
            self._strategies = {p.strategy: _STRATEGIES[p.strategy](self._quota_storage) for p in self._quotas}

    async def aclose(self) -> None:
        """Close the bucket store, and the quota storage if it was built here from a URI (a storage passed
        in is its owner's to close: :func:`~mcp_middleware.ratelimit.quota_storage.aclose_quota_storage`)."""
        await self.store.aclose()
        if self._owns_quota_storage and self._quota_storage is not None:
            await aclose_quota_storage(self._quota_storage)

    @property
    def lone_policy(self) -> BucketPolicy | None:
        """The one bucket policy of the usual setup (it matches every request, no quota, a store without I/O)."""
        return self._lone

    def storage_key(self, policy: Policy, scope: Scope, request: McpRequest) -> str:
        """Where `policy` keeps the state of this request's caller (namespace, policy, digest of the identity)."""
        return self._storage_key(policy, scope, request, {})

    def _storage_key(self, policy: Policy, scope: Scope, request: McpRequest, seen: dict[Any, str]) -> str:
        function = policy.key or self.key
        identity = seen.get(function)
        if identity is None:
            identity = seen[function] = function(scope, request)
        if policy.per_target:  # length-prefixed: no identity can end in a target's spelling
            identity = f"{len(identity)}:{identity}\x00{request.target or ''}"
        digest = self._digests.get(identity)
        if digest is None:
            digest = _digest(identity)
            if len(identity) <= _CACHED_IDENTITY_LENGTH:  # hostile giants are hashed, never kept
                if len(self._digests) >= _DIGEST_CACHE_SIZE:
                    self._digests.clear()
                self._digests[identity] = digest
        return f"{self.namespace}{policy.name}:{digest}"

    def _matching(self, rules: tuple[tuple[P, bool], ...], request: McpRequest) -> list[P]:
        matched: list[P] = []
        method, target, looked = request.method, None, False
        for policy, everything in rules:
            if not everything:
                if not looked:
                    target, looked = request.target, True
                if not policy.matches_parts(method, target):
                    continue
            matched.append(policy)
        return matched

    def check_now(self, scope: Scope, request: McpRequest) -> Admission | None:
        """:meth:`check` without a coroutine where it needs no wait (one bucket policy for every request
        on a store without I/O); `None` otherwise: then await :meth:`check`."""
        lone = self._lone
        return self._check_lone(lone, scope, request, None) if lone is not None else None

    async def check(self, scope: Scope, request: McpRequest, *, now: float | None = None) -> Admission:
        """Decide one request (`now` injects the bucket store's clock for tests)."""
        lone = self._lone
        if lone is not None:
            return self._check_lone(lone, scope, request, now)
        every = self._every_bucket
        buckets = every if every is not None else self._matching(self._bucket_rules, request)
        quotas = self._matching(self._quota_rules, request) if self._quota_rules else []
        if not buckets and not quotas:
            return _NOTHING_MATCHED
        seen: dict[Any, str] = {}
        try:
            if quotas:
                quota_keys = [self._storage_key(p, scope, request, seen) for p in quotas]
                # Test before counting only when something else could still refuse (buckets, another
                # quota): a lone quota is simply counted, one round trip fewer.
                if buckets or len(quotas) > 1:
                    refusal = await self._test_quotas(quotas, quota_keys)
                    if self._down:
                        self._recovered()
                    if refusal is not None:
                        return refusal
            states: list[PolicyState] = []
            takes: list[BucketTake] = []
            if buckets:
                # tuple.__new__ builds these NamedTuples without their Python-level __new__ (hot path).
                takes = [
                    tuple.__new__(BucketTake, (self._storage_key(p, scope, request, seen), p.bucket, p.cost))
                    for p in buckets
                ]
                sync = self._sync
                decisions = sync.decide(takes, now) if sync is not None else await self.store.take(takes, now=now)
                if self._down:
                    self._recovered()
                refused: tuple[BucketPolicy, BucketDecision] | None = None
                for policy, decision in zip(buckets, decisions, strict=True):
                    if decision.allowed:
                        reset = math.ceil(decision.reset_after - EPSILON)
                        remaining = int(decision.remaining + EPSILON)
                        states.append(
                            tuple.__new__(PolicyState, (policy.name, policy.quota, policy.window, remaining, reset))
                        )
                    elif refused is None or decision.retry_after > refused[1].retry_after:
                        refused = (policy, decision)
                if refused is not None:  # nothing was charged: the store decides all buckets or none
                    policy, decision = refused
                    reset = math.ceil(decision.reset_after - EPSILON)
                    state = PolicyState(policy.name, policy.quota, policy.window, 0, reset)
                    return Admission(False, (state,), policy.name, decision.retry_after)
            if quotas:
                refusal = await self._hit_quotas(quotas, quota_keys, states)
                if self._down:
                    self._recovered()
                if refusal is not None:
                    if takes:
                        await self.store.give_back(takes, now=now)
                    return refusal
        except _store_errors() as exc:
            return self._degraded(exc)
        return tuple.__new__(Admission, (True, tuple(states), None, 0.0, False))

    def _check_lone(self, policy: BucketPolicy, scope: Scope, request: McpRequest, now: float | None) -> Admission:
        """:meth:`check` for one bucket policy matching every request on a synchronous store (no await)."""
        sync = self._sync
        assert sync is not None
        take = tuple.__new__(BucketTake, (self._storage_key(policy, scope, request, {}), policy.bucket, policy.cost))
        try:
            (decision,) = sync.decide((take,), now)
        except _store_errors() as exc:
            return self._degraded(exc)
        if self._down:
            self._recovered()
        return lone_admission(policy, decision)

    async def _test_quotas(self, quotas: list[QuotaPolicy], keys: list[str]) -> Admission | None:
        for policy, key in zip(quotas, keys, strict=True):
            strategy = self._strategies[policy.strategy]
            if not await strategy.test(policy.item, key, cost=policy.cost):
                return await self._quota_refusal(policy, key)
        return None

    async def _hit_quotas(
        self, quotas: list[QuotaPolicy], keys: list[str], states: list[PolicyState]
    ) -> Admission | None:
        for policy, key in zip(quotas, keys, strict=True):
            strategy = self._strategies[policy.strategy]
            if not await strategy.hit(policy.item, key, cost=policy.cost):
                return await self._quota_refusal(policy, key)
            stats = await strategy.get_window_stats(policy.item, key)
            reset = max(0, math.ceil(stats.reset_time - time.time()))
            states.append(PolicyState(policy.name, policy.quota, policy.window, max(0, stats.remaining), reset))
        return None

    async def _quota_refusal(self, policy: QuotaPolicy, key: str) -> Admission:
        stats = await self._strategies[policy.strategy].get_window_stats(policy.item, key)
        retry = max(0.001, stats.reset_time - time.time())
        state = PolicyState(policy.name, policy.quota, policy.window, 0, math.ceil(retry))
        return Admission(False, (state,), policy.name, retry)

    def _label(self) -> str:
        return f"{self.namespace!r}" if self.namespace else "this server"

    def _recovered(self) -> None:
        self._down = False
        logger.warning("rate-limit store recovered for %s: limits are enforced again", self._label())

    def _degraded(self, exc: Exception) -> Admission:
        self.store_failures += 1
        self._errors.add(1, {"failure_mode": self.failure})
        if not self._down:  # once per outage: every request meets the dead store, the log must not
            self._down = True
            action = "admitting requests (fail-open)" if self.failure == "open" else "refusing requests (fail-closed)"
            logger.warning("rate-limit store unavailable for %s, %s: %s", self._label(), action, exc)
        if self.on_store_error is not None:
            self.on_store_error(exc)
        return Admission(self.failure == "open", degraded=True, retry_after=1.0)


def _quota_storage(storage: str | limits.aio.storage.Storage, timeout: float) -> limits.aio.storage.Storage:
    return quota_storage_from_url(storage, timeout=timeout) if isinstance(storage, str) else storage
