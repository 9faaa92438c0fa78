"""Each backend its own credentials: RFC 8693 token exchange of the caller's token, per backend.

The caller's validated bearer token (the principal's) is the `subject_token` of a token-exchange
request to the configured token endpoint; the issued token is what the backend sees as
`Authorization: Bearer …`. The caller's own token never reaches a backend.

The request is built with authlib's framework-neutral client pieces
(`authlib.oauth2.rfc6749.parameters.prepare_token_request`, `authlib.oauth2.auth.ClientAuth`,
`OAuth2Token`) and sent with `httpx2`: authlib's ready-made async client is built on `httpx`,
which this project does not use (and which is not installed beside `httpx2`).

Issued tokens are cached per (backend, caller's token) under a SHA-256 digest, never the raw
token, until shortly before `expires_in` and never beyond the caller's own token; N concurrent
calls of one caller cause one exchange (single flight). The gateway's own session to the backend
(the aggregate's lists, health checks) has no caller: it uses an OAuth client-credentials token
of the same client, audience and scope (:meth:`BackendCredentials.service_auth`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx2
import orjson
from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import OAuth2Token  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.parameters import prepare_token_request  # type: ignore[import-untyped]
from starlette.types import Scope, Send

from mcp_middleware.core import Component, ErrorCode, Outcome, RequestId, record_decision, send_error
from mcp_middleware.core.errors import McpMiddlewareError
from mcp_middleware.core.principal import Principal

from .safety import MAY_HAVE_RUN
from .tls import client_tls_context, tls_refusal

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "BackendCredentials",
    "ExchangeError",
    "TokenExchange",
    "send_exchange_error",
]

logger = logging.getLogger("mcp_middleware.router.credentials")

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_MAX_ANSWER = 64 * 1024
"""A token response larger than this is not one (and is not read further)."""
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]{1,8192}=*$")
"""RFC 6750 `b64token`, bounded: what may follow `Bearer ` in the backend's `Authorization`."""
_HUNG_UP = (httpx2.RemoteProtocolError, httpx2.ReadError)
"""An HTTPS token endpoint that closed the connection before any answer."""
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")
_REAUTHENTICATE = frozenset({"invalid_grant"})
"""The issuer refused the caller's token itself: a fresh token from the caller may succeed (401)."""
_GATEWAY_FAULT = frozenset({"invalid_client", "unsupported_grant_type", "invalid_request"})
"""The gateway's own client or request is at fault, not the caller (502)."""


