"""A quota storage the caller built without `wrap_exceptions` raises redis-py's own errors: they are store
failures (fail open or closed), not crashes, although redis-py is imported only once a client exists."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from limits.storage import storage_from_string

from mcp_middleware.core import Era, McpRequest, RequestKind
from mcp_middleware.ratelimit import QuotaPolicy, RateLimiter
from tests.conftest import free_port, require

pytestmark = pytest.mark.anyio

require("redis", "the [redis] extra")


def _request() -> McpRequest:
    return McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1, params={"name": "x"})


def _scope() -> dict[str, Any]:
    return {"type": "http", "client": ("192.0.2.1", 1234), "headers": []}


@pytest.mark.parametrize(("failure", "allowed"), [("open", True), ("closed", False)])
async def test_a_raw_redis_error_is_a_store_failure(failure: str, allowed: bool) -> None:
    import redis.exceptions

    port = free_port()  # nothing listens there: every call raises redis-py's ConnectionError
    storage = storage_from_string(
        f"async+redis://127.0.0.1:{port}/0", implementation="redispy", socket_connect_timeout=1
    )
    failures: list[Exception] = []
    limiter = RateLimiter(
        [QuotaPolicy("q", limit="5/minute")],
        quota_storage=storage,
        failure=failure,  # type: ignore[arg-type]
        on_store_error=failures.append,
    )
    admission = await limiter.check(_scope(), _request())
    assert admission.allowed is allowed
    assert admission.degraded
    assert failures and isinstance(failures[0], redis.exceptions.RedisError)


def test_importing_the_gateway_does_not_load_redis() -> None:
    """redis-py costs ~0.1 s to import: a process with no Redis store (a serverless cold start) does not pay it."""
    probe = "import sys, mcp_middleware.gateway.app, mcp_middleware.ratelimit; print('redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
