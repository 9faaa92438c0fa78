"""End-to-end stacks with the rate limiter on and never tripping (`--apps bare,ratelimit`)."""

from __future__ import annotations

from mcp_middleware.ratelimit import BucketPolicy, RateLimitMiddleware

from .apps import Stack

_NEVER = 1e9
"""Rate and capacity of a bucket that never runs dry."""

STACKS = {
    # One per-caller bucket on every request, in memory, RateLimit headers on each answer.
    "ratelimit": Stack(
        lambda app: RateLimitMiddleware(app, policies=[BucketPolicy("per-caller", rate=_NEVER, capacity=_NEVER)])
    ),
}
