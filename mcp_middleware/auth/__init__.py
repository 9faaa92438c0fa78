"""OAuth 2.1 for MCP: a resource-server middleware, token verifiers, and an embedded authorization server.

`AuthMiddleware` makes an MCP endpoint an OAuth 2.1 resource server as the MCP
authorization spec asks (RFC 6750 challenges, RFC 8707 audience, RFC 9728 metadata,
per-method/per-tool scopes). Tokens are checked by any `mcp` SDK `TokenVerifier`;
`JwksTokenVerifier` (JWT + JWKS), `IntrospectionTokenVerifier` (RFC 7662) and
`StaticTokenVerifier` (development) ship here. `mcp_middleware.auth.server` holds a
small authorization server (authorization code + PKCE) for development and the gateway.
"""

from .introspection import IntrospectionTokenVerifier
from .jwks import DEFAULT_ALGORITHMS, JwksKeys, JwksTokenVerifier
from .list_filter import ListFilter
from .metadata import ProtectedResourceMetadataApp, metadata_path, metadata_url
from .middleware import AuthMiddleware
from .static import StaticTokenVerifier, static_subject
from .verification import (
    ExplainingVerifier,
    TokenRejected,
    VerificationUnavailable,
    access_token_from_claims,
    canonical_resource,
    scopes_from_claims,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AuthMiddleware",
    "ExplainingVerifier",
    "IntrospectionTokenVerifier",
    "JwksKeys",
    "JwksTokenVerifier",
    "ListFilter",
    "ProtectedResourceMetadataApp",
    "StaticTokenVerifier",
    "TokenRejected",
    "VerificationUnavailable",
    "access_token_from_claims",
    "canonical_resource",
    "metadata_path",
    "metadata_url",
    "scopes_from_claims",
    "static_subject",
]
