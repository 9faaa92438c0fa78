"""Who is calling: one principal per request, set by auth, read by everyone else.

Rate limiting, caching, tracing and the router key on the principal; none of them
parses tokens. It converts to and from the `mcp` SDK's `AccessToken`, so what auth
verifies is what `get_access_token()` returns inside a tool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mcp.server.auth.provider import AccessToken
from starlette.requests import HTTPConnection
from starlette.types import Scope

__all__ = ["ANONYMOUS", "PRINCIPAL_SCOPE_KEY", "Principal", "get_principal", "set_principal"]

PRINCIPAL_SCOPE_KEY = "mcp_middleware.principal"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or anonymous) caller.

    >>> p = Principal(subject="alice", client_id="cli", scopes=frozenset({"mcp:read"}))
    >>> p.has_scopes(["mcp:read"]), p.key
    (True, 'cli|alice|')
    """

    subject: str | None = None
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    issuer: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    expires_at: int | None = None
    """Unix time the credential expires, if known."""
    resource: str | None = None
    """The resource (RFC 8707 audience) the credential was issued for."""
    token: str | None = field(default=None, repr=False, compare=False)
    """The raw credential; kept only to build an SDK `AccessToken`. Never log or forward it."""

    @property
    def authenticated(self) -> bool:
        return self.subject is not None or self.client_id is not None

    @property
    def key(self) -> str:
        """A stable identity key (client, subject, issuer): what limits and caches partition on."""
        return f"{self.client_id or ''}|{self.subject or ''}|{self.issuer or ''}"

    @property
    def tenant(self) -> str | None:
        """The `tenant`/`tid`/`org_id` claim, when the issuer sets one."""
        for claim in ("tenant", "tid", "org_id"):
            value = self.claims.get(claim)
            if isinstance(value, str):
                return value
        return None

    def has_scopes(self, required: Iterable[str]) -> bool:
        return self.scopes.issuperset(required)

    def to_access_token(self) -> AccessToken:
        """The SDK's view of this principal (what `get_access_token()` returns in a tool)."""
        claims = dict(self.claims)
        if self.issuer is not None:
            claims.setdefault("iss", self.issuer)
        return AccessToken(
            token=self.token or "",
            client_id=self.client_id or "",
            scopes=sorted(self.scopes),
            expires_at=self.expires_at,
            resource=self.resource,
            subject=self.subject,
            claims=claims or None,
        )

    @classmethod
    def from_access_token(cls, token: AccessToken) -> Principal:
        claims = dict(token.claims or {})
        issuer = claims.get("iss")
        return cls(
            subject=token.subject,
            client_id=token.client_id or None,
            scopes=frozenset(token.scopes),
            issuer=issuer if isinstance(issuer, str) else None,
            claims=MappingProxyType(claims),
            expires_at=token.expires_at,
            resource=token.resource,
            token=token.token or None,
        )


ANONYMOUS = Principal()
"""The principal of a request no one authenticated."""


def get_principal(source: Scope | HTTPConnection) -> Principal:
    """The request's principal, or :data:`ANONYMOUS`."""
    scope = source.scope if isinstance(source, HTTPConnection) else source
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def set_principal(scope: Scope, principal: Principal) -> None:
    """Record the request's principal (auth middlewares call this)."""
    scope[PRINCIPAL_SCOPE_KEY] = principal
