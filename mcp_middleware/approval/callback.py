"""The webhook approver's callback: a URL the gateway serves, where an approver answers minutes later.

A held call gets a one-time **capability token**: `Sealer(purpose="mcp-approval-callback")` over the
call's digest and a fresh nonce, expiring with the approver's `timeout`. The webhook is POSTed
`callback = <origin>/approval/callback/<token>`; whoever holds that URL may answer once:

    POST /approval/callback/<token>
    {"approved": true, "reason": "ticket OPS-42"}

signed like the gateway's own POST (`X-MCP-Approval-Signature: sha256=<hex HMAC of the body>`)
when the approver has a `signing_secret` (then an unsigned or badly signed answer is refused, 401).
Answers: 200 accepted; 404 a token that does not open, is expired, spent, or names no waiting call
(the approver is not told which); 409 the call stopped waiting already (timed out: refused); 400 a
body that is not that JSON; 413 a body over 64 KiB; 405 another method; 503 the store is down.
Nothing under the path reaches the app behind, whatever follows the prefix (`../mcp`, `%2e%2e`).

The endpoint sits outside MCP authentication (an approver has no MCP token): the token is the
capability. See docs/approval.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core.errors import send_json
from mcp_middleware.core.kernel import relative_path
from mcp_middleware.core.sealing import Sealer, SealError

from .store import ApprovalStore, ApprovalStoreUnavailable, CallbackAnswer, Delivery

__all__ = ["CALLBACK_PATH", "MAX_CALLBACK_BODY", "ApprovalCallbackEndpoint", "CallbackTokens", "signature_of"]

logger = logging.getLogger("mcp_middleware.approval")

CALLBACK_PATH = "/approval/callback/"
"""Where the callback is served (the token follows)."""
MAX_CALLBACK_BODY = 64 * 1024
_MAX_REASON = 200
_PURPOSE = "mcp-approval-callback"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def signature_of(secret: bytes, body: bytes) -> str:
    """`X-MCP-Approval-Signature` of `body`: the same scheme both ways."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def clip_reason(reason: Any) -> str:
    """An approver's reason as the caller may read it: printable, bounded."""
    if not isinstance(reason, str):
        return ""
    return "".join(c if c.isprintable() else " " for c in reason)[:_MAX_REASON]


class CallbackTokens:
    """Seal and open the callback's capability token (its own purpose: no other sealed token opens as one)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.sealer = Sealer(list(secrets), purpose=_PURPOSE)

    def seal(self, digest: str, nonce: str, ttl: float) -> str:
        return self.sealer.seal(orjson.dumps({"d": digest, "n": nonce}), ttl=ttl)

    def open(self, token: str) -> tuple[str, str] | None:
        """(digest, nonce), or None for a token that does not open (tampered, expired, another key)."""
        try:
            payload = orjson.loads(self.sealer.open(token))
        except (SealError, orjson.JSONDecodeError):
            return None
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("n"), str)
            or not isinstance(payload.get("d"), str)
        ):
            return None
        return payload["d"], payload["n"]


def origin_of(scope: Scope) -> str | None:
    """`scheme://host` of this request, from a `Host` of host[:port] only (checked before by the front door)."""
    host = next((value for key, value in scope.get("headers", ()) if key == b"host"), None)
    if host is None:
        return None
    text = host.decode("latin-1")
    if not _HOST.fullmatch(text):
        return None
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{text}"


class ApprovalCallbackEndpoint:
    """Serve the callback of `tokens`/`store` at :data:`CALLBACK_PATH`; every other path goes to `app`.

    >>> from mcp_middleware.approval import WebhookApprover
    >>> hook = WebhookApprover("https://approvals.example/hook", callback=True, timeout=600)
    >>> app = ApprovalCallbackEndpoint(app, tokens=hook.tokens, store=hook.store)  # doctest: +SKIP
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: CallbackTokens,
        store: ApprovalStore,
        signing_secret: str | None = None,
        path: str = CALLBACK_PATH,
    ) -> None:
        if not path.startswith("/") or not path.endswith("/"):
            raise ValueError("the callback path must start and end with '/'")
        self.app = app
        self.tokens = tokens
        self.store = store
        self._secret = signing_secret.encode() if signing_secret else None
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = relative_path(scope) if scope["type"] == "http" else ""
        if not path.startswith(self.path):
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await send_json(send, 405, {"error": "method not allowed: POST the answer"}, headers=((b"allow", b"POST"),))
            return
        body = await _bounded_body(scope, receive)
        if body is None:
            await send_json(send, 413, {"error": f"the answer exceeds {MAX_CALLBACK_BODY} bytes"})
            return
        if self._secret is not None:
            given = next((v for k, v in scope["headers"] if k == b"x-mcp-approval-signature"), b"")
            if not hmac.compare_digest(given, signature_of(self._secret, body).encode()):
                await send_json(send, 401, {"error": "missing or bad X-MCP-Approval-Signature"})
                return
        opened = self.tokens.open(path[len(self.path) :])
        if opened is None:
            await send_json(send, 404, {"error": "no approval is waiting at this URL"})
            return
        answer = _parse(body)
        if answer is None:
            await send_json(send, 400, {"error": 'the body must be JSON: {"approved": true|false, "reason": "..."}'})
            return
        try:
            delivery = await self.store.deliver(opened[1], answer)
        except ApprovalStoreUnavailable:
            await send_json(
                send,
                503,
                {"error": "the approval store is unavailable: retry later"},
                headers=((b"retry-after", b"5"),),
            )
            return
        if delivery is Delivery.ACCEPTED:
            await send_json(send, 200, {"status": "accepted", "approved": answer.approved})
        elif delivery is Delivery.DECIDED:
            await send_json(send, 409, {"error": "the call stopped waiting (timed out or cancelled): it was not run"})
        else:
            await send_json(send, 404, {"error": "no approval is waiting at this URL"})


def _parse(body: bytes) -> CallbackAnswer | None:
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(found, dict) or not isinstance(found.get("approved"), bool):
        return None
    reason = found.get("reason")
    if reason is not None and not isinstance(reason, str):
        return None
    return CallbackAnswer(found["approved"], clip_reason(reason))


async def _bounded_body(scope: Scope, receive: Receive) -> bytes | None:
    """The request body, or None past :data:`MAX_CALLBACK_BODY` (a declared larger one is not read)."""
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if declared is not None and declared.isdigit() and (len(declared) > 12 or int(declared) > MAX_CALLBACK_BODY):
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_CALLBACK_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
