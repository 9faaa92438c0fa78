"""The exchange client against hostile and failing token endpoints: what the caller is told, what is cached.

The endpoint is a real Starlette app under uvicorn that answers whatever the test sets; the client
is `BackendCredentials` itself (the proxy turns its `ExchangeError` into the JSON-RPC error, see
test_token_exchange.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_middleware.core import Principal
from mcp_middleware.router.credentials import BackendCredentials, ExchangeError, TokenExchange
from tests.conftest import Served, serve_app

pytestmark = pytest.mark.anyio

SECRET_BODY = "internal-stack-trace-with-db-password"


@dataclass
class Endpoint:
    status: int = 200
    body: bytes = b'{"access_token":"backend-token","token_type":"Bearer","expires_in":3600}'
    delay: float = 0.0
    forms: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    async def token(self, request: Request) -> Response:
        self.forms.append(dict(await request.form()))
        self.authorizations.append(request.headers.get("authorization"))
        if self.delay:
            await anyio.sleep(self.delay)
        return Response(self.body, status_code=self.status, media_type="application/json")


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, Served]]:
    state = Endpoint()
    with serve_app(Starlette(routes=[Route("/token", state.token, methods=["POST"])])) as served:
        yield state, served


def credentials(served: Served, **options: Any) -> BackendCredentials:
    exchange = TokenExchange(f"{served.base}/token", audience="api", client_id="gw", client_secret="s3cret", **options)
    return BackendCredentials(exchange, backend="api")


ALICE = Principal(subject="alice", client_id="app", issuer="https://idp", token="alice-token")


async def test_the_request_is_an_rfc_8693_exchange_with_client_authentication(
    endpoint: tuple[Endpoint, Served],
) -> None:
    state, served = endpoint
    creds = credentials(served, scope="read write", resource="https://api.example/mcp")
    assert await creds.token_for(ALICE) == ("backend-token", False)
    assert await creds.token_for(ALICE) == ("backend-token", True)
    assert creds.exchanges == 1
    form = state.forms[0]
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "alice-token",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "api",
        "resource": "https://api.example/mcp",
        "scope": "read write",
    }
    assert state.authorizations[0] is not None and state.authorizations[0].startswith("Basic ")
    key = creds.key(ALICE)
    assert key is not None and "alice-token" not in key and len(key) == 64  # a digest, never the raw token
    await creds.aclose()


@pytest.mark.parametrize(
    ("status", "body", "expected", "error"),
    [
        (400, b'{"error":"invalid_grant"}', 401, "invalid_grant"),  # the caller's token: re-authenticate
        (400, b'{"error":"invalid_target"}', 403, "invalid_target"),  # not for this backend
        (400, b'{"error":"invalid_scope"}', 403, "invalid_scope"),
        (401, b'{"error":"invalid_client"}', 502, "invalid_client"),  # the gateway's own client: not the caller's fault
        (400, b'{"error":"unsupported_grant_type"}', 502, "unsupported_grant_type"),
        (500, SECRET_BODY.encode(), 502, None),
        (400, b'{"error":"<script>' + SECRET_BODY.encode() + b'"}', 403, None),  # a hostile error code is not repeated
        (200, b'{"token_type":"Bearer"}', 502, None),  # no access_token
        (200, b'{"access_token":"a\\r\\nX-Injected: 1","token_type":"Bearer"}', 502, None),  # header injection
        (200, b'{"access_token":"t","token_type":"mac"}', 502, None),
        (200, b"[1, 2]", 502, None),
        (200, b'{"access_token":"' + b"A" * 70_000 + b'","token_type":"Bearer"}', 502, None),  # over the bound
    ],
)
async def test_refusals_and_hostile_answers_become_short_sanitized_errors(
    endpoint: tuple[Endpoint, Served], status: int, body: bytes, expected: int, error: str | None
) -> None:
    state, served = endpoint
    state.status, state.body = status, body
    creds = credentials(served)
    with pytest.raises(ExchangeError) as failed:
        await creds.token_for(ALICE)
    assert failed.value.status == expected and failed.value.error == error
    assert SECRET_BODY not in failed.value.reason and "Injected" not in failed.value.reason
    assert len(failed.value.reason) < 120
    assert creds.key(ALICE) is not None and creds._cache.get(creds.key(ALICE) or "") is None  # nothing cached
    await creds.aclose()


async def test_a_slow_endpoint_is_a_504_and_an_absent_one_a_502(endpoint: tuple[Endpoint, Served]) -> None:
    state, served = endpoint
    state.delay = 5.0
    creds = credentials(served, timeout=0.5)
    with pytest.raises(ExchangeError) as slow:
        await creds.token_for(ALICE)
    assert slow.value.status == 504
    await creds.aclose()
    gone = BackendCredentials(TokenExchange("http://127.0.0.1:9/token", client_id="gw", client_secret="s"), backend="x")
    with pytest.raises(ExchangeError) as absent:
        await gone.token_for(ALICE)
    assert absent.value.status == 502 and "unreachable" in absent.value.reason
    await gone.aclose()


async def test_a_caller_without_a_token_gets_401_without_a_request(endpoint: tuple[Endpoint, Served]) -> None:
    state, served = endpoint
    creds = credentials(served)
    with pytest.raises(ExchangeError) as anonymous:
        await creds.token_for(Principal())
    assert anonymous.value.status == 401 and state.forms == []
    await creds.aclose()


async def test_concurrent_callers_share_one_exchange_and_one_failure(endpoint: tuple[Endpoint, Served]) -> None:
    state, served = endpoint
    state.delay = 0.3
    creds = credentials(served)
    results: list[tuple[str, bool]] = []

    async def one() -> None:
        results.append(await creds.token_for(ALICE))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(one)
    assert len(state.forms) == 1 and len(results) == 10 and {token for token, _ in results} == {"backend-token"}
    state.status, state.body = 400, b'{"error":"invalid_grant"}'
    bob = Principal(subject="bob", token="bob-token")
    failures: list[int] = []

    async def refused() -> None:
        try:
            await creds.token_for(bob)
        except ExchangeError as exc:
            failures.append(exc.status)

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(refused)
    assert len(state.forms) == 2 and failures == [401] * 10  # one request refused, ten callers told
    await creds.aclose()


async def test_a_cached_token_never_outlives_the_callers_token(endpoint: tuple[Endpoint, Served]) -> None:
    state, served = endpoint
    creds = credentials(served)
    short_lived = Principal(subject="carol", token="carol-token", expires_at=int(time.time()))  # expires now
    await creds.token_for(short_lived)
    await creds.token_for(short_lived)
    assert len(state.forms) == 2  # not cached beyond the caller's own expiry
    await creds.aclose()


async def test_the_service_token_is_a_client_credentials_grant(endpoint: tuple[Endpoint, Served]) -> None:
    state, served = endpoint
    creds = credentials(served, scope="tools")
    assert await creds.service_token() == "backend-token"
    assert await creds.service_token() == "backend-token"
    assert state.forms == [{"grant_type": "client_credentials", "audience": "api", "scope": "tools"}]
    await creds.service_token(fresh=True)
    assert len(state.forms) == 2
    await creds.aclose()


async def test_the_cache_is_bounded_least_recently_used_out_first(endpoint: tuple[Endpoint, Served]) -> None:
    state, served = endpoint
    creds = credentials(served, max_entries=2)
    callers = [Principal(subject=name, token=f"{name}-token") for name in ("a", "b", "c")]
    for caller in callers[:2]:
        await creds.token_for(caller)
    await creds.token_for(callers[0])  # a is used again: b is now the least recently used
    await creds.token_for(callers[2])  # c pushes b out
    assert len(creds._cache) == 2 and len(state.forms) == 3
    assert (await creds.token_for(callers[0]))[1] is True
    assert (await creds.token_for(callers[1]))[1] is False  # exchanged again
    assert len(state.forms) == 4
    await creds.aclose()
