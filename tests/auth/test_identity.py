"""Who the middleware says is calling reaches the SDK, the core principal and the decision log, in both eras."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import httpx2
import orjson
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import get_decisions, get_principal
from tests.auth.conftest import post_mcp, serve_late
from tests.conftest import ERAS, Era, connect
from tests.support.decisions import DecisionRecorder
from tests.support.requests import legacy_body, legacy_headers, legacy_session

pytestmark = pytest.mark.anyio


def whoami_server() -> MCPServer:
    server = MCPServer("identity")

    @server.tool()
    def whoami() -> str:
        token = get_access_token()
        if token is None:
            return "nobody"
        return f"{token.subject}|{token.client_id}|{','.join(token.scopes)}|{(token.claims or {}).get('iss')}"

    return server


ALICE = AccessToken(
    token="", client_id="cli-a", scopes=["mcp:read"], subject="alice", claims={"iss": "https://idp.example"}
)
BOB = AccessToken(
    token="", client_id="cli-b", scopes=["mcp:read"], subject="bob", claims={"iss": "https://idp.example"}
)


def start(serve: Any, verifier: Any = None) -> tuple[str, DecisionRecorder]:
    mcp_app = whoami_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    recorder = DecisionRecorder(  # outermost: keeps the scope of every request, to read what auth left there
        AuthMiddleware(
            mcp_app,
            verifier=verifier or StaticTokenVerifier({"alice": ALICE, "bob": BOB}, resource=served.mcp_url),
            resource=served.mcp_url,
            authorization_servers=["https://idp.example"],
        )
    )
    slot.app = recorder
    return served.mcp_url, recorder


@asynccontextmanager
async def bearer_client(url: str, era: Era, token: str):  # type: ignore[no-untyped-def]
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client


@pytest.mark.parametrize("era", ERAS)
async def test_get_access_token_works_inside_tools(era: Era, serve: Any) -> None:
    url, _ = start(serve)
    async with bearer_client(url, era, "alice") as client:
        result = await client.call_tool("whoami", {})
    assert result.content[0].text == "alice|cli-a|mcp:read|https://idp.example"  # type: ignore[union-attr]


async def test_the_principal_and_the_decision_are_in_the_scope(serve: Any) -> None:
    url, recorder = start(serve)
    response = await post_mcp(url, authorization="Bearer alice", params={"name": "whoami", "arguments": {}})
    assert response.status_code == 200
    scope = recorder.scopes[-1]
    principal = get_principal(scope)
    assert (principal.subject, principal.client_id, principal.issuer) == ("alice", "cli-a", "https://idp.example")
    assert principal.scopes == frozenset({"mcp:read"})
    assert scope["user"].access_token.subject == "alice"
    assert list(scope["auth"].scopes) == ["mcp:read"]
    [decision] = [d for d in get_decisions(scope) if d.component == "auth"]
    assert decision.outcome == "allow"
    assert "alice" not in str(decision.attributes.get("token", ""))


async def test_a_refusal_is_recorded_as_a_decision(serve: Any) -> None:
    url, recorder = start(serve)
    await post_mcp(url, authorization="Bearer mallory")
    [decision] = [d for d in get_decisions(recorder.scopes[-1]) if d.component == "auth"]
    assert (decision.outcome, decision.attributes["reason"], decision.attributes["status"]) == (
        "deny",
        "invalid_token",
        401,
    )


async def test_a_legacy_session_cannot_be_reused_by_another_principal(serve: Any) -> None:
    url, _ = start(serve)
    call = legacy_body("tools/call", {"name": "whoami", "arguments": {}}, 2)
    async with httpx2.AsyncClient(timeout=10) as http:
        session = await legacy_session(http, url, authorization="Bearer alice")
        as_alice = await http.post(url, content=call, headers=legacy_headers(session, authorization="Bearer alice"))
        as_bob = await http.post(url, content=call, headers=legacy_headers(session, authorization="Bearer bob"))
    assert as_alice.status_code == 200
    assert "alice|cli-a" in as_alice.text
    assert as_bob.status_code == 404, "the SDK's session-owner binding refuses bob on alice's session"
    assert "alice" not in as_bob.text


class PlainSdkVerifier:
    """A verifier written against the SDK's `TokenVerifier` protocol only (no reasons, just None)."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self.calls = 0

    async def verify_token(self, token: str) -> AccessToken | None:
        self.calls += 1
        if token != "sdk-token":
            return None
        return AccessToken(token=token, client_id="sdk", scopes=["mcp:read"], subject="carol", resource=self.resource)


async def test_any_sdk_token_verifier_is_accepted_and_its_answers_cached(serve: Any) -> None:
    verifier = PlainSdkVerifier("")
    url, _ = start(serve, verifier)
    verifier.resource = url
    for _ in range(3):
        ok = await post_mcp(url, authorization="Bearer sdk-token", params={"name": "whoami", "arguments": {}})
        assert ok.status_code == 200
        assert "carol|sdk" in ok.text
    assert verifier.calls == 1
    refused = await post_mcp(url, authorization="Bearer other")
    assert refused.status_code == 401
    assert orjson.loads(refused.content)["error"]["message"] == "Invalid or expired token"


async def test_a_token_without_a_resource_is_refused_unless_allowed(serve: Any) -> None:
    url, _ = start(serve, StaticTokenVerifier({"t": ["mcp:read"]}))  # no resource at all
    refused = await post_mcp(url, authorization="Bearer t")
    assert refused.status_code == 401
    assert orjson.loads(refused.content)["error"]["message"] == "Token names no resource"


class BrokenVerifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        raise RuntimeError("database down")


async def test_a_verifier_that_crashes_fails_closed(serve: Any) -> None:
    url, _ = start(serve, BrokenVerifier())
    response = await post_mcp(url, authorization="Bearer anything")
    assert response.status_code == 503
    assert "database" not in response.text
