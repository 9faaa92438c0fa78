"""A local RFC 8693 token endpoint (an authlib `AuthorizationServer`) and a backend that accepts only its tokens.

authlib 1.9 ships no token-exchange grant (`authlib.oauth2.rfc8693` is empty), so
:class:`TokenExchangeGrant` is one on authlib's grant base; client-credentials is authlib's own
grant. Both issue opaque tokens for the requested `audience` that :class:`IssuingServer` remembers,
so :class:`GuardedBackend` can check audience and expiry and record who presented what.

    issuer = IssuingServer(callers={"alice-token": "alice"}, audiences={"https://backend"})
    served = serve(issuer.app)                 # POST {served.base}/token
    backend = GuardedBackend(build_server().streamable_http_app(), issuer, audience="https://backend")
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidGrantError, InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6749.grants import BaseGrant, ClientCredentialsGrant, TokenEndpointMixin
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.auth.server.grants import OAuthRequest

__all__ = ["GATEWAY_CLIENT", "GATEWAY_SECRET", "GuardedBackend", "Issued", "IssuingServer", "TokenExchangeGrant"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
GATEWAY_CLIENT = "gateway"
GATEWAY_SECRET = "gateway-secret"


@dataclass
class Issued:
    subject: str | None
    audience: str | None
    grant: str
    expires_at: float
    scope: str | None = None


@dataclass
class _Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    secret: str

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (TOKEN_EXCHANGE, "client_credentials")

    def get_allowed_scope(self, scope: str | None) -> str | None:
        return scope


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    error = "invalid_target"  # RFC 8693 §2.2.2


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693 §2.1: a known `subject_token` of type access_token becomes a token for `audience`."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012

    def validate_token_request(self) -> None:
        self.request.client = self.authenticate_token_endpoint_client()
        data = self.request.payload.data
        if data.get("subject_token_type") != ACCESS_TOKEN:
            raise InvalidRequestError("subject_token_type must be an access token")
        owner: IssuingServer = self.server.owner
        subject = owner.callers.get(data.get("subject_token", ""))
        if subject is None or owner.refuse_subjects:
            raise InvalidGrantError("the subject token is not valid")
        if data.get("audience") not in owner.audiences:
            raise InvalidTargetError("unknown audience")
        self.request.user = subject

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        data = self.request.payload.data
        token = self.server.owner.issue(self.request.user, data.get("audience"), "exchange", data.get("scope"))
        return 200, {**token, "issued_token_type": ACCESS_TOKEN}, [("Cache-Control", "no-store")]


class _ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        data = self.request.payload.data
        token = self.server.owner.issue(None, data.get("audience"), "client_credentials", data.get("scope"))
        return 200, token, [("Cache-Control", "no-store")]


class _Authlib(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, owner: IssuingServer) -> None:
        super().__init__()
        self.owner = owner
        self.register_grant(TokenExchangeGrant)
        self.register_grant(_ClientCredentials)

    def query_client(self, client_id: str) -> _Client | None:
        return _Client(GATEWAY_CLIENT, GATEWAY_SECRET) if client_id == GATEWAY_CLIENT else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        return None

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        return JSONResponse(body, status_code=status, headers={k: v for k, v in headers if k != "Content-Type"})

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class IssuingServer:
    """The identity provider: knows the callers' tokens, exchanges them, counts every token request."""

    callers: Mapping[str, str]
    """Caller token → subject (the tokens the gateway's own auth accepts)."""
    audiences: set[str]
    expires_in: int = 3600
    refuse_subjects: bool = False
    issued: dict[str, Issued] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    """Every token request's form (secrets and subject tokens included: the test reads them)."""

    def __post_init__(self) -> None:
        self.authlib = _Authlib(self)
        self.app = Starlette(routes=[Route("/token", self._token, methods=["POST"])])

    def exchanges(self, subject: str | None = None) -> int:
        """How many token-exchange requests were made (for `subject`'s token, if given)."""
        return sum(
            1
            for form in self.requests
            if form.get("grant_type") == TOKEN_EXCHANGE
            and (subject is None or self.callers.get(form.get("subject_token", "")) == subject)
        )

    def issue(self, subject: str | None, audience: str | None, grant: str, scope: str | None) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        self.issued[token] = Issued(subject, audience, grant, time.time() + self.expires_in, scope)
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}

    async def _token(self, request: Request) -> Response:
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        self.requests.append(form)
        oauth = OAuthRequest(request.method, str(request.url), request.headers, request.query_params, form)
        response = self.authlib.create_token_response(oauth)
        assert isinstance(response, Response)
        return response


@dataclass
class Seen:
    method: str
    """The JSON-RPC method (or the HTTP method for GET/DELETE)."""
    authorization: str | None
    issued: Issued | None


class GuardedBackend:
    """An MCP app that answers 401 unless the bearer token was issued by `issuer` for `audience` and is
    unexpired; it records every request's method and `Authorization` (`seen`)."""

    def __init__(self, app: ASGIApp, issuer: IssuingServer, *, audience: str) -> None:
        self.app = app
        self.issuer = issuer
        self.audience = audience
        self.seen: list[Seen] = []
        self.revoked: set[str] = set()
        self.refuse_all = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        method = scope["method"]
        if body:
            try:
                method = str(orjson.loads(body).get("method") or "answer")
            except (orjson.JSONDecodeError, AttributeError):
                method = "unparsable"
        raw = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1") or None
        token = raw[7:] if raw is not None and raw.startswith("Bearer ") else None
        issued = self.issuer.issued.get(token) if token is not None and token not in self.revoked else None
        self.seen.append(Seen(method, raw, issued))
        if self.refuse_all or issued is None or issued.audience != self.audience or issued.expires_at < time.time():
            answer = orjson.dumps({"error": "invalid_token"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": answer})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def calls(self, tool_method: str = "tools/call") -> list[Seen]:
        return [seen for seen in self.seen if seen.method == tool_method]