class ExchangeError(McpMiddlewareError):
    """Why no backend token could be had: `status` is the HTTP status the caller gets, `reason` a short
    sanitized text (never the token endpoint's body), `error` the endpoint's OAuth error code, if any."""

    def __init__(self, status: int, reason: str, *, error: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.error = error


@dataclass(frozen=True)
class TokenExchange:
    """Where and as whom to exchange tokens for one backend.

    >>> TokenExchange("https://idp.example/token", audience="https://saas.example", client_id="gw")
    TokenExchange(token_endpoint='https://idp.example/token', audience='https://saas.example', ...)
    """

    token_endpoint: str
    audience: str | None = None
    """The logical name of the backend the token is for (RFC 8693 `audience`)."""
    resource: str | None = None
    """Or its URI (RFC 8693 / RFC 8707 `resource`: what MCP servers check); either or both."""
    scope: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    auth_method: Literal["client_secret_basic", "client_secret_post", "none"] = "client_secret_basic"
    timeout: float = 10.0
    """Seconds one token request may take (connect and answer)."""
    refresh_before: float = 30.0
    """Seconds before `expires_in` runs out that a cached token is exchanged anew (at most half its life)."""
    default_ttl: float = 60.0
    """How long a token issued without `expires_in` is kept."""
    max_entries: int = 10_000
    """Cached tokens (one per caller token) kept at most; the least recently used go first."""
    ca_bundle: str | None = None
    """PEM file of the CAs that sign the token endpoint's certificate (an internal IdP): else the system's."""
    client_cert: str | None = None
    """A client certificate (PEM) for a token endpoint that requires one (mTLS), with `client_key`."""
    client_key: str | None = None

    def __repr__(self) -> str:  # the doctest above: the secret is never shown
        return f"TokenExchange(token_endpoint={self.token_endpoint!r}, audience={self.audience!r}, ...)"


@dataclass
class _Issued:
    token: str
    expires: float  # time.monotonic() after which it is not used


@dataclass
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    token: str | None = None
    error: ExchangeError | None = None


class BackendCredentials:
    """Backend tokens for callers of one backend, by token exchange; cached and single-flight.

    >>> credentials = BackendCredentials(TokenExchange("https://idp.example/token", audience="api"), backend="api")
    >>> # token = await credentials.token_for(principal)  # principal.token is the caller's validated token
    """

    def __init__(self, exchange: TokenExchange, *, backend: str) -> None:
        self.exchange = exchange
        self.backend = backend
        self._auth = ClientAuth(exchange.client_id, exchange.client_secret or "", exchange.auth_method)
        self._cache = _ExpiringLru(exchange.max_entries)
        self._flights: dict[str, _Flight] = {}
        self._http: httpx2.AsyncClient | None = None
        self._verify: ssl.SSLContext | bool = True
        if exchange.ca_bundle is not None or exchange.client_cert is not None:  # loads files: here, once
            self._verify = client_tls_context(
                ca_bundle=exchange.ca_bundle, client_cert=exchange.client_cert, client_key=exchange.client_key
            )
        self.exchanges = 0
        """Token requests sent (exchanges and client-credentials grants): what the cache saves."""

    def key(self, principal: Principal) -> str | None:
        """The cache key of a caller: a digest of this backend and the caller's token (None: no token)."""
        if not principal.token:
            return None
        text = f"{self.backend}\0{principal.issuer or ''}\0{principal.subject or ''}\0{principal.token}"
        return hashlib.sha256(text.encode()).hexdigest()

    async def token_for(self, principal: Principal) -> tuple[str, bool]:
        """The backend token for this caller, and whether it came from the cache.

        Raises :class:`ExchangeError` (401 without a caller token to exchange)."""
        key = self.key(principal)
        if key is None or principal.token is None:
            raise ExchangeError(401, "this backend needs the caller's bearer token to exchange")
        subject = principal.token
        return await self._single_flight(key, lambda: self._exchange(subject), cap=principal.expires_at)

    def forget(self, principal: Principal) -> None:
        """Drop this caller's cached token (the backend refused it: the next call exchanges anew)."""
        key = self.key(principal)
        if key is not None:
            self._cache.pop(key)

    async def service_token(self, *, fresh: bool = False) -> str:
        """The gateway's own token for this backend (client-credentials grant), for its shared session."""
        if fresh:
            self._cache.pop("service")
        token, _ = await self._single_flight("service", self._client_credentials, cap=None)
        return token

    def service_auth(self) -> httpx2.Auth:
        """An `httpx2` auth for the gateway's own session: its service token, renewed once on a 401."""
        return _ServiceAuth(self)

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def _single_flight(
        self, key: str, fetch: Callable[[], Awaitable[tuple[str, float]]], *, cap: int | None
    ) -> tuple[str, bool]:
        while True:
            issued = self._cache.get(key)
            if issued is not None:
                return issued.token, True
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.token is not None:
                return flight.token, False
            # the leader was cancelled (its caller left): one of the waiters becomes the leader
        flight = self._flights[key] = _Flight()
        try:
            token, lifetime = await fetch()
            now_wall, now = time.time(), time.monotonic()
            if cap is not None:  # never beyond the caller's own token
                lifetime = min(lifetime, cap - now_wall)
            if lifetime > 0:
                self._cache.put(key, _Issued(token, now + lifetime))
            flight.token = token
            return token, False
        except ExchangeError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    async def _exchange(self, subject_token: str) -> tuple[str, float]:
        exchange = self.exchange
        body = prepare_token_request(
            TOKEN_EXCHANGE_GRANT,
            subject_token=subject_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
            requested_token_type=ACCESS_TOKEN_TYPE,
            audience=exchange.audience,
            resource=exchange.resource,
            scope=exchange.scope,
        )
        return await self._request(body)

    async def _client_credentials(self) -> tuple[str, float]:
        exchange = self.exchange
        return await self._request(
            prepare_token_request(
                "client_credentials", audience=exchange.audience, resource=exchange.resource, scope=exchange.scope
            )
        )

    async def _request(self, body: str) -> tuple[str, float]:
        """POST a token request (client authentication by authlib); the token and how long to keep it."""
        exchange = self.exchange
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        uri, headers, body = self._auth.prepare("POST", exchange.token_endpoint, headers, body)
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=exchange.timeout, follow_redirects=False, verify=self._verify)
        self.exchanges += 1
        try:
            with anyio.fail_after(exchange.timeout):
                async with self._http.stream("POST", uri, headers=headers, content=body) as response:
                    status, raw = response.status_code, await _bounded(response)
        except TimeoutError as exc:
            raise ExchangeError(504, "the token endpoint did not answer in time") from exc
        except httpx2.TimeoutException as exc:
            raise ExchangeError(504, "the token endpoint did not answer in time") from exc
        except httpx2.HTTPError as exc:
            refused = tls_refusal(exc, settings="auth.exchange")
            if refused is None and uri.startswith("https://") and isinstance(exc, _HUNG_UP):
                # a refused client certificate (TLS 1.3 checks it late) shows as a hang-up without the TLS error
                refused = "tls: the token endpoint hung up without answering (if it requires a client certificate:"
                refused += " set auth.exchange.client_cert and auth.exchange.client_key)"
            if refused is not None:  # the operator's to fix (ca_bundle, client_cert): the log says how, the caller what
                logger.warning("backend %r: token endpoint %s: %s", self.backend, exchange.token_endpoint, refused)
                raise ExchangeError(502, "the token endpoint is unreachable over TLS") from exc
            raise ExchangeError(502, f"the token endpoint is unreachable ({type(exc).__name__})") from exc
        answer = _json_object(raw)
        if status != 200:
            return self._refused(status, answer)
        if answer is None or not isinstance(answer.get("access_token"), str) or not answer["access_token"]:
            raise ExchangeError(502, "the token endpoint's answer has no access_token")
        if not _B64TOKEN.match(answer["access_token"]):  # it goes into a header line: nothing else may
            raise ExchangeError(502, "the token endpoint issued a token that cannot be sent as a bearer token")
        if str(answer.get("token_type", "")).lower() not in ("bearer", "n_a"):
            raise ExchangeError(502, "the token endpoint issued a token that is not a bearer token")
        issued = OAuth2Token.from_dict(answer)
        expires_in = issued.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            lifetime = float(expires_in) - min(exchange.refresh_before, float(expires_in) / 2)
        else:
            lifetime = exchange.default_ttl
        return str(issued["access_token"]), lifetime

    def _refused(self, status: int, answer: dict[str, Any] | None) -> tuple[str, float]:
        error = answer.get("error") if answer is not None else None
        code = error if isinstance(error, str) and _ERROR_CODE.match(error) else None
        said = f" ({code})" if code else ""
        if code in _REAUTHENTICATE:
            raise ExchangeError(401, f"the token endpoint refused the caller's token{said}", error=code)
        if status >= 500 or status == 401 or code in _GATEWAY_FAULT or status not in (400, 403):
            raise ExchangeError(502, f"the token endpoint answered HTTP {status}{said}", error=code)
        raise ExchangeError(403, f"the token endpoint refused a token for this backend{said}", error=code)


