"""What a verifier says besides "yes": why a token was refused, or that it could not tell.

The `mcp` SDK's `TokenVerifier` answers `AccessToken | None`. The verifiers of this
package also implement :class:`ExplainingVerifier`: `check(token)` returns the
`AccessToken` or raises :class:`TokenRejected` (with a description the client may
read) or :class:`VerificationUnavailable` (keys or introspection unreachable, nothing
cached: the middleware answers 503 and never lets the token through).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from mcp.server.auth.provider import AccessToken

from mcp_middleware.core.errors import McpMiddlewareError

__all__ = [
    "ExplainingVerifier",
    "TokenRejected",
    "VerificationUnavailable",
    "access_token_from_claims",
    "canonical_resource",
    "scopes_from_claims",
]


class TokenRejected(McpMiddlewareError):
    """The token is not acceptable; `description` is safe to show the client."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class VerificationUnavailable(McpMiddlewareError):
    """The verifier could not decide (JWKS or introspection endpoint unreachable, nothing cached)."""

    def __init__(self, description: str, *, retry_after: float = 5.0) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after


@runtime_checkable
class ExplainingVerifier(Protocol):
    """A token verifier that says why it refused (this package's verifiers implement it)."""

    async def check(self, token: str) -> AccessToken:
        """Return the verified token or raise :class:`TokenRejected` / :class:`VerificationUnavailable`."""
        ...

    async def verify_token(self, token: str) -> AccessToken | None:
        """The `mcp` SDK's `TokenVerifier` contract: `check`, with a refusal as `None` (a verifier that
        subclasses this protocol inherits it). An unavailable verifier still raises: nothing lets a token
        through that could not be checked."""
        try:
            return await self.check(token)
        except TokenRejected:
            return None


def scopes_from_claims(claims: Mapping[str, Any]) -> list[str]:
    """Scopes from `scope` (RFC 8693/9068, space-separated) or `scp` (Entra, Okta: list or string)."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [item for item in value if isinstance(item, str)]
    return []


def canonical_resource(uri: str) -> str:
    """RFC 8707 / MCP canonical form: lower-case scheme and host, no default port, fragment or trailing slash.

    >>> canonical_resource("HTTPS://MCP.Example.com:443/mcp/")
    'https://mcp.example.com/mcp'
    """
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and not ((scheme == "https" and port == 443) or (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, host, path, parts.query, ""))


def _audiences(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def access_token_from_claims(
    token: str,
    claims: Mapping[str, Any],
    *,
    resource: str | None = None,
) -> AccessToken:
    """Build the SDK's `AccessToken` from JWT or introspection claims.

    `resource` is the audience the verifier matched to this server; without it, the
    token's first audience. The middleware compares it with its own resource URIs.
    """
    if resource is None:
        token_audiences = _audiences(claims.get("aud"))
        resource = token_audiences[0] if token_audiences else None
    client_id: str = next(
        (claims[name] for name in ("client_id", "azp", "cid", "appid") if isinstance(claims.get(name), str)), ""
    )
    subject = claims.get("sub")
    expires = claims.get("exp")
    return AccessToken(
        token=token,
        client_id=client_id,
        scopes=scopes_from_claims(claims),
        expires_at=int(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else None,
        resource=resource,
        subject=subject if isinstance(subject, str) else None,
        claims=dict(claims),
    )
