"""/healthz and /readyz: alive without consulting dependencies; ready only when every check passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.types import ASGIApp

from mcp_middleware.gateway.operations import DEGRADED, OperationsMiddleware
from tests.conftest import Served


async def passing() -> tuple[bool, str]:
    return True, "PONG"


async def failing() -> tuple[bool, str]:
    return False, "breaker open for 'search' (12 s left)"


async def raising() -> tuple[bool, str]:
    raise ConnectionRefusedError("connection refused")


async def hanging() -> tuple[bool, str]:
    await anyio.sleep(30)
    return True, "late"


def test_health_is_independent_of_checks(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(OperationsMiddleware(Starlette(), checks={"redis": raising}))
    response = httpx2.get(f"{served.base}/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.headers["cache-control"] == "no-store"


def test_ready_when_every_check_passes(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(OperationsMiddleware(Starlette(), checks={"redis": passing, "backends": passing}))
    response = httpx2.get(f"{served.base}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["checks"]["redis"]["detail"] == "PONG"


def test_not_ready_names_each_failure(serve: Callable[[ASGIApp], Served]) -> None:
    checks = {"redis": raising, "breakers": failing, "slow": hanging, "ok": passing}
    served = serve(OperationsMiddleware(Starlette(), checks=checks, timeout=0.3))
    response = httpx2.get(f"{served.base}/readyz", timeout=10)
    assert response.status_code == 503
    found = response.json()["checks"]
    assert found["redis"] == {
        "ok": False,
        "detail": "ConnectionRefusedError: connection refused",
        "ms": found["redis"]["ms"],
    }
    assert found["breakers"]["detail"] == "breaker open for 'search' (12 s left)"
    assert found["slow"]["detail"] == "no answer within 0.3 s" and found["slow"]["ms"] < 5000
    assert found["ok"]["ok"] is True


def test_draining_is_not_ready(serve: Callable[[ASGIApp], Served]) -> None:
    operations = OperationsMiddleware(Starlette(), checks={"ok": passing})
    served = serve(operations)
    operations.draining()
    response = httpx2.get(f"{served.base}/readyz")
    assert response.status_code == 503 and response.json()["status"] == "draining"


def test_other_paths_reach_the_app(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(OperationsMiddleware(Starlette()))
    assert httpx2.get(f"{served.base}/elsewhere").status_code == 404
    assert httpx2.post(f"{served.base}/healthz").status_code == 404  # only GET/HEAD are answered here


async def degraded() -> tuple[bool | Literal["degraded"], str]:
    return DEGRADED, "ratelimit redis://127.0.0.1:6379/0: down (ConnectionError), requests admitted (fail-open)"


def test_a_degraded_check_keeps_the_gateway_ready_and_says_so(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(OperationsMiddleware(Starlette(), checks={"stores": degraded, "backends": passing}))
    response = httpx2.get(f"{served.base}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["stores"]["ok"] is True and body["checks"]["stores"]["degraded"] is True
    assert "degraded" not in body["checks"]["backends"]
    failing_too = serve(OperationsMiddleware(Starlette(), checks={"stores": degraded, "breakers": failing}))
    response = httpx2.get(f"{failing_too.base}/readyz")
    assert response.status_code == 503 and response.json()["status"] == "not ready"  # a failure outranks it
