"""The app each of several uvicorn processes serves in the shared-limit test (a uvicorn factory).

RATELIMIT_TEST_REDIS=redis://127.0.0.1:6379/0 uvicorn --factory tests.ratelimit.shared_app:build
"""

from __future__ import annotations

import os

from starlette.types import ASGIApp

from mcp_middleware.ratelimit import BucketPolicy, RateLimitMiddleware, RedisBucketStore
from tests.servers import build_server

CAPACITY = 30
RATE = 0.5


def build() -> ASGIApp:
    # A generous timeout and fail-closed: on a loaded test machine a slow Redis reply must show up as a
    # 503 (which the test rejects), never as a silent fail-open admission that would blur the count.
    store = RedisBucketStore.from_url(os.environ["RATELIMIT_TEST_REDIS"], timeout=5.0)
    policy = BucketPolicy("shared", selector="tools/call", rate=RATE, capacity=CAPACITY)
    return RateLimitMiddleware(build_server().streamable_http_app(), policies=[policy], store=store, failure="closed")
