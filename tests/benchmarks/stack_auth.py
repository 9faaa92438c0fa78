"""End-to-end stack with `AuthMiddleware` on (`--apps bare,auth`): every request carries a valid bearer JWT.

The token is an ES256 JWT verified by `JwksTokenVerifier` against a fixed key set (no
JWKS fetch in the loop); after the first request it is served from the verified-token
cache, which is the steady state of a real client. The resource is a fixed URI: the
audience check compares the token with configuration, not with the request's URL. The
key is derived from a fixed number so the load generator and a server in another process
agree on it (a benchmark key, worthless anywhere else).
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from mcp_middleware.auth import AuthMiddleware, JwksTokenVerifier

from .apps import Stack

_RESOURCE = "http://127.0.0.1:8000/mcp"
_ISSUER = "https://issuer.bench"
_KEY = ECKey.import_key(ec.derive_private_key(0x5EED_BE4C4, ec.SECP256R1()), parameters={"kid": "bench"})
_NOW = int(time.time()) // 86400 * 86400  # the same in every process started the same day
_TOKEN = jwt.encode(
    {"alg": "ES256", "kid": "bench"},
    {
        "iss": _ISSUER,
        "aud": _RESOURCE,
        "sub": "bench-user",
        "client_id": "bench",
        "scope": "mcp:read mcp:write",
        "iat": _NOW,
        "exp": _NOW + 7 * 24 * 3600,
    },
    _KEY,
    algorithms=["ES256"],
)


def _wrap(app):  # type: ignore[no-untyped-def]
    verifier = JwksTokenVerifier(jwks={"keys": [_KEY.as_dict(private=False)]}, issuer=_ISSUER, audience=_RESOURCE)
    return AuthMiddleware(
        app,
        verifier=verifier,
        resource=_RESOURCE,
        authorization_servers=[_ISSUER],
        required_scopes=["mcp:read"],
        scopes={"tools/call:delete_*": ["admin"]},
    )


STACKS = {
    "auth": Stack(_wrap, headers=(("authorization", f"Bearer {_TOKEN}"),)),
}
