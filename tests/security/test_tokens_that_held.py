"""Hostile access tokens against the whole stack (issue 15: "what held"): none of them gets a caller in.

The attacker holds what any client can get: the issuer's public JWKS (served here on loopback,
as an identity provider would), tokens of their own from the same issuer, and time. They forge
headers (`alg: none`, HS256 keyed with the RSA public key, unknown `kid`, `crit`, `jku`/`jwk`
pointing at their own key), replay expired tokens, and present tokens minted for another
issuer, another audience or another MCP server. Each is refused at the door with the answer a
client can act on: HTTP 401, `WWW-Authenticate: Bearer error="invalid_token"`, a JSON-RPC
error -32012 carrying the request's id, in both protocol eras; and the backend is never reached.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc.jwk import RSAKey

from mcp_middleware import BucketPolicy, McpStack, stack
from mcp_middleware.core import ErrorCode
from tests.auth.conftest import challenge_params
from tests.cache.backends import CountingApp
from tests.conftest import ERAS, Era, serve_app
from tests.security.idp import ISSUER, RESOURCE, Idp, protected_backend, serve_idp

pytestmark = pytest.mark.anyio

LEGACY = "2025-11-25"
MODERN = "2026-07-28"


@dataclass
class Door:
    """The whole stack (tracing → auth → rate limit → cache → breaker → a counted backend), served on loopback."""

    url: str
    idp: Idp
    backend: CountingApp
    app: McpStack

    async def call(self, token: str, era: Era = "modern", request_id: int = 41) -> httpx2.Response:
        """A first request as a client of `era` sends it: a modern tools/call, or a legacy initialize."""
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if era == "modern":
            meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
            params: dict[str, Any] = {"name": "echo", "arguments": {"text": "in"}, "_meta": meta}
            body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            headers |= {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "echo"}
        else:
            params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "attacker", "version": "1"}}
            body = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}
        headers["authorization"] = f"Bearer {token}"
        async with httpx2.AsyncClient(timeout=10) as http:
            return await http.post(self.url, content=orjson.dumps(body), headers=headers)


@pytest.fixture(scope="module")
def door() -> Iterator[Door]:
    with serve_idp() as idp:
        backend = CountingApp(protected_backend().streamable_http_app())
        app = stack(
            backend,
            tracing=True,
            auth={"verifier": idp.verifier(min_refetch_interval=60.0), "resource": RESOURCE},
            ratelimit={"policies": [BucketPolicy("per-user", rate=1000.0, capacity=1000.0)]},
            cache=True,
            breaker=True,
        )
        with serve_app(app) as served:
            yield Door(served.mcp_url, idp, backend, app)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def rs256(key: RSAKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign by hand: libraries refuse to write some of the headers an attacker writes."""
    signing_input = unsigned(header, claims)
    signature = key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    return f"{signing_input}.{b64(signature)}"


async def assert_refused(door: Door, token: str, description: str | tuple[str, ...], era: Era = "modern") -> None:
    reached = door.backend.calls.total()
    response = await door.call(token, era, request_id=41)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = orjson.loads(response.content)
    assert body["id"] == 41, "the refusal answers the request it refuses"
    assert body["error"]["code"] == ErrorCode.UNAUTHORIZED
    challenge = challenge_params(response)
    assert challenge["error"] == "invalid_token"
    descriptions = (description,) if isinstance(description, str) else description
    assert challenge["error_description"] in descriptions
    assert door.backend.calls.total() == reached, "a refused token never reaches the backend"


@pytest.mark.parametrize("era", ERAS)
async def test_the_issuers_own_token_gets_in(door: Door, era: Era) -> None:
    """The control: everything below differs from this in one thing only."""
    response = await door.call(door.idp.token("alice"), era)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_any_spelling_is_refused(door: Door, era: Era, alg: str) -> None:
    forged = unsigned({"alg": alg, "kid": "sec-1"}, door.idp.issuer.claims(scope="mcp:read admin")) + "."
    await assert_refused(door, forged, f"Algorithm {alg!r} is not accepted", era)


@pytest.mark.parametrize("era", ERAS)
async def test_hs256_keyed_with_the_published_rsa_key_is_refused(door: Door, era: Era) -> None:
    """The classic key confusion: the attacker HMACs with the public key, hoping the server "verifies" with it."""
    for public in (door.idp.issuer.key.as_pem(private=False), json.dumps(door.idp.host.keys[0]).encode()):
        signing_input = unsigned({"alg": "HS256", "kid": "sec-1"}, door.idp.issuer.claims())
        signature = b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())
        await assert_refused(door, f"{signing_input}.{signature}", "Algorithm 'HS256' is not accepted", era)


