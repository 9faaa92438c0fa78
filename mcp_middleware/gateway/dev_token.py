"""`mcp-gateway token`: an access token from a running dev-mode gateway, for curl and the MCP Inspector.

It logs in exactly as a person does in a browser: it reads the embedded authorization server's
RFC 8414 metadata, registers a public client, opens `/authorize` with PKCE S256 and the RFC 8707
`resource`, approves the login page as the subject, and exchanges the code at `/token`. So it can
get nothing that a visitor of that login page could not: no signing key leaves the gateway, no
key file sits on disk, and the gateway has no endpoint that exists only for this command. The
token is an ordinary one of the dev server (its lifetime, its audience binding, its revocation).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import orjson

from mcp_middleware.core.errors import McpMiddlewareError

from .cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .config import GatewayConfig

__all__ = ["DevToken", "TokenError", "mint_dev_token", "token_command"]

REDIRECT_URI = "http://127.0.0.1:1/callback"
"""Registered and sent, never contacted: the redirect is read from the `Location` header, not followed."""

_METADATA = "/.well-known/oauth-authorization-server"


class TokenError(McpMiddlewareError):
    """No token: the message says why, in one line."""


@dataclass(frozen=True)
class DevToken:
    access_token: str
    subject: str
    scope: str
    audience: str
    expires_in: int


def mint_dev_token(
    base_url: str,
    *,
    resource: str,
    subject: str | None = None,
    scopes: Sequence[str] = (),
    timeout: float = 30.0,
) -> DevToken:
    """Log in to the dev authorization server at `base_url` and return the access token for `resource`.

    `subject` is the user name typed on the login page (default: the server's default user);
    `scopes` empty asks for every scope the server issues by default. Raises :class:`TokenError`.
    """
    base = base_url.rstrip("/")
    with httpx2.Client(timeout=timeout, follow_redirects=False) as http:
        try:
            return _LoginFlow(http, base, resource, subject, scopes).run()
        except httpx2.TransportError as exc:
            raise TokenError(
                f"cannot reach the gateway at {base}: {exc or type(exc).__name__} "
                "(is it running? `mcp-gateway serve` or `make run`)"
            ) from None


def token_command(config: GatewayConfig, args: argparse.Namespace, *, port: int | None) -> int:
    """`mcp-gateway token`: the token on stdout (what it is on stderr), so `TOKEN=$(mcp-gateway token …)` works.

    `port` is `--port` or `$PORT` (None: the config's). Exit codes as the CLI's: 0, 1 (no token), 2 (usage).
    """
    from .app import _base_url

    if config.auth.mode != "dev":
        print(
            f"{args.config}: [auth] mode is {config.auth.mode!r}: `mcp-gateway token` logs in to the embedded "
            'development authorization server ([auth] mode = "dev") only; get a token from your identity provider',
            file=sys.stderr,
        )
        return EXIT_USAGE
    base = (
        args.url or _base_url(config.gateway, config.gateway.host, config.gateway.port if port is None else port)
    ).rstrip("/")
    resource = _token_resource(config, base, args.resource)
    if resource is None:
        return EXIT_USAGE
    scopes = [scope for given in args.scope for scope in given.split()]
    subject = None if args.subject is None else args.subject.strip()  # the login page strips it too
    if subject == "":
        print("--subject must name a user", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = mint_dev_token(base, resource=resource, subject=subject, scopes=scopes)
    except TokenError as exc:
        print(f"no token: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(token.access_token, flush=True)
    print(
        f"token for {token.subject} (scope: {token.scope or 'none'}) at {token.audience}, "
        f"valid {token.expires_in} s; send it as 'Authorization: Bearer <token>'",
        file=sys.stderr,
    )
    return EXIT_OK


def _token_resource(config: GatewayConfig, base: str, given: str | None) -> str | None:
    """The resource URL (RFC 8707) the token is bound to; `None` after printing why there is none."""
    prefix = config.gateway.prefix
    if given is not None and "://" in given:
        return given
    if given is None:
        if config.aggregate.enabled:
            return f"{base}{prefix}"
        print("the aggregate is disabled: name a server with --resource NAME", file=sys.stderr)
        return None
    mounted = [server.name for server in config.servers if server.mount]
    if given not in mounted:
        print(
            f"--resource {given!r} is neither a URL nor a mounted server; servers: {', '.join(mounted) or '(none)'}",
            file=sys.stderr,
        )
        return None
    return f"{base}{prefix}/{given}"


class _LoginFlow:
    def __init__(
        self, http: httpx2.Client, base: str, resource: str, subject: str | None, scopes: Sequence[str]
    ) -> None:
        self.http = http
        self.base = base
        self.resource = resource
        self.subject = subject
        self.scopes = list(scopes)

    def run(self) -> DevToken:
        metadata = self._metadata()
        client_id = self._register(metadata)
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        location = self._authorize(metadata, client_id, verifier, state)
        code = self._code(location, state)
        answer = self._exchange(metadata, client_id, code, verifier)
        token = answer.get("access_token")
        if not isinstance(token, str):
            raise TokenError(f"the token endpoint answered without an access token: {_short(answer)}")
        claims = _claims(token)
        granted = str(claims.get("sub", ""))
        if self.subject is not None and granted != self.subject:  # `auto_approve`: the server picks the user
            raise TokenError(
                f"the gateway approves every login as {granted!r} ([auth] auto_approve = true), not as "
                f"{self.subject!r}: leave --subject out, or set auto_approve = false"
            )
        return DevToken(
            access_token=token,
            subject=granted,
            scope=str(answer.get("scope", claims.get("scope", ""))),
            audience=str(claims.get("aud", self.resource)),
            expires_in=int(answer.get("expires_in", 0)),
        )

    def _metadata(self) -> dict[str, Any]:
        response = self.http.get(f"{self.base}{_METADATA}")
        metadata = _json(response)
        if response.status_code != 200 or not isinstance(metadata.get("token_endpoint"), str):
            raise TokenError(
                f"{self.base} runs no development authorization server ({_METADATA} answered "
                f'{response.status_code}): `mcp-gateway token` needs a gateway with [auth] mode = "dev"'
            )
        issuer = str(metadata.get("issuer", "")).rstrip("/")
        if issuer != self.base:  # RFC 8414 §3.3: the issuer is the URL the metadata was read from
            raise TokenError(f"the gateway at {self.base} says its issuer is {issuer!r}: use --url {issuer}")
        for key in ("authorization_endpoint", "token_endpoint", "registration_endpoint"):
            if not _same_origin(str(metadata.get(key, "")), self.base):
                raise TokenError(f"the metadata's {key} is not on {self.base}: {metadata.get(key)!r}")
        offered = metadata.get("scopes_supported")
        unknown = [scope for scope in self.scopes if isinstance(offered, list) and scope not in offered]
        if unknown:
            raise TokenError(
                f"scope {' '.join(unknown)!r} is not offered by this gateway; it offers: "
                f"{' '.join(offered or []) or '(none)'}"
            )
        return metadata

    def _register(self, metadata: Mapping[str, Any]) -> str:
        client = {
            "client_name": "mcp-gateway token",
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
        response = self.http.post(str(metadata["registration_endpoint"]), json=client)
        answer = _json(response)
        if response.status_code not in (200, 201) or not isinstance(answer.get("client_id"), str):
            raise TokenError(f"client registration failed ({response.status_code}): {_short(answer)}")
        return str(answer["client_id"])

    def _authorize(self, metadata: Mapping[str, Any], client_id: str, verifier: str, state: str) -> str:
        """The `Location` the server redirects to after the login page was approved (or skipped)."""
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": self.resource,
        }
        if self.scopes:
            params["scope"] = " ".join(self.scopes)
        page = self.http.get(str(metadata["authorization_endpoint"]), params=params)
        if page.status_code == 200:  # the login page: fill in the user name, press "Approve"
            form = _LoginForm.read(page.text)
            if form.action is None or not _same_origin(form.action, self.base):
                raise TokenError(f"the login page of {self.base} has no form this command can fill in")
            fields = {**form.hidden, "decision": "approve"}
            if self.subject is not None:
                fields["username"] = self.subject
            page = self.http.post(form.action, data=fields)
        location = page.headers.get("location")
        if page.status_code not in (302, 303) or not location:
            raise TokenError(f"the authorization endpoint answered {page.status_code}: {_short(_json(page))}")
        return location

    def _code(self, location: str, state: str) -> str:
        query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
        if "error" in query:
            described = f": {query['error_description']}" if "error_description" in query else ""
            raise TokenError(f"the authorization server refused: {query['error']}{described}")
        if query.get("state") != state:
            raise TokenError("the authorization response carries another state (not this login)")
        if query.get("iss", self.base).rstrip("/") != self.base:  # RFC 9207
            raise TokenError(f"the authorization response comes from another issuer: {query['iss']!r}")
        if "code" not in query:
            raise TokenError("the authorization response carries no code")
        return query["code"]

    def _exchange(self, metadata: Mapping[str, Any], client_id: str, code: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": self.resource,
        }
        response = self.http.post(str(metadata["token_endpoint"]), data=form)
        answer = _json(response)
        if response.status_code != 200:
            raise TokenError(f"the token endpoint answered {response.status_code}: {_short(answer)}")
        return answer


class _LoginForm(HTMLParser):
    """The dev server's login page: where its form posts, and its hidden fields (the request, a nonce)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}

    @classmethod
    def read(cls, page: str) -> _LoginForm:
        form = cls()
        form.feed(page)
        form.close()
        return form

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action")
        elif tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.hidden[values["name"]] = values.get("value", "")


def _same_origin(url: str, base: str) -> bool:
    one, other = urlsplit(url), urlsplit(base)
    return (one.scheme, one.netloc) == (other.scheme, other.netloc)


def _json(response: httpx2.Response) -> dict[str, Any]:
    try:
        value = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _short(answer: Mapping[str, Any]) -> str:
    if "error" in answer:
        return " ".join(str(answer[key]) for key in ("error", "error_description") if key in answer)
    return (orjson.dumps(answer).decode() if answer else "(no JSON body)")[:300]


def _claims(token: str) -> dict[str, Any]:
    """The JWT's claims, read (not verified: the gateway verifies; this only reports what was issued)."""
    try:
        payload = token.split(".")[1]
        value = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        raise TokenError("the token endpoint answered with an access token that is not a JWT") from None
    if not isinstance(value, dict):
        raise TokenError("the token endpoint answered with an access token that is not a JWT")
    return value
