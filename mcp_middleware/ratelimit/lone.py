"""The usual rate limit decided in one step: one bucket for every request, per caller, in memory.

Most deployments have one `BucketPolicy` matching everything, keyed by the default
:class:`~.keys.CallerKey`, on the default :class:`~.stores.MemoryBucketStore`. For them the
general path (a `BucketTake`, a list for the store, a `PolicyState` and an `Admission` for the
middleware, a storage key formatted per request) is work that always gives the same answer for
the same caller. :class:`LoneLimit` remembers each caller's storage key, keyed by what
`CallerKey` reads (the principal's client id, subject and issuer; for an anonymous caller, the
peer address) and asks the store about that one bucket. The decision is the store's own
(:meth:`~.stores.MemoryBucketStore.decide_one`), so the counts are the same either way.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.types import Scope

from mcp_middleware.core import McpRequest, Principal
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY

from .bucket import BucketDecision
from .keys import CallerKey
from .limiter import RateLimiter
from .policies import BucketPolicy
from .stores import MemoryBucketStore

__all__ = ["LoneLimit"]

_REMEMBERED = 4096
"""Callers whose storage key is kept (the table is cleared when full: a flood only costs recomputing)."""
_REMEMBERED_LENGTH = 512
"""Longer addresses or identities are keyed each time, never kept."""


class LoneLimit:
    """A limiter's lone bucket policy, decided per caller in one call (see the module docstring).

    Built by :meth:`of` only when it gives the same answers as the limiter: one bucket policy for
    every request (no quota), without its own key function or a bucket per target, the limiter's
    key an exact `CallerKey`, the store an exact `MemoryBucketStore` (a subclass may observe or
    fault its decisions). :meth:`take` answers `None` where the general path must decide (a
    principal of another type, an anonymous caller behind trusted proxies, no peer address).
    """

    __slots__ = ("_by_address", "_decide", "_keys", "_limiter", "_store", "bucket", "cost", "name", "policy")

    def __init__(self, limiter: RateLimiter, policy: BucketPolicy, store: MemoryBucketStore, by_address: bool) -> None:
        self._limiter = limiter
        self.policy = policy
        self.name = policy.name
        self.bucket = policy.bucket
        self.cost = policy.cost
        self._store = store
        self._decide = partial(store.decide_one, bucket=self.bucket, cost=self.cost)
        """The store's decision on this policy's bucket, given the storage key (bound once: fewer arguments)."""
        self._by_address = by_address
        self._keys: dict[Any, str] = {}

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
                return self._decide(key)
            if principal.authenticated:
                size = sum(len(field) for field in caller if field is not None)
                return self._decide(self._key(scope, request, caller, size))
        if not self._by_address:
            return None
        client = scope.get("client")
        if not client or type(client[0]) is not str:
            return None
        caller = client[0]  # a str; principals are remembered by tuples: the two never meet
        key = self._keys.get(caller)
        if key is None:
            key = self._key(scope, request, caller, len(caller))
        return self._decide(key)

    def _key(self, scope: Scope, request: McpRequest, caller: Any, size: int) -> str:
        """The limiter's storage key for this caller, remembered unless the caller is spelt long."""
        key = self._limiter.storage_key(self.policy, scope, request)
        if size <= _REMEMBERED_LENGTH:
            keys = self._keys
            if len(keys) >= _REMEMBERED:
                keys.clear()
            keys[caller] = key
        return key
