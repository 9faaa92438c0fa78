"""Fixed tokens for development and tests: never for production."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from mcp.server.auth.provider import AccessToken

from .verification import TokenRejected

__all__ = ["StaticTokenVerifier", "static_subject"]

_FIELDS = frozenset({"subject", "scopes", "client_id"})


def static_subject(token: str) -> str:
    """The subject of a token configured with scopes only: `static:` + 16 hex of its SHA-256.

    Stable across restarts and instances, different for every token, and never the token
    itself (it is logged, traced and used as a rate-limit and cache identity).

    >>> static_subject("dev-token")
    'static:c91cbbedf8c712e8'
    """
    return "static:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class StaticTokenVerifier:
    """Accept a fixed set of tokens, each its own principal.

    `tokens` maps a token to one of:

    - a list of scopes: the caller's subject (and client id) is :func:`static_subject` of
      the token, so two tokens are two principals with their own rate limits, cache
      partitions and sessions;
    - a mapping `{"subject": "ci", "scopes": [...], "client_id": "ci-bot"}` (`client_id`
      defaults to the subject, `subject` to :func:`static_subject`);
    - an `AccessToken` (its `token` field is filled in).

    `resource` is the audience every token is taken to have been issued for (the MCP
    endpoint URI).

    >>> verifier = StaticTokenVerifier(
    ...     {"dev-token": ["mcp:read"], "ci-token": {"subject": "ci", "scopes": ["mcp:read", "mcp:write"]}},
    ...     resource="http://127.0.0.1:8000/mcp",
    ... )
    """

    def __init__(
        self,
        tokens: Mapping[str, AccessToken | Sequence[str] | Mapping[str, Any]],
        *,
        resource: str | None = None,
    ) -> None:
        self._tokens: dict[str, AccessToken] = {}
        for token, value in tokens.items():
            if isinstance(value, AccessToken):
                access = value.model_copy(update={"token": token})
                if access.resource is None:
                    access = access.model_copy(update={"resource": resource})
            else:
                subject, client_id, scopes = _identity(token, value)
                access = AccessToken(
                    token=token, client_id=client_id, scopes=scopes, subject=subject, resource=resource
                )
            self._tokens[token] = access

    async def verify_token(self, token: str) -> AccessToken | None:
        return self._tokens.get(token)

    async def check(self, token: str) -> AccessToken:
        access = self._tokens.get(token)
        if access is None:
            raise TokenRejected("Unknown token")
        return access


def _identity(token: str, value: Sequence[str] | Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """(subject, client id, scopes) of one configured token; `ValueError` names what is wrong, never the token."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - _FIELDS)
        if unknown:
            raise ValueError(f"static token {static_subject(token)}: unknown field(s) {', '.join(unknown)}")
        subject = value.get("subject", static_subject(token))
        client_id = value.get("client_id", subject)
        scopes = value.get("scopes", [])
        if not isinstance(subject, str) or not subject or not isinstance(client_id, str) or not client_id:
            raise ValueError(f"static token {static_subject(token)}: subject and client_id must be non-empty strings")
    else:
        subject = client_id = static_subject(token)
        scopes = value
    if isinstance(scopes, str) or not all(isinstance(scope, str) for scope in scopes):
        raise ValueError(f"static token {static_subject(token)}: scopes must be a list of strings")
    return subject, client_id, list(scopes)
