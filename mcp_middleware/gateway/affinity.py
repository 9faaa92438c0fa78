"""Session affinity for legacy-era sessions across gateway instances.

A legacy (2025-11-25) session lives in the process that created it. The first request
of a session (`initialize`) carries no `Mcp-Session-Id`, so a load balancer hashing on
that header alone cannot know where the session will be created: the instance that
answers `initialize` and the instance the hash later picks differ. The fix is to make
the id say where it lives. Each gateway instance tags the session ids it hands out
(`Mcp-Session-Id: g1.3f9c…`) and strips the tag from requests, so backends see their own
ids; the load balancer routes on the tag (examples/gateway/nginx-affinity.conf maps it to the
instance) and spreads untagged requests (new sessions, the stateless modern era).

With `[gateway] session_key` the gateway needs none of this: session ids are sealed handles any
instance resumes (`sealed_sessions.py`), behind plain round robin. This layer is the option without a key.

A request tagged for another instance reached the wrong gateway: it is refused with a
JSON-RPC error (HTTP 404, as the SDK answers an unknown session) rather than handed to a
backend that would not know the session.

>>> from starlette.applications import Starlette
>>> app = SessionAffinityMiddleware(Starlette(), instance="g1")
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import Component, JsonRpcCode, Outcome, record_decision, send_error

__all__ = ["SessionAffinityMiddleware"]

_HEADER = b"mcp-session-id"
_INSTANCE = re.compile(r"^[A-Za-z0-9-]{1,63}$")


class SessionAffinityMiddleware:
    """Tag outgoing `Mcp-Session-Id` values with `instance` and untag incoming ones."""

    def __init__(self, app: ASGIApp, *, instance: str) -> None:
        if not _INSTANCE.match(instance):
            raise ValueError(f"instance must match [A-Za-z0-9-]{{1,63}} (it is a DNS label), not {instance!r}")
        self.app = app
        self.instance = instance
        self._tag = f"{instance}.".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for index, (name, value) in enumerate(headers):
            if name == _HEADER:
                if not value.startswith(self._tag):
                    other = value.split(b".", 1)[0].decode("latin-1") if b"." in value else None
                    record_decision(scope, Component.AFFINITY, Outcome.MISROUTED, instance=self.instance)
                    message = (
                        f"Session belongs to gateway instance {other!r}, not {self.instance!r}"
                        if other
                        else "Session not found"
                    )
                    await send_error(send, status=404, code=JsonRpcCode.INVALID_REQUEST, message=message)
                    return
                headers = [*headers[:index], (name, value[len(self._tag) :]), *headers[index + 1 :]]
                scope = {**scope, "headers": headers}
                break
        await self.app(scope, receive, self._tagging(send))

    def _tagging(self, send: Send) -> Send:
        tag = self._tag

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if any(name.lower() == _HEADER for name, _ in headers):
                    tagged = [(n, tag + v if n.lower() == _HEADER else v) for n, v in headers]
                    message = {**message, "headers": tagged}
            await send(message)

        return tagging_send
