"""The embedded OAuth 2.1 authorization server (development and the reference gateway)."""

from .app import EmbeddedAuthorizationServer
from .storage import (
    AuthorizationCode,
    AuthorizationStore,
    MemoryAuthorizationStore,
    RefreshToken,
    RegisteredClient,
)

__all__ = [
    "AuthorizationCode",
    "AuthorizationStore",
    "EmbeddedAuthorizationServer",
    "MemoryAuthorizationStore",
    "RefreshToken",
    "RegisteredClient",
]
