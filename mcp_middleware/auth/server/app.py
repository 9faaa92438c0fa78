"""`EmbeddedAuthorizationServer`: a small OAuth 2.1 authorization server on authlib, as an ASGI app."""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
import orjson
from authlib.oauth2 import AuthorizationServer as AuthlibAuthorizationServer  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import (  # type: ignore[import-untyped]
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    JsonPayload,
    JsonRequest,
    OAuth2Error,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.util import extract_basic_authorization  # type: ignore[import-untyped]
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import CodeChallenge  # type: ignore[import-untyped]
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from mcp.server.auth.provider import AccessToken
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..jwks import JwksTokenVerifier
from ..verification import canonical_resource
from .metadata_documents import (
    MetadataDocumentFetcher,
    Resolver,
    UnusableDocument,
    client_from_document,
    is_metadata_document_url,
)
from .revocation import GrantRevocation, RevocationCheckingVerifier
from .storage import (
    AuthorizationCode,
    AuthorizationStore,
    MemoryAuthorizationStore,
    RefreshToken,
    RegisteredClient,
)

__all__ = ["EmbeddedAuthorizationServer"]

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CORS = {"Access-Control-Allow-Origin": "*"}


class _Request(OAuth2Request):  # type: ignore[misc]
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


class _JsonPayload(JsonPayload):  # type: ignore[misc]
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
        self._metadata_fetcher = MetadataDocumentFetcher(
            allow_private_hosts=allow_private_metadata_hosts,
            http_client=http_client,
            resolver=metadata_document_resolver,
        )
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
        self._consents = _ConsentNonces()
        self._authlib = _Authlib(self)
        self.metadata = self._build_metadata()
        self.app = Starlette(routes=self._routes())

    # --- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @property
    def paths(self) -> tuple[str, ...]:
        """The exact paths this server answers (a host serving it beside other apps routes these here)."""
        return tuple(route.path for route in self.app.routes if isinstance(route, Route))

    def _url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    def _routes(self) -> list[Route]:
        base = self._base_path
        well_known = "/.well-known/oauth-authorization-server"
        paths = {well_known + base, base + well_known} if base else {well_known}
        routes = [Route(path, self._metadata_endpoint, methods=["GET", "OPTIONS"]) for path in sorted(paths)]
        routes += [
            Route(f"{base}/jwks", self._jwks_endpoint, methods=["GET"]),
            Route(f"{base}/authorize", self._authorize_endpoint, methods=["GET", "POST"]),
            Route(f"{base}/token", self._token_endpoint, methods=["POST"]),
            Route(f"{base}/introspect", self._introspect_endpoint, methods=["POST"]),
        ]
        if self.allow_registration:
            routes.append(Route(f"{base}/register", self._register_endpoint, methods=["POST"]))
        return routes

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

    # --- endpoints -------------------------------------------------------------------------------

    async def _metadata_endpoint(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={**_CORS, "Access-Control-Allow-Methods": "GET, OPTIONS"})
        return JSONResponse(self.metadata, headers={**_CORS, "Cache-Control": "public, max-age=3600"})

    async def _jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.jwks(), headers={**_CORS, "Cache-Control": "public, max-age=300"})

    async def _oauth_request(self, request: Request) -> _Request:
        form: dict[str, str] = {}
        if request.method == "POST":
            data = await request.form()
            form = {k: v for k, v in data.items() if isinstance(v, str)}
        return _Request(request.method, str(request.url), request.headers, request.query_params, form)

    async def _authorize_endpoint(self, request: Request) -> Response:
        oauth = await self._oauth_request(request)
        unusable = await self._load_metadata_client(oauth.payload.client_id)
        if unusable is not None:
            return unusable
        try:
            grant = self._authlib.get_consent_grant(oauth)
        except OAuth2Error as error:
            redirect_uri = getattr(error, "redirect_uri", None)
            if redirect_uri and oauth.client is not None:  # the redirect URI is verified: tell the client there
                return self._redirect_error(redirect_uri, error, oauth.payload.state)
            return _error_page(error)
        resource = oauth.payload.data.get("resource")
        problem = self._resource_problem(resource)
        if problem is not None:
            return self._redirect_error(
                grant.redirect_uri, InvalidRequestError(problem), oauth.payload.state, error_code="invalid_target"
            )
        if request.method == "GET" and not self.auto_approve:
            return self._consent_page(oauth, grant)
        if request.method == "POST" and not self._consents.take(oauth.form.get("consent", "")):
            # Only a form this server rendered may decide (no cross-site POST approves a client).
            return _error_page(InvalidRequestError("The consent form expired or was not issued here"))
        if request.method == "POST" and oauth.form.get("decision") != "approve":
            user = None
        else:
            user = (oauth.form.get("username") or "").strip() or self.default_subject
        response = self._authlib.create_authorization_response(oauth, grant_user=user, grant=grant)
        assert isinstance(response, Response)
        location = response.headers.get("location")
        if location is not None:  # RFC 9207: say who answered
            separator = "&" if "?" in location else "?"
            response.headers["location"] = f"{location}{separator}{urlencode({'iss': self.issuer})}"
        return response

    def _resource_problem(self, resource: str | None) -> str | None:
        if resource is None:
            return None
        parts = urlsplit(resource)
        if not parts.scheme or not parts.netloc or parts.fragment:
            return "resource must be an absolute URI without a fragment"
        if self.resources is not None and canonical_resource(resource) not in self.resources:
            return "unknown resource"
        return None

    def _redirect_error(
        self, redirect_uri: str, error: OAuth2Error, state: str | None, *, error_code: str | None = None
    ) -> Response:
        params = {"error": error_code or error.error, "iss": self.issuer}
        if error.description:
            params["error_description"] = error.description
        if state:
            params["state"] = state
        separator = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(f"{redirect_uri}{separator}{urlencode(params)}", status_code=302)

    def _consent_page(self, oauth: _Request, grant: Any) -> Response:
        client: RegisteredClient = grant.client
        fields = {**oauth.args, "consent": self._consents.issue()}
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
        )
        scopes = html.escape(oauth.scope or "(none)")
        name = html.escape(client.client_name or client.client_id)
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Authorize {name}</title></head>
<body><h1>Authorize {name}</h1><p>Requested scopes: <code>{scopes}</code></p>
<form method="post" action="{html.escape(self._url("/authorize"))}">{hidden}
<label>User name <input name="username" value="{html.escape(self.default_subject)}"></label>
<button name="decision" value="approve">Approve</button> <button name="decision" value="deny">Deny</button>
</form></body></html>"""
        return HTMLResponse(page, headers={**_NO_STORE, "X-Frame-Options": "DENY"})

    async def _token_endpoint(self, request: Request) -> Response:
        oauth = await self._oauth_request(request)
        unusable = await self._load_metadata_client(oauth.payload.client_id)
        if unusable is not None:
            return unusable
        response = self._authlib.create_token_response(oauth)
        assert isinstance(response, Response)
        return response

    # --- client ID metadata documents ---------------------------------------------------------

    async def _load_metadata_client(self, client_id: str | None) -> Response | None:
        """Make a client whose id is a metadata-document URL known, fetching its document if needed.

        Returns an error response when the document cannot be used; `None` otherwise (also when
        `client_id` is an ordinary registered id).
        """
        if not self.client_id_metadata_documents or not client_id or not is_metadata_document_url(client_id):
            return None
        known = self.store.get_client(client_id)
        if known is not None and known.metadata.get("fetched_at", 0) + self.metadata_document_ttl > time.time():
            return None
        try:
            document = await self._metadata_fetcher.fetch(client_id)
            client = client_from_document(client_id, document)
        except UnusableDocument as exc:
            return _error_page(InvalidClientError(description=f"Client metadata document: {exc}"))
        self.store.save_client(client)
        return None

    async def _register_endpoint(self, request: Request) -> Response:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return JSONResponse({"error": "invalid_client_metadata"}, status_code=400, headers=_NO_STORE)
        json_request = JsonRequest(request.method, str(request.url), request.headers)
        json_request.payload = _JsonPayload(data)
        response = self._authlib.create_endpoint_response("client_registration", json_request)
        assert isinstance(response, Response)
        return response

    async def _introspect_endpoint(self, request: Request) -> Response:
        oauth = await self._oauth_request(request)
        if not self._introspector_authenticated(oauth):
            return JSONResponse(
                {"error": "invalid_client"}, status_code=401, headers={"WWW-Authenticate": 'Basic realm="introspect"'}
            )
        token = oauth.form.get("token", "")
        return JSONResponse(self._introspect(token), headers=_NO_STORE)

    def _introspector_authenticated(self, oauth: _Request) -> bool:
        client_id, secret = extract_basic_authorization(oauth.headers)
        if not client_id:
            client_id, secret = oauth.form.get("client_id"), oauth.form.get("client_secret")
        expected = self.introspection_clients.get(client_id or "")
        return expected is not None and secret is not None and secrets.compare_digest(expected, secret)

    def _introspect(self, token: str) -> dict[str, Any]:
        access = self._decode(token)
        if access is None:
            return {"active": False}
        claims = dict(access.claims or {})
        grant_id = self.store.grant_of_access_token(str(claims.get("jti", "")))
        if grant_id is not None and self.store.is_grant_revoked(grant_id):
            return {"active": False}
        return {"active": True, "token_type": "Bearer", **claims}

    def _decode(self, token: str) -> AccessToken | None:
        try:
            decoded = jwt.decode(token, self.key, algorithms=[self.algorithm])
        except (JoseError, ValueError, TypeError):  # anything that is not our token is simply inactive
            return None
        claims = decoded.claims
        if claims.get("iss") != self.issuer or not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
            return None
        return AccessToken(token=token, client_id=str(claims.get("client_id", "")), scopes=[], claims=claims)


class _Authlib(AuthlibAuthorizationServer):  # type: ignore[misc]
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
        return JSONResponse(content, status_code=status, headers={**headers, **_NO_STORE})

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


class _ConsentNonces:
    """Single-use nonces for rendered consent forms, valid ten minutes, at most 10 000 outstanding."""

    def __init__(self, ttl: float = 600.0, limit: int = 10_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._issued: dict[str, float] = {}

    def issue(self) -> str:
        nonce = secrets.token_urlsafe(24)
        self._issued[nonce] = time.monotonic() + self.ttl
        while len(self._issued) > self.limit:
            del self._issued[next(iter(self._issued))]
        return nonce

    def take(self, nonce: str) -> bool:
        deadline = self._issued.pop(nonce, None)
        return deadline is not None and deadline > time.monotonic()


def _error_page(error: OAuth2Error) -> Response:
    """An authorization error that must not be redirected (unknown client, unregistered redirect URI)."""
    body = {"error": error.error}
    if error.description:
        body["error_description"] = error.description
    return JSONResponse(body, status_code=400, headers=_NO_STORE)
