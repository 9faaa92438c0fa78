"""`/healthz` and `/readyz`: what a load balancer and an orchestrator ask the gateway.

`/healthz` says the process serves requests (no dependency is consulted: a Redis outage
must not get every gateway restarted). `/readyz` runs the named readiness checks
concurrently, each bounded by a timeout, and answers 200 only when none failed; the body
says which failed and why, so an operator reads it directly. A check may also answer
`DEGRADED`: something is down but requests are still served (a fail-open store), so the
gateway stays in rotation (200, `"status": "degraded"`) and the body names what is down.

>>> from starlette.applications import Starlette
>>> async def redis_ok() -> tuple[bool, str]:
...     return True, "PONG"
>>> app = OperationsMiddleware(Starlette(), checks={"redis": redis_ok})
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core.errors import send_json

__all__ = ["DEGRADED", "OperationsMiddleware", "ReadinessCheck"]

DEGRADED: Final = "degraded"
"""What a check answers instead of True/False when it found trouble that does not stop serving."""

ReadinessCheck = Callable[[], Awaitable[tuple[bool | Literal["degraded"], str]]]
"""An async check: `(ok, detail)`, ok being True, False or `DEGRADED`. It may raise; that counts as
not ready, with the error as detail."""


class OperationsMiddleware:
    """Answers `health_path` and `ready_path` itself; everything else goes to `app`.

    `checks` are run for `/readyz` (concurrently, each within `timeout` seconds). While
    the gateway shuts down, `draining()` makes `/readyz` answer 503 at once, so a load
    balancer stops sending new requests while in-flight ones finish.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        checks: Mapping[str, ReadinessCheck] | None = None,
        health_path: str = "/healthz",
        ready_path: str = "/readyz",
        timeout: float = 2.0,
    ) -> None:
        self.app = app
        self.checks = dict(checks or {})
        self.health_path = health_path
        self.ready_path = ready_path
        self.timeout = timeout
        self._draining = False
        self._started = time.monotonic()

    def draining(self) -> None:
        """From now on `/readyz` answers 503 (`draining`)."""
        self._draining = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.mcp_direct(scope, receive, send)

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What awaiting the middleware does, as an awaitable: for every other path, the inner app's own
        (the gateway calls this, so that no frame of this layer stays in an MCP request's await chain)."""
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            if scope["path"] == self.health_path:
                return send_json(send, 200, {"status": "ok", "uptime": round(time.monotonic() - self._started, 3)})
            if scope["path"] == self.ready_path:
                return self._ready(send)
        return self.app(scope, receive, send)

    async def readiness(self) -> tuple[bool, dict[str, dict[str, object]]]:
        """Run every check; `(none failed, {name: {"ok": …, "detail": …, "ms": …}})`.

        A degraded check has `"ok": True` and `"degraded": True`: it does not fail readiness.
        """
        results: dict[str, dict[str, object]] = {}

        async def run(name: str, check: ReadinessCheck) -> None:
            started = time.perf_counter()
            ok: bool | Literal["degraded"]
            try:
                with anyio.fail_after(self.timeout):
                    ok, detail = await check()
            except TimeoutError:
                ok, detail = False, f"no answer within {self.timeout:g} s"
            except Exception as exc:  # a failing check is a finding, not a crash of the endpoint
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            entry: dict[str, object] = {"ok": ok is not False, "detail": detail}
            if ok == DEGRADED:
                entry["degraded"] = True
            entry["ms"] = round((time.perf_counter() - started) * 1000, 1)
            results[name] = entry

        async with anyio.create_task_group() as group:
            for name, check in self.checks.items():
                group.start_soon(run, name, check)
        return all(r["ok"] for r in results.values()), dict(sorted(results.items()))

    async def _ready(self, send: Send) -> None:
        if self._draining:
            await send_json(send, 503, {"status": "draining", "checks": {}})
            return
        ok, results = await self.readiness()
        status = "not ready" if not ok else DEGRADED if any("degraded" in r for r in results.values()) else "ready"
        await send_json(send, 200 if ok else 503, {"status": status, "checks": results})
