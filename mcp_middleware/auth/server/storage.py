"""What the embedded authorization server remembers: clients, codes, refresh tokens, grants."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.util import scope_to_list  # type: ignore[import-untyped]

__all__ = [
    "AuthorizationCode",
    "AuthorizationStore",
    "MemoryAuthorizationStore",
    "RefreshToken",
    "RegisteredClient",
]


@dataclass
class RegisteredClient(ClientMixin):  # type: ignore[misc]
    """A client registered with RFC 7591 (or configured up front)."""

    client_id: str
    redirect_uris: list[str]
    client_secret: str | None = None
    token_endpoint_auth_method: str = "none"
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code", "refresh_token"])
    response_types: list[str] = field(default_factory=lambda: ["code"])
    scope: str | None = None
    client_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        # The registered `scope` is what the client asked for first; step-up (MCP) asks for more
        # later, so the server's own `scopes_supported` is the limit, not the registration.
        if not scope:
            return self.scope or ""
        return " ".join(scope_to_list(scope))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match (OAuth 2.1)

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and hmac.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method if endpoint == "token" else True

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    """A code issued at the authorization endpoint; single use, kept after use to detect replay."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    subject: str
    grant_id: str
    code_challenge: str
    code_challenge_method: str
    resource: str | None
    expires_at: float
    used: bool = False

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class RefreshToken(TokenMixin):  # type: ignore[misc]
    """A refresh token; rotated on use, and a rotated one presented again revokes its grant."""

    token: str
    client_id: str
    scope: str
    subject: str
    grant_id: str
    resource: str | None
    expires_at: float
    rotated: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.expires_at - time.time()))

    def is_expired(self) -> bool:
        return self.expires_at <= time.time()

    def is_revoked(self) -> bool:
        return self.rotated


class AuthorizationStore(Protocol):
    """Where the authorization server keeps its state (a database in production)."""

    def save_client(self, client: RegisteredClient) -> None: ...
    def get_client(self, client_id: str) -> RegisteredClient | None: ...
    def save_code(self, code: AuthorizationCode) -> None: ...
    def get_code(self, code: str) -> AuthorizationCode | None: ...
    def save_refresh_token(self, token: RefreshToken) -> None: ...
    def get_refresh_token(self, token: str) -> RefreshToken | None: ...
    def record_access_token(self, jti: str, grant_id: str, expires_at: float) -> None: ...
    def revoke_grant(self, grant_id: str) -> None: ...
    def is_grant_revoked(self, grant_id: str) -> bool: ...
    def grant_of_access_token(self, jti: str) -> str | None: ...


class MemoryAuthorizationStore:
    """The in-memory store (the default): state is lost on restart, fine for development.

    Expired codes, refresh tokens and access-token records are dropped as new ones arrive,
    and at most `max_clients` registrations are kept (oldest first out), so an open
    registration endpoint cannot grow memory without bound.
    """

    def __init__(self, *, max_clients: int = 10_000) -> None:
        self.max_clients = max_clients
        self.clients: dict[str, RegisteredClient] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.access_tokens: dict[str, tuple[str, float]] = {}
        self.revoked_grants: dict[str, float] = {}
        self._purged_at = 0.0

    def save_client(self, client: RegisteredClient) -> None:
        self.clients[client.client_id] = client
        while len(self.clients) > self.max_clients:
            del self.clients[next(iter(self.clients))]

    def get_client(self, client_id: str) -> RegisteredClient | None:
        return self.clients.get(client_id)

    def save_code(self, code: AuthorizationCode) -> None:
        self._purge()
        self.codes[code.code] = code

    def get_code(self, code: str) -> AuthorizationCode | None:
        found = self.codes.get(code)
        return found if found is not None and found.expires_at > time.time() else None

    def save_refresh_token(self, token: RefreshToken) -> None:
        self._purge()
        self.refresh_tokens[token.token] = token

    def get_refresh_token(self, token: str) -> RefreshToken | None:
        found = self.refresh_tokens.get(token)
        return found if found is not None and not found.is_expired() else None

    def record_access_token(self, jti: str, grant_id: str, expires_at: float) -> None:
        self.access_tokens[jti] = (grant_id, expires_at)

    def revoke_grant(self, grant_id: str) -> None:
        self.revoked_grants[grant_id] = time.time()

    def is_grant_revoked(self, grant_id: str) -> bool:
        return grant_id in self.revoked_grants

    def grant_of_access_token(self, jti: str) -> str | None:
        found = self.access_tokens.get(jti)
        return found[0] if found is not None else None

    def _purge(self) -> None:
        now = time.time()
        if now - self._purged_at < 30:  # a sweep is O(n): at most twice a minute
            return
        self._purged_at = now
        # Codes are kept a while after expiry so a late replay is still recognised as one.
        for key in [k for k, c in self.codes.items() if c.expires_at + 600 < now]:
            del self.codes[key]
        for key in [k for k, t in self.refresh_tokens.items() if t.expires_at < now]:
            del self.refresh_tokens[key]
        for key in [k for k, (_, exp) in self.access_tokens.items() if exp < now]:
            del self.access_tokens[key]
