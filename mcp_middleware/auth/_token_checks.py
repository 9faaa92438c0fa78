"""What `AuthMiddleware` asks of a token its cache does not know: the verifier's answer, then this resource's checks."""

from __future__ import annotations

import logging
import time

from mcp.server.auth.provider import AccessToken, TokenVerifier

from .verification import TokenRejected, VerificationUnavailable, canonical_resource

__all__ = ["TokenChecks"]

logger = logging.getLogger("mcp_middleware.auth")


class TokenChecks:
    """The verification steps of :class:`~mcp_middleware.auth.middleware.AuthMiddleware` (a mixin: it needs the
    attributes below, which the middleware's constructor sets)."""

    verifier: TokenVerifier
    unavailable_retry_after: float
    require_audience: bool
    _explains: bool
    _audiences: frozenset[str]
    _audience_spellings: frozenset[str]

    async def _verify(self, token: str) -> AccessToken:
        if self._explains:
            return await self.verifier.check(token)  # type: ignore[attr-defined, no-any-return]
        try:
            access = await self.verifier.verify_token(token)
        except (TokenRejected, VerificationUnavailable):
            raise
        except Exception as exc:  # a third-party verifier's failure must not become a 500 or a pass
            logger.exception("Token verifier %r failed", self.verifier)
            raise VerificationUnavailable(
                "Token verification failed", retry_after=self.unavailable_retry_after
            ) from exc
        if access is None:
            raise TokenRejected("Invalid or expired token")
        return access

    def _problem(self, access: AccessToken) -> str | None:
        """What is wrong with a verified token for this resource, if anything."""
        # This package's verifiers check expiry themselves, with their leeway; others may not.
        if not self._explains and access.expires_at is not None and access.expires_at <= time.time():
            return "Token has expired"
        if access.resource is None:
            return "Token names no resource" if self.require_audience else None
        if (
            access.resource not in self._audience_spellings
            and canonical_resource(access.resource) not in self._audiences
        ):
            return "Token was not issued for this resource"
        return None
