"""The remembered `Authorization` values (`AuthMiddleware._cached`): a repeat request skips the token's parsing
and digest, and nothing else.

A header value is remembered with its token's cache key only once that token was verified; what it
finds is still the token cache's entry, so expiry, revocation (`forget_token`) and the cache's bound
apply as before. The table is bounded and holds no value that was never verified.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.auth._token_cache import forget_token, token_key
from mcp_middleware.core import get_decisions, get_principal
from tests.servers import build_server
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

_RESOURCE = "http://127.0.0.1/mcp"


def _auth(tokens: dict[str, Any]) -> AuthMiddleware:
    return AuthMiddleware(
        build_server().streamable_http_app(),
        verifier=StaticTokenVerifier(tokens, resource=_RESOURCE),
        resource=_RESOURCE,
    )


async def _call(
    http: httpx2.AsyncClient, url: str, authorization: bytes | None, request_id: int = 1
) -> httpx2.Response:
    headers = {key.encode(): value.encode() for key, value in modern_headers("tools/call", "echo").items()}
    if authorization is not None:
        headers[b"authorization"] = authorization
    body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, request_id)
    return await http.post(url, content=body, headers=headers)


async def test_each_spelling_of_a_header_finds_its_own_callers_principal(serve: Any) -> None:
    auth = _auth({"alice-token": ["mcp"], "bob-token": ["mcp"]})
    recorder = DecisionRecorder(auth)
    served = serve(recorder)
    spellings = [b"Bearer alice-token", b"bearer alice-token", b"Bearer  alice-token", b"Bearer bob-token"]
    async with httpx2.AsyncClient(timeout=10) as http:
        for _ in range(2):  # the second round finds every spelling remembered
            for spelling in spellings:
                assert (await _call(http, served.mcp_url, spelling)).status_code == 200
        # Never verified: refused every time, never remembered.
        for bad in (b"Bearer mallory-token", b"Basic alice-token", b"Bearer " + b"a" * 9000):
            assert (await _call(http, served.mcp_url, bad)).status_code == 401
    subjects = [get_principal(scope).subject for scope in recorder.scopes[:8]]
    alice, bob = subjects[0], subjects[3]
    assert alice != bob and subjects == [alice, alice, alice, bob] * 2
    assert set(auth._keys) == set(spellings)
    assert set(auth._keys.values()) == {token_key("alice-token"), token_key("bob-token")}
    # The decision is the same for each request of a caller, and says who it was.
    allowed = [attributes for outcome, attributes in recorder.of("auth") if outcome == "allow"]
    assert allowed == [{"client_id": alice, "subject": alice}] * 3 + [{"client_id": bob, "subject": bob}] + [
        {"client_id": alice, "subject": alice}
    ] * 3 + [{"client_id": bob, "subject": bob}]


async def test_a_revoked_or_expired_token_is_refused_though_its_header_is_remembered(serve: Any) -> None:
    auth = _auth({"alice-token": ["mcp"]})
    served = serve(auth)
    verifier = auth.verifier
    assert isinstance(verifier, StaticTokenVerifier)
    async with httpx2.AsyncClient(timeout=10) as http:
        for _ in range(2):
            assert (await _call(http, served.mcp_url, b"Bearer alice-token")).status_code == 200
        assert b"Bearer alice-token" in auth._keys
        # Revoked: dropped from the cache, and the verifier no longer knows it.
        verifier._tokens.clear()
        assert forget_token(token_key("alice-token")) >= 1
        refused = await _call(http, served.mcp_url, b"Bearer alice-token")
        assert refused.status_code == 401 and "invalid_token" in refused.headers["www-authenticate"]

    expiring = _auth({"alice-token": ["mcp"]})
    served = serve(expiring)
    async with httpx2.AsyncClient(timeout=10) as http:
        for _ in range(2):
            assert (await _call(http, served.mcp_url, b"Bearer alice-token")).status_code == 200
        assert len(expiring.cache) == 1
        expiring.cache.clock = lambda: 4_000_000_000.0  # every entry past its deadline
        expiring.verifier._tokens.clear()  # type: ignore[attr-defined]
        assert (await _call(http, served.mcp_url, b"Bearer alice-token")).status_code == 401
        assert len(expiring.cache) == 0


async def test_the_table_is_bounded_and_a_second_header_still_refused(serve: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("mcp_middleware.auth.middleware._REMEMBERED_CREDENTIALS", 8)  # (1024 takes minutes)
    bound = 8
    count = bound + 5
    auth = _auth({f"token-{n}": ["mcp"] for n in range(count)})
    served = serve(auth)
    async with httpx2.AsyncClient(timeout=30) as http:
        for n in range(count):
            for _ in range(2):  # verified, then found in the cache: remembered
                assert (await _call(http, served.mcp_url, f"Bearer token-{n}".encode())).status_code == 200
            assert len(auth._keys) <= bound
        assert auth._keys  # it is used, not merely bounded
        # Two Authorization headers are refused even when one is remembered (the count comes first).
        headers = [(b"authorization", b"Bearer token-0"), (b"authorization", b"Bearer token-1")]
        body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 1)
        base = [(key.encode(), value.encode()) for key, value in modern_headers("tools/call", "echo").items()]
        twice = await http.post(served.mcp_url, content=body, headers=base + headers)
        assert twice.status_code == 400
        # A token in the query string is refused even with a remembered header.
        query = await http.post(served.mcp_url + "?access_token=token-0", content=body, headers=[*base, headers[0]])
        assert query.status_code == 400


async def test_the_one_pass_lookup_answers_as_the_exact_path(serve: Any) -> None:
    """`__call__` finds a remembered header in one pass over the headers when no header name repeats; a request
    with a repeated name (any header) takes `_cached`'s exact path. The same traffic both ways: the same
    statuses, bodies and challenges byte for byte, the same decisions and principals."""
    auth = _auth({"alice-token": ["mcp"], "bob-token": ["mcp"]})
    recorder = DecisionRecorder(auth)
    served = serve(recorder)
    base = [(key.encode(), value.encode()) for key, value in modern_headers("tools/call", "echo").items()]
    repeated = [(b"x-note", b"1"), (b"x-note", b"2")]
    credentials = [b"Bearer alice-token", b"Bearer bob-token", b"Bearer mallory-token", b"Basic alice-token", None]
    answers: dict[bool, list[tuple[int, str | None, bytes]]] = {}
    async with httpx2.AsyncClient(timeout=10) as http:
        for credential in credentials[:2] * 2:  # verified, then found in the cache: remembered from now on
            assert (await _call(http, served.mcp_url, credential)).status_code == 200
        assert len(auth._keys) == 2
        recorder.scopes.clear()
        for exact in (False, True):
            answers[exact] = []
            for credential in credentials:
                body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 7)
                headers = base + (repeated if exact else []) + ([(b"authorization", credential)] if credential else [])
                response = await http.post(served.mcp_url, content=body, headers=headers)
                answers[exact].append(
                    (response.status_code, response.headers.get("www-authenticate"), response.content)
                )
    assert answers[False] == answers[True]
    assert [status for status, _, _ in answers[False]] == [200, 200, 401, 401, 401]
    fast, exact_ = recorder.scopes[:5], recorder.scopes[5:]
    assert [get_principal(s) for s in fast] == [get_principal(s) for s in exact_]
    assert [_decisions(s) for s in fast] == [_decisions(s) for s in exact_]
    assert [outcome for outcome, _ in _decisions(fast[0])] == ["allow"]


def _decisions(scope: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(str(d.outcome), dict(d.attributes)) for d in get_decisions(scope) if d.component == "auth"]
