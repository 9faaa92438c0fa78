"""Opaque (or any) access tokens verified by asking the issuer: RFC 7662 token introspection."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx2
from mcp.server.auth.provider import AccessToken

from ._token_cache import TokenCache, token_key
from .verification import (
    ExplainingVerifier,
    TokenRejected,
    VerificationUnavailable,
    access_token_from_claims,
    canonical_resource,
)

__all__ = ["IntrospectionTokenVerifier"]

logger = logging.getLogger("mcp_middleware.auth")

_INACTIVE = "Token is not active"


class IntrospectionTokenVerifier(ExplainingVerifier):
    """Ask the authorization server whether a token is active (RFC 7662), asynchronously.

    The resource server authenticates to the introspection endpoint with `client_id` and
    `client_secret` (`client_secret_basic` by default, or `client_secret_post`). An active
    result is cached until the token's `exp`, at most `cache_ttl` seconds (that bound is
    how long a revoked token may still pass); an inactive one for `negative_ttl` seconds.
    `aud` must name one of `audience` when the result carries it (`require_audience`
    refuses results without it), and `iss` one of `issuer` when given. If the endpoint
    is unreachable or answers 5xx, cached results keep working and anything else is
    refused with :class:`VerificationUnavailable` (503), never accepted.

    >>> verifier = IntrospectionTokenVerifier(
    ...     endpoint="https://issuer.example/oauth2/introspect",
    ...     client_id="mcp-server", client_secret="s3cret",
    ...     audience="https://mcp.example.com/mcp",
    ... )
    """

    def __init__(
        self,
        *,
        endpoint: str,
        audience: str | Sequence[str],
        client_id: str | None = None,
        client_secret: str | None = None,
        auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic",
        issuer: str | Sequence[str] | None = None,
        require_audience: bool = True,
        cache_ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_cached: int = 10_000,
        timeout: float = 5.0,
        retry_after: float = 5.0,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.audiences = [audience] if isinstance(audience, str) else list(audience)
        self._audiences = frozenset(canonical_resource(a) for a in self.audiences)
        self.issuers = None if issuer is None else frozenset([issuer] if isinstance(issuer, str) else issuer)
        self.client_id = client_id
        self.client_secret = client_secret
        self.auth_method = auth_method
        self.require_audience = require_audience
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        self.retry_after = retry_after
        self._client = http_client
        self._active: TokenCache[AccessToken] = TokenCache(maxsize=max_cached, max_ttl=cache_ttl)
        self._inactive: TokenCache[str] = TokenCache(maxsize=max_cached, max_ttl=max(negative_ttl, 0.001))
        self.calls = 0
        """How many introspection requests were made (for tests and metrics)."""

    async def check(self, token: str) -> AccessToken:
        key = token_key(token)
        cached = self._active.get_by_key(key)
        if cached is not None:
            return cached
        reason = self._inactive.get_by_key(key)
        if reason is not None:
            raise TokenRejected(reason)
        result = await self._introspect(token)
        try:
            access = self._accept(token, result)
        except TokenRejected as exc:
            if self.negative_ttl > 0:
                self._inactive.put_by_key(key, exc.description, expires_at=None, ttl=self.negative_ttl)
            raise
        self._active.put_by_key(key, access, expires_at=access.expires_at)
        return access

    def _accept(self, token: str, result: dict[str, Any]) -> AccessToken:
        if result.get("active") is not True:
            raise TokenRejected(_INACTIVE)
        exp = result.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= time.time():
            raise TokenRejected("Token has expired")
        if self.issuers is not None and result.get("iss") not in self.issuers:
            raise TokenRejected("Token was issued by an untrusted issuer")
        aud = result.get("aud")
        audiences = (
            [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
        )
        matched = next((a for a in audiences if canonical_resource(a) in self._audiences), None)
        if audiences and matched is None:
            raise TokenRejected("Token was not issued for this resource")
        if not audiences and self.require_audience:
            raise TokenRejected("Token names no audience")
        return access_token_from_claims(token, result, resource=matched)

    async def _introspect(self, token: str) -> dict[str, Any]:
        form = {"token": token, "token_type_hint": "access_token"}
        auth: httpx2.Auth | httpx2._client.UseClientDefault = httpx2.USE_CLIENT_DEFAULT
        if self.client_id is not None:
            if self.auth_method == "client_secret_post":
                form["client_id"] = self.client_id
                if self.client_secret is not None:
                    form["client_secret"] = self.client_secret
            else:
                auth = httpx2.BasicAuth(self.client_id, self.client_secret or "")
        self.calls += 1
        try:
            if self._client is not None:
                response = await self._client.post(self.endpoint, data=form, auth=auth, timeout=self.timeout)
            else:
                async with httpx2.AsyncClient(timeout=self.timeout) as client:
                    response = await client.post(self.endpoint, data=form, auth=auth)
        except httpx2.HTTPError as exc:
            logger.warning("Token introspection at %s failed: %s", self.endpoint, exc)
            raise self._unavailable() from exc
        if response.status_code >= 500 or response.status_code == 429:
            logger.warning("Token introspection at %s answered %s", self.endpoint, response.status_code)
            raise self._unavailable()
        if response.status_code != 200:
            # 401/403: our own credentials are wrong. Not the client's fault, and nothing to accept.
            logger.error("Token introspection at %s refused us: HTTP %s", self.endpoint, response.status_code)
            raise self._unavailable()
        try:
            result = response.json()
        except ValueError as exc:
            raise self._unavailable() from exc
        if not isinstance(result, dict):
            raise self._unavailable()
        return result

    def _unavailable(self) -> VerificationUnavailable:
        return VerificationUnavailable("Token introspection is unavailable", retry_after=self.retry_after)
