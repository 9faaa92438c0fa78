"""How `AuthMiddleware` says no: the JSON-RPC error with the request id, its status and its challenge.

401 (no or a bad token), 403 (insufficient scope; the challenge names the door's metadata, the
endpoint the client called), 400 (a malformed request for credentials) and 503 (the verifier is
unavailable: `Retry-After`). Each is recorded as an `auth` decision before it is sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from starlette.types import Scope, Send

from mcp_middleware.core import (
    Component,
    ErrorCode,
    JsonRpcCode,
    McpRequest,
    Outcome,
    Principal,
    RequestId,
    record_decision,
    send_error,
)

__all__ = ["Refusals"]


class Refusals:
    """The refusal answers of :class:`~mcp_middleware.auth.middleware.AuthMiddleware` (a mixin: it needs
    `metadata_url` and `required_for`)."""

    metadata_url: str | None

    def required_for(self, method: str | None, target: str | None) -> frozenset[str]:
        raise NotImplementedError

    def _challenge(self, error: str | None, description: str | None, scopes: Iterable[str]) -> str:
        parts: list[str] = []
        if error is not None:
            parts.append(f'error="{error}"')
            if description:
                parts.append(f'error_description="{_quotable(description)}"')
        if self.metadata_url is not None:
            parts.append(f'resource_metadata="{self.metadata_url}"')
        scope_text = " ".join(sorted(scopes))
        if scope_text:
            parts.append(f'scope="{scope_text}"')
        return "Bearer " + ", ".join(parts) if parts else "Bearer"

    async def _unauthorized(
        self, scope: Scope, send: Send, request: McpRequest, error: str | None, description: str
    ) -> None:
        record_decision(scope, Component.AUTH, Outcome.DENY, reason=error or "missing_token", status=401)
        needed = self.required_for(request.method, request.target)
        data: dict[str, str] = {"error": error} if error is not None else {}
        data["error_description"] = description
        await _refuse(
            send,
            401,
            ErrorCode.UNAUTHORIZED,
            description,
            request.id,
            data,
            self._challenge(error, description, needed),
        )

    async def _forbid(
        self,
        scope: Scope,
        send: Send,
        request: McpRequest,
        required: frozenset[str],
        principal: Principal,
        door: Refusals,
    ) -> None:
        missing = sorted(required - principal.scopes)
        record_decision(
            scope, Component.AUTH, Outcome.DENY, reason="insufficient_scope", status=403, missing=" ".join(missing)
        )
        description = "Insufficient scope: requires " + " ".join(sorted(required))
        data = {"error": "insufficient_scope", "requiredScopes": sorted(required), "missingScopes": missing}
        challenge = door._challenge("insufficient_scope", description, required)
        await _refuse(send, 403, ErrorCode.FORBIDDEN, description, request.id, data, challenge)

    async def _bad_request(self, scope: Scope, send: Send, request: McpRequest, description: str) -> None:
        record_decision(scope, Component.AUTH, Outcome.DENY, reason="invalid_request", status=400)
        challenge = self._challenge("invalid_request", description, ())
        data = {"error": "invalid_request", "error_description": description}
        await _refuse(send, 400, JsonRpcCode.INVALID_REQUEST, description, request.id, data, challenge)

    async def _unavailable(
        self, scope: Scope, send: Send, request: McpRequest, description: str, retry_after: float
    ) -> None:
        record_decision(scope, Component.AUTH, Outcome.DENY, reason="verifier_unavailable", status=503)
        seconds = max(1, math.ceil(retry_after))
        await send_error(
            send,
            status=503,
            code=ErrorCode.UNAVAILABLE,
            message=description,
            request_id=request.id,
            data={"retryAfterMs": seconds * 1000},
            headers={"Retry-After": str(seconds)},
        )


def _quotable(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


async def _refuse(
    send: Send,
    status: int,
    code: int,
    message: str,
    request_id: RequestId | None,
    data: Mapping[str, object],
    challenge: str,
) -> None:
    await send_error(
        send,
        status=status,
        code=code,
        message=message,
        request_id=request_id,
        data=dict(data),
        headers={"WWW-Authenticate": challenge},
    )
