"""Rate limiting for MCP: token buckets and window quotas per caller, tool and server.

Policies attach to selectors; buckets live in memory (bounded) or in Redis (one atomic Lua
script per decision, on the server's clock); window quotas use the `limits` library and
its storages. Refusals are HTTP 429 with `Retry-After`, the IETF `RateLimit` fields and a
JSON-RPC error an agent can read. See docs/ratelimit.md.
"""

from .bucket import BucketDecision, BucketState, TokenBucket
from .keys import CallerKey, KeyFunction, global_key, principal_identity
from .limiter import Admission, FailureMode, PolicyState, RateLimiter
from .middleware import RateLimitMiddleware, ratelimit_headers
from .policies import BucketPolicy, Policy, QuotaPolicy, QuotaStrategy
from .quota_storage import aclose_quota_storage, quota_storage_from_url
from .redis_store import RedisBucketStore, bucket_store_from_url
from .stores import BucketStore, BucketTake, MemoryBucketStore, StoreUnavailable, SyncBucketStore

__all__ = [
    "BucketDecision",
    "BucketPolicy",
    "BucketState",
    "BucketStore",
    "BucketTake",
    "CallerKey",
    "FailureMode",
    "KeyFunction",
    "MemoryBucketStore",
    "Policy",
    "PolicyState",
    "QuotaPolicy",
    "QuotaStrategy",
    "RateLimitMiddleware",
    "RateLimiter",
    "RedisBucketStore",
    "StoreUnavailable",
    "SyncBucketStore",
    "TokenBucket",
    "Admission",
    "aclose_quota_storage",
    "bucket_store_from_url",
    "global_key",
    "principal_identity",
    "quota_storage_from_url",
    "ratelimit_headers",
]
