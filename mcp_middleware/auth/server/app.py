"""`EmbeddedAuthorizationServer`: a small OAuth 2.1 authorization server on authlib, as an ASGI app.

Its endpoints are in :mod:`.endpoints`, the OAuth machinery (grants, PKCE, registration) in
:mod:`.grants`, the consent page in :mod:`.consent`, client ID metadata documents in
:mod:`.metadata_documents`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx2
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.routing import Route

from ..jwks import JwksTokenVerifier
from ..verification import canonical_resource
from .endpoints import Endpoints
from .metadata_documents import MetadataDocumentFetcher, Resolver
from .revocation import GrantRevocation, RevocationCheckingVerifier
from .storage import AuthorizationStore, MemoryAuthorizationStore

__all__ = ["EmbeddedAuthorizationServer"]


class EmbeddedAuthorizationServer:
    """A development OAuth 2.1 authorization server for MCP, served as an ASGI app.

    Built on authlib: RFC 8414 metadata, authorization code grant with PKCE S256
    required (`plain` and a missing challenge are refused), RFC 7591 dynamic client
    registration, the RFC 8707 `resource` parameter bound into the token's `aud`,
    refresh tokens rotated on every use (a rotated one presented again revokes the
    whole grant, and so does a replayed authorization code), RFC 7662 introspection
    for the resource servers listed in `introspection_clients`, and JWT access tokens
    signed with a key published at `/jwks`, and (opt-in) client ID metadata documents:
    an HTTPS URL as `client_id`, its JSON fetched with SSRF guards (resolved once, public
    addresses only unless `allow_private_metadata_hosts`, connected to the checked address,
    at most 64 KiB read; `metadata_document_resolver` replaces the system resolver).
    `/authorize` shows a minimal login and consent page, or approves at once as
    `default_subject` with `auto_approve=True`.
    State lives in a :class:`MemoryAuthorizationStore` unless another store is given.

    Production should point `AuthMiddleware` at a real identity provider instead.

    >>> auth_server = EmbeddedAuthorizationServer(
    ...     issuer="http://127.0.0.1:8000", scopes_supported=["mcp:read", "mcp:write"], auto_approve=True
    ... )
    >>> verifier = auth_server.verifier(audience="http://127.0.0.1:8000/mcp")  # for AuthMiddleware
    >>> # serve `auth_server` (it is an ASGI app) at the issuer URL, e.g. mounted at "/" beside the MCP app
    """

    def __init__(
        self,
        *,
        issuer: str,
        scopes_supported: Sequence[str] = (),
        default_scopes: Sequence[str] = (),
        resources: Sequence[str] | None = None,
        auto_approve: bool = False,
        default_subject: str = "dev-user",
        algorithm: str = "RS256",
        access_token_ttl: int = 3600,
        refresh_token_ttl: int = 30 * 24 * 3600,
        code_ttl: int = 300,
        introspection_clients: Mapping[str, str] | None = None,
        allow_registration: bool = True,
        client_id_metadata_documents: bool = False,
        allow_private_metadata_hosts: bool = False,
        metadata_document_ttl: float = 300.0,
        metadata_document_resolver: Resolver | None = None,
        http_client: httpx2.AsyncClient | None = None,
        store: AuthorizationStore | None = None,
    ) -> None:
        parsed = urlsplit(issuer)
        if parsed.scheme not in ("http", "https") or parsed.query or parsed.fragment:
            raise ValueError("issuer must be an http(s) URL without query or fragment")
        self.issuer = issuer.rstrip("/")
        self._base_path = parsed.path.rstrip("/")
        self.scopes_supported = list(scopes_supported)
        self.default_scopes = list(default_scopes)
        self.resources = None if resources is None else frozenset(canonical_resource(r) for r in resources)
        self.auto_approve = auto_approve
        self.default_subject = default_subject
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.code_ttl = code_ttl
        self.introspection_clients = dict(introspection_clients or {})
        self.allow_registration = allow_registration
        self.client_id_metadata_documents = client_id_metadata_documents
        self.allow_private_metadata_hosts = allow_private_metadata_hosts
        self.metadata_document_ttl = metadata_document_ttl
        self.store: AuthorizationStore = store if store is not None else MemoryAuthorizationStore()
        self.revocation = GrantRevocation(self.store)
        if algorithm == "RS256":
            self.key: RSAKey | ECKey = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
        elif algorithm == "ES256":
            self.key = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
        else:
            raise ValueError("algorithm must be RS256 or ES256")
        self.key.ensure_kid()
        self.algorithm = algorithm
        fetcher = MetadataDocumentFetcher(
            allow_private_hosts=allow_private_metadata_hosts,
            http_client=http_client,
            resolver=metadata_document_resolver,
        )
        self._endpoints = Endpoints(self, metadata_fetcher=fetcher)
        self.metadata = self._build_metadata()
        self.app = Starlette(routes=self._endpoints.routes(self._base_path))

    # --- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @property
    def paths(self) -> tuple[str, ...]:
        """The exact paths this server answers (a host serving it beside other apps routes these here)."""
        return tuple(route.path for route in self.app.routes if isinstance(route, Route))

    def _url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    def _build_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self._url("/authorize"),
            "token_endpoint": self._url("/token"),
            "jwks_uri": self._url("/jwks"),
            "introspection_endpoint": self._url("/introspect"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "authorization_response_iss_parameter_supported": True,
        }
        if self.scopes_supported:
            metadata["scopes_supported"] = self.scopes_supported
        if self.allow_registration:
            metadata["registration_endpoint"] = self._url("/register")
        if self.client_id_metadata_documents:
            metadata["client_id_metadata_document_supported"] = True
        if self.issuer.startswith("https://"):
            AuthorizationServerMetadata(metadata).validate()
        return metadata

    # --- keys and verification -------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def verifier(self, *, audience: str | Sequence[str], **options: Any) -> JwksTokenVerifier:
        """A verifier for tokens of this server that needs no HTTP: it holds the public key.

        It refuses the access tokens of a revoked grant (a replayed code, a reused refresh
        token) from the moment of revocation; :meth:`revoke_grant` also drops them from the
        token caches of every `AuthMiddleware` in this process.
        """
        return RevocationCheckingVerifier(
            revocation=self.revocation,
            issuer=self.issuer,
            audience=audience,
            jwks=self.jwks(),
            algorithms=[self.algorithm],
            **options,
        )

    def revoke_grant(self, grant_id: str) -> None:
        """End a grant: its refresh tokens and access tokens stop working at once."""
        self.revocation.revoke(grant_id)

    def issue_access_token(
        self, *, subject: str, client_id: str, scope: str, resource: str | None, grant_id: str | None = None
    ) -> tuple[str, int]:
        """Sign an access token (also handy in tests); returns (token, expires_in)."""
        now = int(time.time())
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": resource or self.issuer,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now + self.access_token_ttl,
            "jti": jti,
        }
        header = {"alg": self.algorithm, "kid": self.key.kid, "typ": "at+jwt"}
        token = jwt.encode(header, claims, self.key, algorithms=[self.algorithm])
        if grant_id is not None:
            self.store.record_access_token(jti, grant_id, now + self.access_token_ttl)
            self.revocation.issued(token, grant_id, now + self.access_token_ttl)
        return token, self.access_token_ttl
