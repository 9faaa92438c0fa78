"""An approver other than the caller: a webhook that is POSTed the call and answers yes or no.

The POST body is JSON: the call's `digest`, `backend`, `method`, `tool`, a credential-free `summary`
of the arguments and the `principal` (subject, client id, issuer; never a token). Signed when a
`signing_secret` is set: `X-MCP-Approval-Signature: sha256=<hex HMAC of the body>`, so the receiver
knows the gateway sent it. The answer decides synchronously: HTTP 200 with `{"approved": true}`
runs the call; anything else — `{"approved": false, "reason": "…"}`, another status, a body that is
not that JSON, no answer within `timeout` — refuses it. The answer is read with a bound (64 KiB).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import orjson

__all__ = ["WebhookApprover", "WebhookVerdict"]

logger = logging.getLogger("mcp_middleware.approval")

_MAX_ANSWER = 64 * 1024
_MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class WebhookVerdict:
    approved: bool
    reason: str
    """`approved`, `declined`, `timeout` or `webhook_error`."""
    detail: str = ""
    """The webhook's own reason, clipped (shown to the caller on a refusal)."""


class WebhookApprover:
    """POST each held call to `url`; its answer within `timeout` seconds decides.

    >>> approver = WebhookApprover("https://approvals.example/hook", timeout=30, signing_secret="…")
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        signing_secret: str | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"webhook url must be http(s), not {url!r}")
        if timeout <= 0:
            raise ValueError("webhook timeout must be positive")
        self.url = url
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._secret = signing_secret.encode() if signing_secret else None
        self._client: httpx2.AsyncClient | None = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:  # one pooled client per approver, made in the loop that uses it
            self._client = httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False, trust_env=False)
        return self._client

    async def decide(self, facts: Mapping[str, Any]) -> WebhookVerdict:
        body = orjson.dumps(facts)
        headers = {**self.headers, "content-type": "application/json", "accept": "application/json"}
        if self._secret is not None:
            headers["x-mcp-approval-signature"] = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
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
        if status != 200:
            return WebhookVerdict(False, "webhook_error", f"the approver answered HTTP {status}")
        try:
            decided = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return WebhookVerdict(False, "webhook_error", "the approver's answer is not JSON")
        if not isinstance(decided, dict) or not isinstance(decided.get("approved"), bool):
            return WebhookVerdict(False, "webhook_error", 'the approver\'s answer has no boolean "approved"')
        reason = decided.get("reason")
        detail = "".join(c if c.isprintable() else " " for c in reason)[:_MAX_REASON] if isinstance(reason, str) else ""
        return WebhookVerdict(decided["approved"], "approved" if decided["approved"] else "declined", detail)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