async def send_exchange_error(
    scope: Scope, send: Send, exc: ExchangeError, *, backend: str, name: str, request_id: RequestId | None
) -> None:
    """The caller's answer when no backend token could be had: 401/403 when the caller may not have one
    (a decision `deny`), 502/504 when the exchange failed (`failure`); never sent to the backend
    (`mayHaveRun: false`). `backend` is what the decision and the error data name, `name` the message."""
    reason = exc.error or exc.reason
    outcome = Outcome.DENY if exc.status in (401, 403) else Outcome.FAILURE
    record_decision(scope, Component.CREDENTIALS, outcome, backend=backend, status=exc.status, reason=reason)
    code = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN, 504: ErrorCode.TIMEOUT}.get(
        exc.status, ErrorCode.BAD_GATEWAY
    )
    headers = [("WWW-Authenticate", 'Bearer error="invalid_token"')] if exc.status == 401 else []
    data: dict[str, object] = {"backend": backend, MAY_HAVE_RUN: False}
    if exc.error is not None:
        data["error"] = exc.error
    await send_error(
        send,
        status=exc.status,
        code=code,
        message=f"No credentials for backend {name}: {exc.reason}",
        request_id=request_id,
        data=data,
        headers=headers,
    )


class _ExpiringLru:
    """Issued tokens by key: bounded (least recently used out first), an expired one is never returned.

    (cachetools' `TLRUCache` does this too, at ten times the cost of a hit: a heap kept in order on every read.)"""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, _Issued] = OrderedDict()

    def get(self, key: str) -> _Issued | None:
        issued = self._items.get(key)
        if issued is None:
            return None
        if issued.expires <= time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return issued

    def put(self, key: str, issued: _Issued) -> None:
        self._items[key] = issued
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class _ServiceAuth(httpx2.Auth):
    def __init__(self, credentials: BackendCredentials) -> None:
        self.credentials = credentials

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        request.headers["Authorization"] = f"Bearer {await self.credentials.service_token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self.credentials.service_token(fresh=True)}"
            yield request


async def _bounded(response: httpx2.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > _MAX_ANSWER:
            return b""
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
