"""The authorization server's HTTP endpoints and its route list (the one place paths are written)."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import orjson
from authlib.oauth2.rfc6749 import (  # type: ignore[import-untyped]
    InvalidClientError,
    InvalidRequestError,
    JsonRequest,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.util import extract_basic_authorization  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import JoseError
from mcp.server.auth.provider import AccessToken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..verification import canonical_resource
from .consent import CORS, NO_STORE, ConsentNonces, consent_page, error_page, redirect_error
from .grants import AuthlibServer, OAuthRequest, PayloadOf
from .metadata_documents import (
    MetadataDocumentFetcher,
    UnusableDocument,
    client_from_document,
    is_metadata_document_url,
)
from .storage import RegisteredClient

if TYPE_CHECKING:
    from .app import EmbeddedAuthorizationServer

__all__ = ["Endpoints"]

WELL_KNOWN = "/.well-known/oauth-authorization-server"


class Endpoints:
    """The Starlette handlers of one :class:`EmbeddedAuthorizationServer`, and the state only they use:
    authlib's server core, the consent nonces and the metadata-document fetcher."""

    def __init__(self, server: EmbeddedAuthorizationServer, *, metadata_fetcher: MetadataDocumentFetcher) -> None:
        self.server = server
        self.metadata_fetcher = metadata_fetcher
        self.consents = ConsentNonces()
        self.authlib = AuthlibServer(server)

    def routes(self, base: str) -> list[Route]:
        """Every route, under the issuer's path `base` (RFC 8414 metadata also at the path-inserted form)."""
        paths = {WELL_KNOWN + base, base + WELL_KNOWN} if base else {WELL_KNOWN}
        routes = [Route(path, self.metadata, methods=["GET", "OPTIONS"]) for path in sorted(paths)]
        routes += [
            Route(f"{base}/jwks", self.jwks, methods=["GET"]),
            Route(f"{base}/authorize", self.authorize, methods=["GET", "POST"]),
            Route(f"{base}/token", self.token, methods=["POST"]),
            Route(f"{base}/introspect", self.introspect, methods=["POST"]),
        ]
        if self.server.allow_registration:
            routes.append(Route(f"{base}/register", self.register, methods=["POST"]))
        return routes

    async def metadata(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={**CORS, "Access-Control-Allow-Methods": "GET, OPTIONS"})
        return JSONResponse(self.server.metadata, headers={**CORS, "Cache-Control": "public, max-age=3600"})

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.server.jwks(), headers={**CORS, "Cache-Control": "public, max-age=300"})

    async def authorize(self, request: Request) -> Response:
        server = self.server
        oauth = await _oauth_request(request)
        unusable = await self._load_metadata_client(oauth.payload.client_id)
        if unusable is not None:
            return unusable
        try:
            grant = self.authlib.get_consent_grant(oauth)
        except OAuth2Error as error:
            redirect_uri = getattr(error, "redirect_uri", None)
            if redirect_uri and oauth.client is not None:  # the redirect URI is verified: tell the client there
                return redirect_error(redirect_uri, error, oauth.payload.state, issuer=server.issuer)
            return error_page(error)
        problem = self._resource_problem(oauth.payload.data.get("resource"))
        if problem is not None:
            return redirect_error(
                grant.redirect_uri,
                InvalidRequestError(problem),
                oauth.payload.state,
                issuer=server.issuer,
                error_code="invalid_target",
            )
        if request.method == "GET" and not server.auto_approve:
            client: RegisteredClient = grant.client
            return consent_page(
                client=client,
                scope=oauth.scope,
                fields={**oauth.args, "consent": self.consents.issue()},
                action=f"{server.issuer}/authorize",
                default_subject=server.default_subject,
            )
        if request.method == "POST" and not self.consents.take(oauth.form.get("consent", "")):
            # Only a form this server rendered may decide (no cross-site POST approves a client).
            return error_page(InvalidRequestError("The consent form expired or was not issued here"))
        if request.method == "POST" and oauth.form.get("decision") != "approve":
            user = None
        else:
            user = (oauth.form.get("username") or "").strip() or server.default_subject
        response = self.authlib.create_authorization_response(oauth, grant_user=user, grant=grant)
        assert isinstance(response, Response)
        location = response.headers.get("location")
        if location is not None:  # RFC 9207: say who answered
            separator = "&" if "?" in location else "?"
            response.headers["location"] = f"{location}{separator}{urlencode({'iss': server.issuer})}"
        return response

    def _resource_problem(self, resource: str | None) -> str | None:
        if resource is None:
            return None
        parts = urlsplit(resource)
        if not parts.scheme or not parts.netloc or parts.fragment:
            return "resource must be an absolute URI without a fragment"
        resources = self.server.resources
        if resources is not None and canonical_resource(resource) not in resources:
            return "unknown resource"
        return None

    async def token(self, request: Request) -> Response:
        oauth = await _oauth_request(request)
        unusable = await self._load_metadata_client(oauth.payload.client_id)
        if unusable is not None:
            return unusable
        response = self.authlib.create_token_response(oauth)
        assert isinstance(response, Response)
        return response

    async def _load_metadata_client(self, client_id: str | None) -> Response | None:
        """Make a client whose id is a metadata-document URL known, fetching its document if needed.

        Returns an error response when the document cannot be used; `None` otherwise (also when
        `client_id` is an ordinary registered id).
        """
        server = self.server
        if not server.client_id_metadata_documents or not client_id or not is_metadata_document_url(client_id):
            return None
        known = server.store.get_client(client_id)
        if known is not None and known.metadata.get("fetched_at", 0) + server.metadata_document_ttl > time.time():
            return None
        try:
            document = await self.metadata_fetcher.fetch(client_id)
            client = client_from_document(client_id, document)
        except UnusableDocument as exc:
            return error_page(InvalidClientError(description=f"Client metadata document: {exc}"))
        server.store.save_client(client)
        return None

    async def register(self, request: Request) -> Response:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return JSONResponse({"error": "invalid_client_metadata"}, status_code=400, headers=NO_STORE)
        json_request = JsonRequest(request.method, str(request.url), request.headers)
        json_request.payload = PayloadOf(data)
        response = self.authlib.create_endpoint_response("client_registration", json_request)
        assert isinstance(response, Response)
        return response

    async def introspect(self, request: Request) -> Response:
        oauth = await _oauth_request(request)
        if not self._introspector_authenticated(oauth):
            return JSONResponse(
                {"error": "invalid_client"}, status_code=401, headers={"WWW-Authenticate": 'Basic realm="introspect"'}
            )
        token = oauth.form.get("token", "")
        return JSONResponse(self._introspect(token), headers=NO_STORE)

    def _introspector_authenticated(self, oauth: OAuthRequest) -> bool:
        client_id, secret = extract_basic_authorization(oauth.headers)
        if not client_id:
            client_id, secret = oauth.form.get("client_id"), oauth.form.get("client_secret")
        expected = self.server.introspection_clients.get(client_id or "")
        return expected is not None and secret is not None and secrets.compare_digest(expected, secret)

    def _introspect(self, token: str) -> dict[str, Any]:
        access = self._decode(token)
        if access is None:
            return {"active": False}
        claims = dict(access.claims or {})
        store = self.server.store
        grant_id = store.grant_of_access_token(str(claims.get("jti", "")))
        if grant_id is not None and store.is_grant_revoked(grant_id):
            return {"active": False}
        return {"active": True, "token_type": "Bearer", **claims}

    def _decode(self, token: str) -> AccessToken | None:
        server = self.server
        try:
            decoded = jwt.decode(token, server.key, algorithms=[server.algorithm])
        except (JoseError, ValueError, TypeError):  # anything that is not our token is simply inactive
            return None
        claims = decoded.claims
        if claims.get("iss") != server.issuer or not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
            return None
        return AccessToken(token=token, client_id=str(claims.get("client_id", "")), scopes=[], claims=claims)


async def _oauth_request(request: Request) -> OAuthRequest:
    form: dict[str, str] = {}
    if request.method == "POST":
        data = await request.form()
        form = {k: v for k, v in data.items() if isinstance(v, str)}
    return OAuthRequest(request.method, str(request.url), request.headers, request.query_params, form)
