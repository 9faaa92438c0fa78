"""What the operator says may be cached: a TTL and a scope per selector."""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["OPT_IN_METHODS", "CachePolicy", "RuleValue", "ScopeName", "as_policy"]

ScopeName = Literal["public", "private"]

OPT_IN_METHODS = frozenset({"tools/call", "prompts/get"})
"""Cached only where the operator opts in with a `tools/call…` or `prompts/get…` selector."""


class CachePolicy(NamedTuple):
    """How long a selected result may be reused, and (optionally) by whom.

    `ttl` is in seconds; an upstream `ttlMs` can only shorten it. `scope` forces `"private"`
    (partitioned by principal) or allows `"public"` for results whose backend says nothing
    (legacy results, `tools/call`, `prompts/get`); an upstream `cacheScope: private` always wins.

    >>> CachePolicy(30.0, "public").ttl
    30.0
    """

    ttl: float
    scope: ScopeName | None = None


RuleValue = CachePolicy | float | None
"""A rule's value: a policy, a TTL in seconds, or None (not cached)."""


def as_policy(value: RuleValue) -> CachePolicy | None:
    """The policy a rule's value stands for; None (not cached) for None or a TTL that is not positive."""
    if value is None:
        return None
    policy = value if isinstance(value, CachePolicy) else CachePolicy(float(value))
    return policy if policy.ttl > 0 else None