async def test_a_kid_the_issuer_never_published_is_refused_and_floods_no_fetches(door: Door) -> None:
    attacker = RSAKey.generate_key(2048, parameters={"kid": "attacker"})
    fetched = len(door.idp.host.hits)
    for n in range(20):
        forged = rs256(attacker, {"alg": "RS256", "kid": f"attacker-{n}"}, door.idp.issuer.claims())
        await assert_refused(door, forged, "Unknown signing key")
    assert len(door.idp.host.hits) - fetched <= 1, "unknown kids refetch the JWKS at most once per interval"


async def test_the_published_kid_on_the_attackers_own_key_is_refused(door: Door) -> None:
    attacker = RSAKey.generate_key(2048, parameters={"kid": "sec-1"})
    await assert_refused(
        door, rs256(attacker, {"alg": "RS256", "kid": "sec-1"}, door.idp.issuer.claims()), "Invalid signature"
    )


async def test_keys_named_in_the_token_itself_are_ignored(door: Door) -> None:
    """`jku`/`jwk`/`x5u` headers pointing at the attacker's key: the verifier trusts only the configured JWKS."""
    attacker = RSAKey.generate_key(2048, parameters={"kid": "sec-1"})
    claims = door.idp.issuer.claims(scope="mcp:read admin")
    for header in (
        {"alg": "RS256", "kid": "sec-1", "jku": "http://127.0.0.1:1/attacker-jwks"},
        {"alg": "RS256", "kid": "sec-1", "jwk": attacker.as_dict(private=False)},
        {"alg": "RS256", "kid": "sec-1", "x5u": "http://127.0.0.1:1/attacker.pem"},
    ):
        # joserfc refuses some of these headers outright (malformed), the others fail the signature check.
        await assert_refused(door, rs256(attacker, header, claims), ("Invalid signature", "Malformed token"))


async def test_a_critical_header_the_verifier_does_not_understand_is_refused(door: Door) -> None:
    """RFC 7515 §4.1.11: a `crit` extension the recipient does not understand makes the JWS invalid — even if
    the issuer's key really signed it."""
    key = door.idp.issuer.key
    claims = door.idp.issuer.claims()
    await assert_refused(
        door, rs256(key, {"alg": "RS256", "kid": "sec-1", "crit": ["x-ext"], "x-ext": 1}, claims), "Malformed token"
    )
    await assert_refused(door, rs256(key, {"alg": "RS256", "kid": "sec-1", "crit": ["exp"]}, claims), "Malformed token")


@pytest.mark.parametrize("era", ERAS)
async def test_an_expired_token_is_refused(door: Door, era: Era) -> None:
    issued = door.idp.issuer.claims()["iat"]
    await assert_refused(door, door.idp.token("alice", iat=issued - 3600, exp=issued - 120), "Token has expired", era)


async def test_a_token_not_valid_yet_is_refused(door: Door) -> None:
    issued = door.idp.issuer.claims()["iat"]
    await assert_refused(door, door.idp.token("alice", nbf=issued + 600), "Token is not yet valid")


async def test_a_token_of_another_issuer_is_refused_even_with_the_same_key(door: Door) -> None:
    await assert_refused(
        door, door.idp.token("alice", iss="https://evil.example"), "Token was issued by an untrusted issuer"
    )
    await assert_refused(door, door.idp.token("alice", iss=ISSUER + "/"), "Token was issued by an untrusted issuer")


@pytest.mark.parametrize(
    "audience",
    [
        "https://api.security.test",  # another API of the same issuer
        "https://mcp.security.test/other/mcp",  # another MCP server on the same host (RFC 8707)
        "https://mcp.security.test.evil.example/mcp",  # a look-alike host
        ["https://mcp.security.test/other/mcp", "https://api.security.test"],
        None,  # no audience at all
    ],
    ids=["other-api", "other-mcp-same-host", "look-alike-host", "list-without-us", "none"],
)
async def test_a_token_for_another_audience_is_refused(door: Door, audience: Any) -> None:
    expected = "Token lacks required claims: aud" if audience is None else "Token was not issued for this resource"
    await assert_refused(door, door.idp.token("alice", aud=audience), expected)


async def test_a_refused_token_poisons_nothing(door: Door) -> None:
    """After a flood of forgeries, the genuine token of the same subject still works (nothing was cached or locked)."""
    forged = unsigned({"alg": "none"}, door.idp.issuer.claims(sub="carol")) + "."
    for _ in range(10):
        await assert_refused(door, forged, "Algorithm 'none' is not accepted")
    assert (await door.call(door.idp.token("carol"))).status_code == 200
