"""`AuthMiddleware`: the MCP endpoint as an OAuth 2.1 resource server (MCP authorization spec)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import urlsplit

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    Component,
    CoreConfig,
    Decision,
    McpRequest,
    Outcome,
    Principal,
    RequestKind,
    SelectorMap,
    add_decision,
    get_principal,
    read_request,
    record_decision,
)
from mcp_middleware.core.direct import UNREAD, inner_app
from mcp_middleware.core.kernel import _Replay
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY
from mcp_middleware.core.request import REQUEST_SCOPE_KEY

from ._token_cache import TokenCache, token_key
from ._token_checks import TokenChecks
from .list_filter import LIST_METHODS, ListFilter
from .metadata import ProtectedResourceMetadataApp, metadata_url
from .refusals import Refusals
from .verification import ExplainingVerifier, TokenRejected, VerificationUnavailable, canonical_resource

__all__ = ["DOOR_SCOPE_KEY", "AuthMiddleware"]

DOOR_SCOPE_KEY = "mcp_middleware.auth.door"
"""The `AuthMiddleware` that authenticated the request at the endpoint the client called.

An aggregate authenticates with its own audience and dispatches into a backend's stack; the
backend's `AuthMiddleware` finds its door here and only authorizes (challenges name the door's
metadata, since that is the resource the client called)."""

_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750 §2.1 `b64token`: anything else after `Bearer ` is not a token."""
_NAME = itemgetter(0)
_REQUIRED_CACHE_SIZE = 4096
_REMEMBERED_CREDENTIALS = 1024
"""`Authorization` values remembered with their token's digest (the table is cleared when full)."""
_REMEMBERED_TARGET_LENGTH = 256
_OTHER = RequestKind.OTHER
_set_user, _reset_user = auth_context_var.set, auth_context_var.reset  # (the SDK's `get_access_token()` reads it)


class _Verified(NamedTuple):
    """What a verified token gives every request that presents it (cached as a whole, built once)."""

    principal: Principal
    user: AuthenticatedUser
    credentials: AuthCredentials
    entries: dict[str, object]
    """What an admitted request's scope gets: the principal, the SDK's `user` and `auth`, the door."""
    allowed: Decision
    """The `allow` decision of every request this token is admitted for (the same attributes each time)."""


