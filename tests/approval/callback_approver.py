"""A loopback approver that answers 202 and decides later, by POSTing to the callback URL it was sent.

`mode`: `approve` / `decline` (call back at once), `never` (202, then silence), `late` (call back
after `delay` seconds), `sync` (decide in the 200 answer itself, no callback). `redirect` rewrites the
callback's origin (a load balancer sending it to another instance). Every callback's HTTP status is
kept in `statuses`, so a test sees what the gateway told the approver.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["CallbackApprover", "sign"]


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class CallbackApprover:
    mode: str = "approve"
    delay: float = 0.0
    signing_secret: str | None = None
    redirect: str | None = None
    """`http://127.0.0.1:PORT`: call back there instead of the origin the gateway gave."""
    seen: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        facts = orjson.loads(await request.body())
        self.seen.append(facts)
        if self.mode == "sync":
            return JSONResponse({"approved": True})
        if self.mode == "never":
            return Response(status_code=202)
        approved = self.mode in ("approve", "late")
        return Response(status_code=202, background=BackgroundTask(self.answer, facts["callback"], approved))

    def target(self, url: str) -> str:
        if self.redirect is None:
            return url
        parts, moved = urlsplit(url), urlsplit(self.redirect)
        return urlunsplit((moved.scheme, moved.netloc, parts.path, parts.query, ""))

    async def answer(self, url: str, approved: bool, reason: str = "ticket OPS-42") -> int:
        if self.delay:
            await anyio.sleep(self.delay)
        body = orjson.dumps({"approved": approved, "reason": reason if not approved else "ok"})
        headers = {"content-type": "application/json"}
        if self.signing_secret is not None:
            headers["x-mcp-approval-signature"] = sign(self.signing_secret, body)
        async with httpx2.AsyncClient(timeout=30, trust_env=False) as http:
            response = await http.post(self.target(url), content=body, headers=headers)
        self.statuses.append(response.status_code)
        return response.status_code
