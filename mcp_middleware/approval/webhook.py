"""An approver other than the caller: a webhook that is POSTed the call and answers yes or no.

The POST body is JSON: the call's `digest`, `backend`, `method`, `tool`, a credential-free `summary`
of the arguments and the `principal` (subject, client id, issuer; never a token). Signed when a
`signing_secret` is set: `X-MCP-Approval-Signature: sha256=<hex HMAC of the body>`, so the receiver
knows the gateway sent it. The answer decides synchronously: HTTP 200 with `{"approved": true}`
runs the call; anything else — `{"approved": false, "reason": "…"}`, another status, a body that is
not that JSON, no answer within `timeout` — refuses it. The answer is read with a bound (64 KiB).

With `callback=True` the body also carries `callback` (a URL the gateway serves, holding a one-time
sealed token: see `callback.py`) and `expires` (Unix seconds); the webhook may then answer **202**
(accepted: someone will POST the decision to `callback` before `expires`) instead of deciding now.
The call waits for that callback, or `timeout`, whichever comes first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import orjson
from starlette.types import ASGIApp, Scope

from .callback import CALLBACK_PATH, CallbackTokens, clip_reason, origin_of, signature_of
from .store import ApprovalStore, MemoryApprovalStore

__all__ = ["WebhookApprover", "WebhookVerdict"]

logger = logging.getLogger("mcp_middleware.approval")

_MAX_ANSWER = 64 * 1024


@dataclass(frozen=True, slots=True)
class WebhookVerdict:
    approved: bool
    reason: str
    """`approved`, `declined`, `timeout`, `webhook_error`, or `pending` (202: the callback will decide)."""
    detail: str = ""
    """The webhook's own reason, clipped (shown to the caller on a refusal)."""


class WebhookApprover:
    """POST each held call to `url`; its answer within `timeout` seconds decides.

    - `signing_secret`: sign the POST (and require signed callbacks) with HMAC-SHA256;
    - `callback`: also send a `callback` URL the webhook may answer at later (it answers 202 now);
      `timeout` is then how long the call waits for it (minutes, for a person in a ticketing tool);
    - `public_url`: the origin the callback URL starts with (`https://gateway.example`); default: the
      request's own `scheme://Host` — only safe behind a Host allow-list (the gateway's front door);
    - `secrets`: seal the callback tokens (every instance needs the same ones; default: a random one);
    - `store`: where callback answers meet the waiting call (:class:`RedisApprovalStore` across instances).

    Serve the callback with :class:`ApprovalCallbackEndpoint` around the app (`approver.endpoint(app)`).

    >>> approver = WebhookApprover("https://approvals.example/hook", timeout=30, signing_secret="…")
    >>> later = WebhookApprover("https://tickets.example/hook", callback=True, timeout=900,
    ...                         public_url="https://gateway.example",
    ...                         secrets=["a callback secret of 32 characters or more"])
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        signing_secret: str | None = None,
        callback: bool = False,
        public_url: str | None = None,
        secrets: Iterable[str] = (),
        store: ApprovalStore | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"webhook url must be http(s), not {url!r}")
        if timeout <= 0:
            raise ValueError("webhook timeout must be positive")
        if public_url is not None and not public_url.startswith(("https://", "http://")):
            raise ValueError(f"public_url must be http(s), not {public_url!r}")
        self.url = url
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.signing_secret = signing_secret
        self._secret = signing_secret.encode() if signing_secret else None
        self._client: httpx2.AsyncClient | None = None
        self.callback = callback
        self.public_url = public_url.rstrip("/") if public_url else None
        self.tokens = CallbackTokens(list(secrets) or [os.urandom(32).hex()])
        self.store: ApprovalStore = store if store is not None else MemoryApprovalStore()

    def callback_url(self, scope: Scope, digest: str, nonce: str, *, ttl: float) -> str | None:
        """The URL this call's approver may answer at for `ttl` seconds (None: no trustworthy origin for it)."""
        origin = self.public_url
        if origin is None:  # the request's own origin, below where the host mounted the gateway (root_path)
            found = origin_of(scope)
            if found is None:
                return None
            origin = found + scope.get("root_path", "")
        return f"{origin}{CALLBACK_PATH}{self.tokens.seal(digest, nonce, ttl)}"

    def endpoint(self, app: ASGIApp) -> ASGIApp:
        """`app` with this approver's callback served beside it (outside MCP authentication)."""
        from .callback import ApprovalCallbackEndpoint

        return ApprovalCallbackEndpoint(app, tokens=self.tokens, store=self.store, signing_secret=self.signing_secret)

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:  # one pooled client per approver, made in the loop that uses it
            self._client = httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False, trust_env=False)
        return self._client

    async def decide(self, facts: Mapping[str, Any]) -> WebhookVerdict:
        body = orjson.dumps(facts)
        headers = {**self.headers, "content-type": "application/json", "accept": "application/json"}
        if self._secret is not None:
            headers["x-mcp-approval-signature"] = signature_of(self._secret, body)
        try:
            with anyio.fail_after(self.timeout):
                async with self._http().stream("POST", self.url, content=body, headers=headers) as response:
                    answer = b""
                    async for chunk in response.aiter_bytes():
                        answer += chunk
                        if len(answer) > _MAX_ANSWER:
                            return WebhookVerdict(False, "webhook_error", "the approver's answer is too large")
                    status = response.status_code
        except TimeoutError:
            return WebhookVerdict(False, "timeout")
        except httpx2.HTTPError as error:
            logger.warning("approval webhook %s failed: %s", self.url, type(error).__name__)
            return WebhookVerdict(False, "webhook_error", "the approver could not be reached")
        if status == 202 and self.callback and "callback" in facts:
            return WebhookVerdict(False, "pending")
        if status != 200:
            return WebhookVerdict(False, "webhook_error", f"the approver answered HTTP {status}")
        try:
            decided = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return WebhookVerdict(False, "webhook_error", "the approver's answer is not JSON")
        if not isinstance(decided, dict) or not isinstance(decided.get("approved"), bool):
            return WebhookVerdict(False, "webhook_error", 'the approver\'s answer has no boolean "approved"')
        detail = clip_reason(decided.get("reason"))
        return WebhookVerdict(decided["approved"], "approved" if decided["approved"] else "declined", detail)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