class AuthMiddleware(Refusals, TokenChecks):
    """Require a valid OAuth bearer token on the MCP endpoint, and the scopes each request needs.

    - `verifier`: any `mcp` SDK `TokenVerifier`; this package ships
      :class:`JwksTokenVerifier`, :class:`IntrospectionTokenVerifier` and
      :class:`StaticTokenVerifier` (which also say *why* a token was refused).
    - `resource`: the canonical URI of this MCP endpoint (RFC 8707), e.g.
      `https://mcp.example.com/mcp`; it is what the metadata advertises. `audiences`
      (default: `resource`) are the URIs a token may have been issued for; a token for
      any other resource is refused, and so is one that names none unless
      `require_audience=False`.
    - `authorization_servers`: issuers advertised in the RFC 9728 metadata, served at
      `/.well-known/oauth-protected-resource<resource path>` (with CORS) when
      `serve_metadata` is on.
    - `required_scopes` apply to every request; `scopes` add per-method/per-tool ones by
      selector (`{"tools/call:delete_*": ["admin"]}`, most specific wins). With
      `filter_lists`, `tools/list`, `prompts/list` and `resources/list` results only
      show what the caller may use.
    - `public_paths` (same syntax as `CoreConfig.paths`) need no token.

    On success the core principal is set, `scope["user"]`/`scope["auth"]` are what the
    SDK's own auth sets, and `get_access_token()` works inside tools; verified tokens are
    cached by digest until they expire (at most `cache_ttl` seconds).

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.auth import JwksTokenVerifier
    >>> app = AuthMiddleware(
    ...     MCPServer("demo").streamable_http_app(),
    ...     verifier=JwksTokenVerifier(
    ...         jwks_uri="https://login.example.com/jwks", issuer="https://login.example.com",
    ...         audience="https://mcp.example.com/mcp"),
    ...     resource="https://mcp.example.com/mcp",
    ...     authorization_servers=["https://login.example.com"],
    ...     required_scopes=["mcp:read"],
    ...     scopes={"tools/call:delete_*": ["admin"]},
    ... )
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        resource: str,
        authorization_servers: Sequence[str] = (),
        audiences: Sequence[str] | None = None,
        required_scopes: Iterable[str] = (),
        scopes: Mapping[str, Iterable[str] | str] | None = None,
        scopes_supported: Sequence[str] | None = None,
        filter_lists: bool = False,
        public_paths: Sequence[str] = (),
        require_audience: bool = True,
        serve_metadata: bool = True,
        resource_name: str | None = None,
        max_token_length: int = 8192,
        cache_size: int = 10_000,
        cache_ttl: float = 300.0,
        unavailable_retry_after: float = 5.0,
        config: CoreConfig = DEFAULT_CONFIG,
    ) -> None:
        parts = urlsplit(resource)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise ValueError(f"resource must be an absolute http(s) URI without fragment, got {resource!r}")
        self.app = app
        self._next = inner_app(app)  # (see mcp_middleware.core.direct)
        self.verifier = verifier
        self._explains = isinstance(verifier, ExplainingVerifier)
        self.resource = resource
        self.audiences = tuple(audiences) if audiences is not None else (resource,)
        self._audiences = frozenset(canonical_resource(a) for a in self.audiences)
        self._audience_spellings = frozenset(self.audiences)
        self.required_scopes = frozenset(required_scopes)
        rules = {
            selector: frozenset([value] if isinstance(value, str) else value)
            for selector, value in (scopes or {}).items()
        }
        self._rules: SelectorMap[frozenset[str]] = SelectorMap(rules)
        self._has_rules = bool(rules)
        self._required: dict[tuple[str | None, str | None], frozenset[str]] = {}
        """(method, target) -> `required_for`'s answer: the selector lookup once per target, not per request."""
        self.filter_lists = filter_lists
        self.require_audience = require_audience
        self.max_token_length = max_token_length
        self.unavailable_retry_after = unavailable_retry_after
        self.config = config
        self._public = CoreConfig(paths=tuple(public_paths)) if public_paths else None
        # Without an authorization server to name there is no metadata document to point at,
        # unless the application serves it itself (`serve_metadata=False`).
        self.metadata_url = metadata_url(resource) if authorization_servers or not serve_metadata else None
        if scopes_supported is None:
            scopes_supported = sorted(self.required_scopes.union(*rules.values()))
        self.metadata = (
            ProtectedResourceMetadataApp(
                resource=resource,
                authorization_servers=authorization_servers,
                scopes_supported=scopes_supported,
                resource_name=resource_name,
            )
            if serve_metadata and authorization_servers
            else None
        )
        self._metadata_path = self.metadata.path if self.metadata is not None else None
        self.cache: TokenCache[_Verified] = TokenCache(maxsize=cache_size, max_ttl=cache_ttl)
        self._keys: dict[bytes | None, bytes] = {}
        """`Authorization` values that carried a verified token → the token's cache key (see `_cached`; typed to
        be asked for `None`, no header, which it never holds)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = scope.get(REQUEST_SCOPE_KEY, UNREAD)  # (read by an outer layer: no coroutine to read it again)
        # The usual request (read by an outer layer, not the metadata document, no public paths) skips the prologue.
        if request.__class__ is not McpRequest or scope["path"] == self._metadata_path or self._public is not None:
            if scope["type"] != "http":
                await self._next(scope, receive, send)
                return
            if scope["path"] == self._metadata_path:  # (None without a metadata document: no path equals it)
                await self.metadata(scope, receive, send)  # type: ignore[misc]
                return
            if self._public is not None and self._public.is_mcp(scope):
                await self._next(scope, receive, send)
                return
            if request is UNREAD:
                request, receive = await read_request(scope, receive, send, self.config)
            if request is None:  # not MCP
                return await self._next(scope, receive, send) if receive is not ANSWERED else None
        if request.kind is _OTHER and request.http_method == "OPTIONS":  # a CORS preflight: never credentials
            return await self._next(scope, receive, send)

        if DOOR_SCOPE_KEY in scope and scope[DOOR_SCOPE_KEY] is not self:
            door: AuthMiddleware = scope[DOOR_SCOPE_KEY]
            # Authenticated at the endpoint the client called (the aggregate's door, its own audience):
            # here, in the backend's stack, only what this backend requires is decided.
            await self._authorize(scope, receive, send, request, door)
            return
        # The usual request: its one `Authorization` value carried a verified token before (`_cached`'s first
        # case, here without its frame). The value is the core's, from its one pass over this very header list
        # (the scope's list still equals the copy it took), else found here in one C-level pass (no name repeats).
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if receive.__class__ is _Replay and receive.headers_seen == headers:
            key = self._keys.get(receive.authorization)
        else:
            found = dict(headers)
            key = self._keys.get(found.get(b"authorization")) if len(found) == len(headers) else None
        if key is None or b"access_token=" in scope.get("query_string", b""):
            verified = self._cached(scope)
        else:
            verified = self.cache.get_by_key(key)
        if verified is None:
            verified = await self._authenticate(scope, send, request)
            if verified is None:
                return
        # (without per-selector rules every request needs the same scopes; with them, `required_for`'s table first)
        required = self._required.get((request.method, request.target)) if self._has_rules else self.required_scopes
        if required is None:
            required = self.required_for(request.method, request.target)
        if not required <= verified.principal.scopes:  # (frozensets: the verified principal's are)
            await self._forbid(scope, send, request, required, verified.principal, self)
            return

        add_decision(scope, verified.allowed)
        scope.update(verified.entries)  # the principal (`set_principal`), `user`, `auth`, the door: in one call
        if self.filter_lists and request.method in LIST_METHODS:
            send = self._filtered(send, request, verified.principal)
        reset = _set_user(verified.user)
        try:
            await self._next(scope, receive, send)
        finally:
            _reset_user(reset)

    async def _authorize(
        self, scope: Scope, receive: Receive, send: Send, request: McpRequest, door: AuthMiddleware
    ) -> None:
        principal = get_principal(scope)
        required = self.required_for(request.method, request.target)
        if not principal.scopes.issuperset(required):
            await self._forbid(scope, send, request, required, principal, door)
            return
        record_decision(
            scope, Component.AUTH, Outcome.ALLOW, client_id=principal.client_id or "", subject=principal.subject or ""
        )
        if self.filter_lists and request.method in LIST_METHODS:
            send = self._filtered(send, request, principal)
        await self._next(scope, receive, send)

    def _filtered(self, send: Send, request: McpRequest, principal: Principal) -> Send:
        assert request.method is not None
        return ListFilter(
            send,
            method=request.method,
            request_id=request.id,
            allowed=lambda method, target: principal.scopes.issuperset(self.required_for(method, target)),
            max_bytes=self.config.max_inspect_bytes,
        )

    @property
    def list_gate(self) -> Callable[[Scope, str, str], bool] | None:
        """What an aggregate asks of this backend's items when it lists them (None: lists are not filtered)."""
        return self.visible if self.filter_lists else None

    def visible(self, scope: Scope, method: str, target: str) -> bool:
        """Whether the caller of `scope` may see `target` in a list (it holds what `method` on it needs)."""
        return get_principal(scope).scopes.issuperset(self.required_for(method, target))

    def required_for(self, method: str | None, target: str | None) -> frozenset[str]:
        """Every scope a request for `method` on `target` needs (global plus per-selector)."""
        if not self._has_rules:
            return self.required_scopes
        key = (method, target)
        required = self._required.get(key)
        if required is None:
            extra = self._rules.lookup_parts(method, target)
            required = self.required_scopes if extra is None else self.required_scopes | extra
            # Targets come from clients: remember short ones only, in a bounded table.
            if target is None or len(target) <= _REMEMBERED_TARGET_LENGTH:
                if len(self._required) >= _REQUIRED_CACHE_SIZE:
                    self._required.clear()
                self._required[key] = required
        return required

    # --- authentication -----------------------------------------------------------------------

    def _cached(self, scope: Scope) -> _Verified | None:
        """The request's token if it is well-formed where `_authenticate` looks and verified before (no wait);
        `None`: let `_authenticate` decide (and refuse), as it does on every path this one does not take."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        names = list(map(_NAME, headers))
        if names.count(b"authorization") != 1 or b"access_token=" in scope.get("query_string", b""):
            return None
        credential = headers[names.index(b"authorization")][1]
        key = self._keys.get(credential)
        if key is not None:  # this very header carried a verified token before: well-formed, its digest known
            return self.cache.get_by_key(key)
        scheme, _, raw = credential.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        raw = raw.strip()
        if len(raw) > self.max_token_length:
            return None
        key = token_key(raw)
        verified = self.cache.get_by_key(key)
        if verified is not None:
            keys = self._keys
            if len(keys) >= _REMEMBERED_CREDENTIALS:
                keys.clear()
            keys[credential] = key
        return verified

    async def _authenticate(self, scope: Scope, send: Send, request: McpRequest) -> _Verified | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        names = list(map(_NAME, headers))  # C-level passes: the header list is scanned on every request
        copies = names.count(b"authorization")
        if not copies:
            await self._unauthorized(scope, send, request, None, "Authentication required")
            return None
        if copies > 1:
            await self._bad_request(scope, send, request, "More than one Authorization header")
            return None
        credential = headers[names.index(b"authorization")][1]
        if b"access_token=" in scope.get("query_string", b""):
            await self._bad_request(scope, send, request, "Tokens are accepted in the Authorization header only")
            return None
        scheme, _, raw = credential.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            # RFC 6750 §3.1: an unsupported scheme is "no bearer credentials", so no error code.
            await self._unauthorized(scope, send, request, None, "Bearer token required")
            return None
        raw = raw.strip()
        if len(raw) > self.max_token_length:
            await self._unauthorized(scope, send, request, "invalid_token", "Token is too large")
            return None
        key = token_key(raw)
        verified = self.cache.get_by_key(key)
        if verified is not None:  # verified before: it was well-formed then, and has not expired since
            return verified
        if not _B64TOKEN.fullmatch(raw):
            await self._unauthorized(scope, send, request, "invalid_token", "Malformed bearer token")
            return None
        token = raw.decode("ascii")
        try:
            access = await self._verify(token)
        except TokenRejected as exc:
            await self._unauthorized(scope, send, request, "invalid_token", exc.description)
            return None
        except VerificationUnavailable as exc:
            await self._unavailable(scope, send, request, exc.description, exc.retry_after)
            return None
        problem = self._problem(access)
        if problem is not None:
            await self._unauthorized(scope, send, request, "invalid_token", problem)
            return None
        verified = self._verified(access)
        self.cache.put_by_key(key, verified, expires_at=access.expires_at)
        return verified

    def _verified(self, access: AccessToken) -> _Verified:
        principal = Principal.from_access_token(access)
        user = AuthenticatedUser(access)
        credentials = AuthCredentials(access.scopes)
        entries = {PRINCIPAL_SCOPE_KEY: principal, "user": user, "auth": credentials, DOOR_SCOPE_KEY: self}
        attributes = MappingProxyType({"client_id": principal.client_id or "", "subject": principal.subject or ""})
        return _Verified(principal, user, credentials, entries, Decision(Component.AUTH, Outcome.ALLOW, attributes))
