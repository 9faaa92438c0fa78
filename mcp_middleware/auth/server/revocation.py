"""Revocation that takes effect at once: a replayed code or a reused refresh token ends its grant.

The embedded authorization server revokes the whole grant (RFC 6749 §4.1.2, OAuth 2.1 §6.1) and
this module makes the grant's access tokens stop working immediately: its verifier refuses
them on every verification, and every `AuthMiddleware` token cache of the process forgets them
(a cache hit skips the verifier, so waiting for the cache to expire would keep a revoked token
alive for up to `cache_ttl`).
"""

from __future__ import annotations

import time
from typing import Any

from mcp.server.auth.provider import AccessToken

from .._token_cache import forget_token, token_key
from ..jwks import JwksTokenVerifier
from ..verification import TokenRejected
from .storage import AuthorizationStore

__all__ = ["GrantRevocation", "RevocationCheckingVerifier"]


class GrantRevocation:
    """Which access tokens each grant issued (by digest, until they expire), and revoking a grant."""

    def __init__(self, store: AuthorizationStore) -> None:
        self.store = store
        self._tokens: dict[str, list[tuple[bytes, float]]] = {}
        self._purged_at = 0.0

    def issued(self, token: str, grant_id: str, expires_at: float) -> None:
        self._purge()
        self._tokens.setdefault(grant_id, []).append((token_key(token), expires_at))

    def revoke(self, grant_id: str) -> None:
        """Revoke the grant in the store and drop its access tokens from every token cache."""
        self.store.revoke_grant(grant_id)
        for key, _ in self._tokens.pop(grant_id, ()):
            forget_token(key)

    def revoked(self, access: AccessToken) -> bool:
        """Whether the grant that issued this access token was revoked (tokens of no grant never are)."""
        jti = (access.claims or {}).get("jti")
        if not isinstance(jti, str):
            return False
        grant_id = self.store.grant_of_access_token(jti)
        return grant_id is not None and self.store.is_grant_revoked(grant_id)

    def _purge(self) -> None:
        now = time.time()
        if now - self._purged_at < 30:  # a sweep is O(n): at most twice a minute
            return
        self._purged_at = now
        for grant_id in list(self._tokens):
            alive = [(key, expires) for key, expires in self._tokens[grant_id] if expires > now]
            if alive:
                self._tokens[grant_id] = alive
            else:
                del self._tokens[grant_id]


class RevocationCheckingVerifier(JwksTokenVerifier):
    """A `JwksTokenVerifier` for the embedded server's tokens that also refuses those of revoked grants.

    `revoked(access)` is the revocation check itself, for a caller that holds verified tokens
    and wants to ask again (a cache consulted without the verifier).
    """

    def __init__(self, *, revocation: GrantRevocation, **options: Any) -> None:
        super().__init__(**options)
        self.revocation = revocation

    async def check(self, token: str) -> AccessToken:
        access = await super().check(token)
        # Nothing awaits between this check and the caller caching the result, so a revocation
        # (which runs on the same loop) cannot slip in between and leave a revoked token cached.
        if self.revocation.revoked(access):
            raise TokenRejected("Token has been revoked")
        return access

    def revoked(self, access: AccessToken) -> bool:
        return self.revocation.revoked(access)
