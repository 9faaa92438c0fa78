"""Each backend its own credentials: the gateway exchanges the caller's token (RFC 8693) per backend.

A real authlib token endpoint on loopback issues tokens for the backend's audience; the backend
(an SDK `MCPServer` under uvicorn) accepts only those and records every `Authorization` it saw.
The gateway accepts two callers by static tokens and reaches the backend through its path mount
and the aggregate, in both eras.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.servers import build_server
from tests.support.requests import initialize_body, legacy_body, legacy_headers, modern_body, modern_headers
from tests.support.token_exchange import GATEWAY_SECRET, GuardedBackend, IssuingServer

pytestmark = pytest.mark.anyio

AUDIENCE = "https://saas.test/mcp"
CALLERS = {"alice-token": "alice", "bob-token": "bob"}

CONFIG = """
[auth]
mode = "static"
[auth.tokens]
"alice-token" = {{ subject = "alice", scopes = [] }}
"bob-token" = {{ subject = "bob", scopes = [] }}

[[servers]]
name = "saas"
url = "{backend}"
[servers.auth.exchange]
token_endpoint = "{endpoint}"
audience = "{audience}"
scope = "tools"
client_id = "gateway"
client_secret = "${{env:GW_EXCHANGE_SECRET}}"
"""


@contextlib.contextmanager
def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, expires_in: int = 3600, endpoint: str | None = None
) -> Iterator[tuple[IssuingServer, GuardedBackend, Gateway, Served]]:
    monkeypatch.setenv("GW_EXCHANGE_SECRET", GATEWAY_SECRET)
    issuer = IssuingServer(callers=CALLERS, audiences={AUDIENCE}, expires_in=expires_in)
    backend = GuardedBackend(build_server().streamable_http_app(), issuer, audience=AUDIENCE)
    with serve_app(issuer.app) as idp, serve_app(backend) as remote:
        path = tmp_path / "gateway.toml"
        token_endpoint = endpoint or f"{idp.base}/token"
        path.write_text(CONFIG.format(backend=remote.mcp_url, endpoint=token_endpoint, audience=AUDIENCE))
        gateway = build_gateway(load_config(path))
        with serve_app(gateway.app) as served:
            yield issuer, backend, gateway, served


def _path(endpoint: str) -> tuple[str, str]:
    """The endpoint's path and the tool's name there."""
    return ("/mcp/saas", "echo") if endpoint == "mount" else ("/mcp", "saas__echo")


def _never_the_callers_token(backend: GuardedBackend) -> None:
    for seen in backend.seen:
        assert seen.authorization is not None
        assert not any(token in seen.authorization for token in CALLERS), seen


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
async def test_calls_carry_a_token_exchanged_for_the_caller_once_for_many_calls(
    era: Era, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as (issuer, backend, _, served):
        path, tool = _path(endpoint)
        async with client(f"{served.base}{path}", era, "alice-token") as session:
            for n in range(4):
                result = await session.call_tool(tool, {"text": f"hi {n}"})
                assert result.content[0].text == f"hi {n}"  # type: ignore[union-attr]
        assert issuer.exchanges("alice") == 1  # one exchange for four calls
        calls = backend.calls()
        assert len(calls) == 4
        tokens = {seen.authorization for seen in calls}
        assert len(tokens) == 1
        for seen in calls:
            assert seen.issued is not None and seen.issued.grant == "exchange" and seen.issued.subject == "alice"
            assert seen.issued.audience == AUDIENCE
        # the gateway's own session (the aggregate's lists) has no caller: its own client-credentials token
        for seen in backend.seen:
            assert seen.issued is not None and (
                seen.issued.subject == "alice" or seen.issued.grant == "client_credentials"
            )
        _never_the_callers_token(backend)
        exchange_form = next(form for form in issuer.requests if form["grant_type"].endswith("token-exchange"))
        assert exchange_form["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        assert exchange_form["audience"] == AUDIENCE and exchange_form["scope"] == "tools"


@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
async def test_two_callers_get_two_tokens_and_concurrent_calls_share_one_exchange(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as (issuer, backend, _, served):
        path, tool = _path(endpoint)

        async def calls(token: str) -> None:
            async with client(f"{served.base}{path}", "modern", token) as session, anyio.create_task_group() as group:
                for n in range(6):
                    group.start_soon(session.call_tool, tool, {"text": str(n)})

        async with anyio.create_task_group() as group:
            group.start_soon(calls, "alice-token")
            group.start_soon(calls, "bob-token")
        assert issuer.exchanges("alice") == 1 and issuer.exchanges("bob") == 1
        by_subject: dict[str, set[str | None]] = {}
        for seen in backend.calls():
            assert seen.issued is not None
            by_subject.setdefault(str(seen.issued.subject), set()).add(seen.authorization)
        assert set(by_subject) == {"alice", "bob"}
        assert all(len(tokens) == 1 for tokens in by_subject.values())
        assert by_subject["alice"].isdisjoint(by_subject["bob"])  # no cross-principal cache hit
        _never_the_callers_token(backend)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
async def test_an_expired_token_and_a_backend_401_each_cause_a_new_exchange(
    era: Era, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, tool = _path(endpoint)
    with running(tmp_path, monkeypatch, expires_in=2) as (issuer, backend, _, served):
        async with client(f"{served.base}{path}", era, "alice-token") as session:
            await session.call_tool(tool, {"text": "first"})
            assert issuer.exchanges("alice") == 1
            await anyio.sleep(1.5)  # kept for at most half of expires_in = 2 s
            issuer.expires_in = 3600
            await session.call_tool(tool, {"text": "after expiry"})
            assert issuer.exchanges("alice") == 2
            await session.call_tool(tool, {"text": "from the cache"})
            assert issuer.exchanges("alice") == 2
            held = backend.calls()[-1].authorization
            assert held is not None
            backend.revoked.add(held.removeprefix("Bearer "))  # the backend now refuses it: 401
            exchanges = issuer.exchanges("alice")
            result = await session.call_tool(tool, {"text": "after a 401"})
            assert result.content[0].text == "after a 401"  # type: ignore[union-attr]
            assert issuer.exchanges("alice") == exchanges + 1
        with_held = [seen.issued is not None for seen in backend.calls() if seen.authorization == held]
        assert with_held == [True, True, False]  # two calls it served, then the one refused with 401
        last = backend.calls()[-1]  # that call again, once, with a fresh token
        assert last.authorization != held and last.issued is not None and last.issued.subject == "alice"
        _never_the_callers_token(backend)


async def _raw_call(served: Served, token: str, request_id: object = "call-7") -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{served.base}/mcp/saas",
            content=modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, request_id=request_id),
            headers={**modern_headers("tools/call", "echo"), "authorization": f"Bearer {token}"},
        )


async def test_an_unreachable_token_endpoint_is_a_json_rpc_502_with_the_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/token"
    with running(tmp_path, monkeypatch, endpoint=nowhere) as (_, backend, _, served):
        response = await _raw_call(served, "alice-token")
        assert response.status_code == 502
        assert response.headers["content-type"].startswith("application/json")
        answer = response.json()
        assert answer["id"] == "call-7" and answer["error"]["code"] == ErrorCode.BAD_GATEWAY
        assert "token endpoint is unreachable" in answer["error"]["message"]
        assert answer["error"]["data"]["mayHaveRun"] is False
        assert backend.calls() == []


@pytest.mark.parametrize("era", ERAS)
async def test_a_refused_subject_token_is_a_401_and_the_backend_never_sees_the_call(
    era: Era, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as (issuer, backend, _, served):
        issuer.refuse_subjects = True  # the identity provider revoked the caller's token
        response = await _raw_call(served, "alice-token", request_id=41)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        answer = response.json()
        assert answer["id"] == 41 and answer["error"]["code"] == ErrorCode.UNAUTHORIZED
        assert answer["error"]["data"]["error"] == "invalid_grant"
        with pytest.raises(BaseException) as refused:  # noqa: PT011 (the SDK raises a group; _mcp_error looks inside)
            async with client(f"{served.base}/mcp/saas", era, "bob-token") as session:
                await session.call_tool("echo", {"text": "x"})
        assert _mcp_error(refused.value).code == ErrorCode.UNAUTHORIZED
        assert backend.seen == []


def _mcp_error(exc: BaseException) -> MCPError:
    """The `MCPError` inside what the SDK raised (an exception group, a chain)."""
    pending: list[BaseException | None] = [exc]
    while pending:
        each = pending.pop()
        if isinstance(each, MCPError):
            return each
        if isinstance(each, BaseExceptionGroup):
            pending.extend(each.exceptions)
        elif each is not None:
            pending += [each.__cause__, each.__context__]
    raise AssertionError(f"no MCPError in {exc!r}")


async def test_another_caller_riding_a_legacy_session_gets_no_exchange_and_no_backend_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as (issuer, backend, _, served):
        url = f"{served.base}/mcp/saas"
        async with httpx2.AsyncClient(timeout=30) as http:
            alice = {"authorization": "Bearer alice-token"}
            opened = await http.post(url, content=initialize_body(), headers={**legacy_headers(), **alice})
            assert opened.status_code == 200
            session = opened.headers["mcp-session-id"]
            seen_before = len(backend.seen)
            stolen = await http.post(
                url,
                content=legacy_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, request_id=5),
                headers={**legacy_headers(session), "authorization": "Bearer bob-token"},
            )
        assert stolen.status_code == 404 and stolen.json()["id"] == 5  # as if the session did not exist
        assert issuer.exchanges("bob") == 0 and len(backend.seen) == seen_before
        _never_the_callers_token(backend)


async def test_a_backend_that_refuses_even_a_fresh_token_is_a_502_after_one_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as (issuer, backend, _, served):
        backend.refuse_all = True
        response = await _raw_call(served, "alice-token", request_id="r-1")
        assert response.status_code == 502 and "www-authenticate" not in response.headers  # not the backend's challenge
        answer = response.json()
        assert answer["id"] == "r-1" and answer["error"]["code"] == ErrorCode.BAD_GATEWAY
        assert "refused the token exchanged for it" in answer["error"]["message"]
        assert issuer.exchanges("alice") == 2 and len(backend.calls()) == 2  # one retry, not a loop
