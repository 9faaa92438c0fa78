"""The OAuth 2.1 machinery on authlib: requests, PKCE S256, the code and refresh grants, registration.

authlib is synchronous and framework-neutral: each request is read by Starlette first and
handed over as an :class:`OAuthRequest`; authlib's responses come back as Starlette ones.
The grants keep their state in the server's :class:`AuthorizationStore` and issue tokens
through :meth:`EmbeddedAuthorizationServer.issue_access_token`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from authlib.oauth2 import AuthorizationServer as AuthlibAuthorizationServer  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import (  # type: ignore[import-untyped]
    InvalidGrantError,
    InvalidRequestError,
    JsonPayload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload  # type: ignore[import-untyped]
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import CodeChallenge  # type: ignore[import-untyped]
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..verification import canonical_resource
from .consent import NO_STORE
from .storage import AuthorizationCode, AuthorizationStore, RefreshToken, RegisteredClient

if TYPE_CHECKING:
    from .app import EmbeddedAuthorizationServer

__all__ = ["AuthlibServer", "OAuthRequest", "PayloadOf"]


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    """An authlib request built from an already-read Starlette request (authlib is synchronous)."""

    def __init__(self, method: str, uri: str, headers: Headers, args: Mapping[str, str], form: Mapping[str, str]):
        super().__init__(method=method, uri=uri, headers=headers)
        self._args = dict(args)
        self._form = dict(form)
        self.payload = BasicOAuth2Payload({**self._args, **self._form})

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class PayloadOf(JsonPayload):  # type: ignore[misc]
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        return self._data


class _S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE as OAuth 2.1 and MCP require it: a challenge on every request, method S256 only."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 (authlib's class attribute)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class AuthlibServer(AuthlibAuthorizationServer):  # type: ignore[misc]
    """authlib's server core, wired to our store, token format and Starlette responses."""

    def __init__(self, owner: EmbeddedAuthorizationServer) -> None:
        super().__init__(scopes_supported=owner.scopes_supported or None)
        self.owner = owner
        self.register_token_generator("default", self._unused_generator)
        self.register_grant(_CodeGrant, [_S256Only(required=True)])
        self.register_grant(_RefreshGrant)
        self.register_endpoint(_Registration)

    def query_client(self, client_id: str) -> RegisteredClient | None:
        return self.owner.store.get_client(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        return None  # tokens are recorded where they are issued (see _issue)

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def create_json_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        headers = dict(headers or [])
        location = headers.pop("Location", None)
        if location is not None:
            return RedirectResponse(location, status_code=302)
        content = body if isinstance(body, dict) else {"body": body}
        headers.pop("Content-Type", None)
        return JSONResponse(content, status_code=status, headers={**headers, **NO_STORE})

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def _unused_generator(self, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("tokens are issued by the grants")  # our grants override generate_token


def _issue(grant: Any, *, subject: str, scope: str, resource: str | None, grant_id: str) -> dict[str, Any]:
    """Access token (JWT, `aud` = resource) plus a fresh refresh token of the same grant."""
    owner: EmbeddedAuthorizationServer = grant.server.owner
    client: RegisteredClient = grant.request.client
    access, expires_in = owner.issue_access_token(
        subject=subject, client_id=client.client_id, scope=scope, resource=resource, grant_id=grant_id
    )
    token: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": scope}
    if client.check_grant_type("refresh_token"):
        refresh = RefreshToken(
            token=secrets.token_urlsafe(32),
            client_id=client.client_id,
            scope=scope,
            subject=subject,
            grant_id=grant_id,
            resource=resource,
            expires_at=time.time() + owner.refresh_token_ttl,
        )
        owner.store.save_refresh_token(refresh)
        token["refresh_token"] = refresh.token
    return token


def _resource_matches(requested: str | None, bound: str | None) -> bool:
    return requested is None or (bound is not None and canonical_resource(requested) == canonical_resource(bound))


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]  # noqa: RUF012

    def save_authorization_code(self, code: str, request: Any) -> None:
        owner: EmbeddedAuthorizationServer = self.server.owner
        data = request.payload.data
        scope = request.scope or " ".join(owner.default_scopes)
        owner.store.save_code(
            AuthorizationCode(
                code=code,
                client_id=request.client.client_id,
                redirect_uri=request.payload.redirect_uri or request.client.get_default_redirect_uri(),
                scope=scope,
                subject=str(request.user),
                grant_id=secrets.token_urlsafe(16),
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                resource=data.get("resource"),
                expires_at=time.time() + owner.code_ttl,
            )
        )

    def query_authorization_code(self, code: str, client: RegisteredClient) -> AuthorizationCode | None:
        store: AuthorizationStore = self.server.owner.store
        found = store.get_code(code)
        if found is None or found.client_id != client.client_id:
            return None
        if found.used:  # replay: refuse, and revoke everything issued from this code (RFC 6749 §4.1.2)
            self.server.owner.revoke_grant(found.grant_id)
            return None
        if not _resource_matches(self.request.payload.data.get("resource"), found.resource):
            raise InvalidGrantError("'resource' differs from the authorization request")
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        authorization_code.used = True
        self.server.owner.store.save_code(authorization_code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> str:
        return authorization_code.subject

    def generate_token(self, user: Any = None, scope: Any = None, **kwargs: Any) -> dict[str, Any]:
        code: AuthorizationCode = self.request.authorization_code
        return _issue(self, subject=code.subject, scope=code.scope, resource=code.resource, grant_id=code.grant_id)


class _RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]  # noqa: RUF012
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        store: AuthorizationStore = self.server.owner.store
        found = store.get_refresh_token(refresh_token)
        if found is None or store.is_grant_revoked(found.grant_id):
            return None
        if found.rotated:  # a rotated token used again: it leaked; end the whole grant
            self.server.owner.revoke_grant(found.grant_id)
            return None
        if not _resource_matches(self.request.payload.data.get("resource"), found.resource):
            raise InvalidGrantError("'resource' differs from the original grant")
        return found

    def authenticate_user(self, refresh_token: RefreshToken) -> str:
        return refresh_token.subject

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        refresh_token.rotated = True
        self.server.owner.store.save_refresh_token(refresh_token)

    def generate_token(self, user: Any = None, scope: Any = None, **kwargs: Any) -> dict[str, Any]:
        old: RefreshToken = self.request.refresh_token
        return _issue(self, subject=old.subject, scope=scope or old.scope, resource=old.resource, grant_id=old.grant_id)


class _Registration(ClientRegistrationEndpoint):  # type: ignore[misc]
    def authenticate_token(self, request: Any) -> bool:
        return True  # open registration (development server)

    def get_server_metadata(self) -> dict[str, Any]:
        return dict(self.server.owner.metadata)

    def generate_client_secret(self, request: Any) -> str | None:
        if request.payload.data.get("token_endpoint_auth_method", "client_secret_basic") == "none":
            return None
        return secrets.token_urlsafe(32)

    def save_client(
        self, client_info: dict[str, Any], client_metadata: dict[str, Any], request: Any
    ) -> RegisteredClient:
        redirect_uris = list(client_metadata.get("redirect_uris") or [])
        if not redirect_uris:
            raise InvalidRequestError("redirect_uris is required")
        client = RegisteredClient(
            client_id=client_info["client_id"],
            client_secret=client_info.get("client_secret"),
            redirect_uris=redirect_uris,
            token_endpoint_auth_method=client_metadata.get("token_endpoint_auth_method", "client_secret_basic"),
            grant_types=list(client_metadata.get("grant_types") or ["authorization_code"]),
            response_types=list(client_metadata.get("response_types") or ["code"]),
            scope=client_metadata.get("scope"),
            client_name=client_metadata.get("client_name"),
            metadata=dict(client_metadata),
        )
        self.server.owner.store.save_client(client)
        return client
