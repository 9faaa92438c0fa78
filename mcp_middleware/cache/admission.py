"""What may be stored: the refusals (errors, partial answers, MRTR) and the entry a storable result becomes.

The TTL is the rule's, shortened by the backend's `ttlMs` while `honor_ttl_ms` is on. The SDK's
`MCPServer` (and fastmcp) answer `ttlMs: 0` unless built with cache hints, which leaves such a
cache caching nothing: the first time a mount's backend does so, a WARNING says what to set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from mcp_types.methods import CACHEABLE_METHODS

from ..core.request import Era, McpRequest
from ..core.tap import ResponseOutcome
from .policy import CachePolicy, ScopeName
from .store import CacheEntry

__all__ = ["Admission"]

logger = logging.getLogger("mcp_middleware.cache")

_MAX_WARNED_MOUNTS = 1024


class Admission:
    """Turns a backend's answer into a cache entry, or says why it is not kept.

    >>> admission = Admission(honor_ttl_ms=True, legacy_scope="private", stale_grace=0.0, clock=lambda: 100.0)
    >>> admission.refusal(ResponseOutcome(200, "application/json", 9, 0.1, True, {"isError": True}))
    'tool_error'
    """

    __slots__ = ("_clock", "_warned", "honor_ttl_ms", "legacy_scope", "stale_grace")

    def __init__(
        self, *, honor_ttl_ms: bool, legacy_scope: ScopeName, stale_grace: float, clock: Callable[[], float]
    ) -> None:
        self.honor_ttl_ms = honor_ttl_ms
        self.legacy_scope = legacy_scope
        self.stale_grace = stale_grace
        self._clock = clock
        self._warned: set[str] = set()
        """Mounts already warned about `ttlMs: 0` (once each, so the log says it once, not per request)."""

    @staticmethod
    def refusal(outcome: ResponseOutcome) -> str | None:
        """Why the response may not be stored (a decision's `reason`), or None if it may."""
        if outcome.error is not None:
            return "error"
        if outcome.status != 200 or not outcome.complete:
            return "incomplete" if outcome.status == 200 else "status"
        if outcome.truncated:
            return "too_large"
        result = outcome.result
        if result is None:
            return "no_result"
        if result.get("isError") is True:
            return "tool_error"
        if result.get("resultType") == "input_required":
            return "input_required"
        return None

    def entry(
        self, policy: CachePolicy, request: McpRequest, result: dict[str, Any], *, sse: bool, mount: str
    ) -> CacheEntry | None:
        """The entry to store for `result`, or None if its TTL comes to nothing."""
        ttl = policy.ttl
        upstream_ttl = result.get("ttlMs")
        ttl_field = isinstance(upstream_ttl, int | float) and not isinstance(upstream_ttl, bool)
        if self.honor_ttl_ms:
            if ttl_field:
                ttl = min(ttl, max(0.0, float(upstream_ttl) / 1000))  # type: ignore[arg-type]
            elif request.era is Era.MODERN and request.method in CACHEABLE_METHODS:
                ttl = 0.0  # the spec: a cacheable result without ttlMs is immediately stale
            if ttl <= 0 and request.method in CACHEABLE_METHODS:
                self._warn_uncacheable(mount, request.method, upstream_ttl if ttl_field else None)
        if ttl <= 0:
            return None
        upstream_scope = result.get("cacheScope")
        if upstream_scope in ("public", "private"):
            public = upstream_scope == "public" and policy.scope != "private"
        elif request.era is Era.LEGACY and request.method in CACHEABLE_METHODS:
            public = (policy.scope or self.legacy_scope) == "public"
        else:
            public = policy.scope == "public"
        stored = {key: value for key, value in result.items() if key != "ttlMs"} if ttl_field else result
        now = self._clock()
        return CacheEntry(orjson.dumps(stored), now + ttl, now + ttl + self.stale_grace, ttl_field, sse, public, now)

    def _warn_uncacheable(self, mount: str, method: str | None, upstream_ttl: Any) -> None:
        if mount in self._warned or len(self._warned) >= _MAX_WARNED_MOUNTS:
            return
        self._warned.add(mount)
        said = f"ttlMs: {upstream_ttl}" if upstream_ttl is not None else "no ttlMs"
        logger.warning(
            "cache: backend %r answers %s with %s, so such results are not cached while honor_ttl_ms is on "
            "(MCPServer and fastmcp send ttlMs: 0 on every result unless given cache hints; said once per "
            "backend). To cache them for the configured ttl, set honor_ttl_ms=False on ResponseCacheMiddleware, "
            "or honor_ttl_ms = false on the gateway's [[servers]] entry (or in [cache])",
            mount,
            method,
            said,
        )
