"""Policies: which requests a limit applies to, how much, and per what key.

A :class:`BucketPolicy` is a token bucket (burst `capacity`, refill `rate`); a
:class:`QuotaPolicy` is a window quota (`"1000/day"`) counted by the `limits` library
(fixed window, moving window or sliding-window counter) in any of its storages. Each
attaches to one or more selectors (`tools/call:search_*`, `*`); a request must pass
every policy whose selector matches it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import limits

from mcp_middleware.core import McpRequest, Selector

from .bucket import TokenBucket
from .keys import KeyFunction

__all__ = ["BucketPolicy", "Policy", "QuotaPolicy", "QuotaStrategy"]

QuotaStrategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]

_NAME = re.compile(r"[A-Za-z0-9_.:/+-]{1,64}")
"""Policy names go into `RateLimit-Policy` as structured-field strings and into storage keys."""


def _selectors(selector: str | Sequence[str]) -> tuple[Selector, ...]:
    texts = (selector,) if isinstance(selector, str) else tuple(selector)
    if not texts:
        raise ValueError("a policy needs at least one selector")
    return tuple(Selector.parse(text) for text in texts)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"policy name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . : / + -")


@dataclass(frozen=True)
class BucketPolicy:
    """A token bucket per key for the requests `selector` matches.

    `rate` is tokens per second, or a `limits` rate string (`"5/second"`, `"100/minute"`);
    `capacity` is the burst (default: the rate string's amount, or one second's worth).
    `cost` is what one request takes. `key` overrides the limiter's key function
    (:func:`~mcp_middleware.ratelimit.keys.global_key` for one bucket per server);
    `per_target=True` gives each tool/prompt/resource its own bucket.

    >>> policy = BucketPolicy("search", selector="tools/call:search_*", rate=5, capacity=10)
    >>> policy.bucket, policy.quota, policy.window
    (TokenBucket(capacity=10.0, rate=5.0), 10, 2)
    """

    name: str
    selector: str | Sequence[str] = "*"
    rate: float | str = 1.0
    capacity: float | None = None
    cost: float = 1.0
    key: KeyFunction | None = None
    per_target: bool = False
    bucket: TokenBucket = field(init=False)
    selectors: tuple[Selector, ...] = field(init=False, repr=False)
    quota: int = field(init=False, repr=False)
    """`q` of `RateLimit-Policy`: the burst."""
    window: int = field(init=False, repr=False)
    """`w` of `RateLimit-Policy`: seconds an empty bucket takes to fill."""
    everything: bool = field(init=False, repr=False)
    """Whether the policy applies to every request (a `*` selector)."""

    def __post_init__(self) -> None:
        _check_name(self.name)
        if isinstance(self.rate, str):
            bucket = TokenBucket.parse(self.rate, burst=self.capacity)
        else:
            rate = float(self.rate)
            bucket = TokenBucket(capacity=self.capacity if self.capacity is not None else max(1.0, rate), rate=rate)
        if not (math.isfinite(self.cost) and 0 < self.cost <= bucket.capacity):
            raise ValueError(f"cost must be positive and at most the capacity ({bucket.capacity:g})")
        object.__setattr__(self, "bucket", bucket)
        object.__setattr__(self, "selectors", _selectors(self.selector))
        object.__setattr__(self, "quota", int(bucket.capacity))
        object.__setattr__(self, "window", max(1, math.ceil(bucket.window)))
        object.__setattr__(self, "everything", any(s.method is None for s in self.selectors))

    def matches(self, request: McpRequest) -> bool:
        return self.matches_parts(request.method, request.target)

    def matches_parts(self, method: str | None, target: str | None) -> bool:
        return any(selector.matches_parts(method, target) for selector in self.selectors)


@dataclass(frozen=True)
class QuotaPolicy:
    """A window quota per key, counted by `limits` (e.g. `"1000/day"`, `"100/hour"`).

    `strategy` is `"fixed-window"` (cheapest; allows up to twice the limit across a window
    boundary), `"moving-window"` (exact; one stored entry per hit) or
    `"sliding-window-counter"` (two counters, approximate). Counts live in the limiter's
    `quota_storage` (any `limits` storage URI: `memory://`, `redis://host:6379/0`, …).

    >>> QuotaPolicy("daily", selector="tools/call", limit="1000/day").window
    86400
    """

    name: str
    selector: str | Sequence[str] = "*"
    limit: str = "1000/day"
    strategy: QuotaStrategy = "fixed-window"
    cost: int = 1
    key: KeyFunction | None = None
    per_target: bool = False
    item: limits.RateLimitItem = field(init=False, repr=False)
    selectors: tuple[Selector, ...] = field(init=False, repr=False)
    quota: int = field(init=False, repr=False)
    """`q` of `RateLimit-Policy`: the limit."""
    window: int = field(init=False, repr=False)
    """`w` of `RateLimit-Policy`: the window in seconds."""
    everything: bool = field(init=False, repr=False)
    """Whether the policy applies to every request (a `*` selector)."""

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.strategy not in ("fixed-window", "moving-window", "sliding-window-counter"):
            raise ValueError(f"unknown quota strategy {self.strategy!r}")
        item = limits.parse(self.limit)
        if not 0 < self.cost <= item.amount:
            raise ValueError(f"cost must be positive and at most the limit ({item.amount})")
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "selectors", _selectors(self.selector))
        object.__setattr__(self, "quota", int(item.amount))
        object.__setattr__(self, "window", int(item.get_expiry()))
        object.__setattr__(self, "everything", any(s.method is None for s in self.selectors))

    def matches(self, request: McpRequest) -> bool:
        return self.matches_parts(request.method, request.target)

    def matches_parts(self, method: str | None, target: str | None) -> bool:
        return any(selector.matches_parts(method, target) for selector in self.selectors)


Policy = BucketPolicy | QuotaPolicy
