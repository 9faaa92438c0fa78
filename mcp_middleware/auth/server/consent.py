"""What the user and the client's browser see: the consent page, its single-use nonces, and error answers."""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from authlib.oauth2.rfc6749 import OAuth2Error  # type: ignore[import-untyped]
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .storage import RegisteredClient

__all__ = ["CORS", "NO_STORE", "ConsentNonces", "consent_page", "error_page", "redirect_error"]

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CORS = {"Access-Control-Allow-Origin": "*"}


class ConsentNonces:
    """Single-use nonces for rendered consent forms, valid ten minutes, at most 10 000 outstanding.

    Only a form this server rendered may decide: no cross-site POST approves a client.

    >>> nonces = ConsentNonces()
    >>> nonce = nonces.issue()
    >>> nonces.take(nonce), nonces.take(nonce)
    (True, False)
    """

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


def consent_page(
    *, client: RegisteredClient, scope: str | None, fields: Mapping[str, str], action: str, default_subject: str
) -> Response:
    """The login and consent form: the authorization request's parameters (and a nonce) ride along hidden."""
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    scopes = html.escape(scope or "(none)")
    name = html.escape(client.client_name or client.client_id)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Authorize {name}</title></head>
<body><h1>Authorize {name}</h1><p>Requested scopes: <code>{scopes}</code></p>
<form method="post" action="{html.escape(action)}">{hidden}
<label>User name <input name="username" value="{html.escape(default_subject)}"></label>
<button name="decision" value="approve">Approve</button> <button name="decision" value="deny">Deny</button>
</form></body></html>"""
    return HTMLResponse(page, headers={**NO_STORE, "X-Frame-Options": "DENY"})


def error_page(error: OAuth2Error) -> Response:
    """An authorization error that must not be redirected (unknown client, unregistered redirect URI)."""
    body = {"error": error.error}
    if error.description:
        body["error_description"] = error.description
    return JSONResponse(body, status_code=400, headers=NO_STORE)


def redirect_error(
    redirect_uri: str, error: OAuth2Error, state: str | None, *, issuer: str, error_code: str | None = None
) -> Response:
    """An authorization error told to the client at its (verified) redirect URI, with `iss` (RFC 9207)."""
    params = {"error": error_code or error.error, "iss": issuer}
    if error.description:
        params["error_description"] = error.description
    if state:
        params["state"] = state
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(f"{redirect_uri}{separator}{urlencode(params)}", status_code=302)
