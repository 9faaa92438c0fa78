"""What a pool's probe learns of a replica when the gateway has no token to ask with (the token endpoint is down).

Each replica is a small app under uvicorn answering the probe one way; the token endpoint is a port nobody
listens on. Asked without a token, a replica that answers with its OAuth challenge (401 with
`WWW-Authenticate: Bearer`) is alive and readmitted; one that answers 5xx or cannot be reached is not
(and one in rotation is ejected for it); a 401 without a challenge, or a 403, says nothing (neither).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from starlette.types import Receive, Scope, Send

from mcp_middleware.breaker import BreakerState
from mcp_middleware.router import HttpBackend
from mcp_middleware.router._pool_credentials import ChallengedWithoutToken, bearer_challenge
from mcp_middleware.router.credentials import BackendCredentials, ExchangeError, TokenExchange
from mcp_middleware.router.pool import POOL_HEALTH
from mcp_middleware.router.pool_health import Prober, Replica, ToolHints
from tests.conftest import free_port, serve_app

pytestmark = pytest.mark.anyio

CHALLENGE = [(b"www-authenticate", b'Bearer resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource"')]


def answering(status: int, headers: list[tuple[bytes, bytes]]) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen.append(dict(scope["headers"]).get(b"authorization"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error":"invalid_token"}'})

    seen: list[bytes | None] = []
    app.seen = seen  # type: ignore[attr-defined]
    return app


@contextlib.contextmanager
def replica_answering(status: int, headers: list[tuple[bytes, bytes]]) -> Iterator[tuple[Replica, list[bytes | None]]]:
    app = answering(status, headers)
    with serve_app(app) as served:  # type: ignore[arg-type]
        yield replica_at(served.mcp_url), app.seen  # type: ignore[attr-defined]


def replica_at(url: str) -> Replica:
    nowhere = TokenExchange(
        f"http://127.0.0.1:{free_port()}/token", audience="https://pool.test/mcp", client_id="gw", client_secret="s"
    )
    backend = HttpBackend(url, credentials=BackendCredentials(nowhere, backend="pooled"))
    return Replica("pooled", 0, backend, POOL_HEALTH, lambda replica, change: None)


def prober(replica: Replica) -> Prober:
    return Prober([replica], ToolHints(), interval=60, timeout=10, failures=1)


def half_open(replica: Replica) -> None:
    """Ejected, and its open time is up: its next probe decides."""
    replica.last_error = "down a moment ago"
    replica.breaker.force_open(0.0)
    assert replica.breaker.state is BreakerState.HALF_OPEN


def test_a_bearer_challenge_is_recognised() -> None:
    assert bearer_challenge(401, CHALLENGE)
    assert bearer_challenge(401, [(b"WWW-Authenticate", b"bearer")])
    assert bearer_challenge(401, [(b"www-authenticate", b'Bearer, error="invalid_token"')])
    assert not bearer_challenge(401, [(b"www-authenticate", b'Basic realm="x"')])
    assert not bearer_challenge(401, [(b"www-authenticate", b"Bearerish")])
    assert not bearer_challenge(401, [])
    assert not bearer_challenge(403, CHALLENGE)


async def test_a_challenge_without_a_token_is_alive_and_readmits() -> None:
    with replica_answering(401, CHALLENGE) as (replica, seen):
        with pytest.raises(ChallengedWithoutToken):
            await prober(replica).probe(replica)
        assert seen == [None]  # asked without a token: there was none to be had
        half_open(replica)
        await prober(replica).check(replica)
        assert replica.up, replica.last_error


@pytest.mark.parametrize(("status", "headers"), [(503, []), (500, CHALLENGE)])
async def test_a_5xx_without_a_token_is_not_alive(status: int, headers: list[tuple[bytes, bytes]]) -> None:
    with replica_answering(status, headers) as (replica, _):
        assert await prober(replica).probe(replica) == f"HTTP {status}"
        await prober(replica).check(replica)  # in rotation: one failure is enough here (failures=1)
        assert not replica.up and replica.last_error.endswith(f"HTTP {status}")
        half_open(replica)
        await prober(replica).check(replica)
        assert not replica.up and replica.breaker.state is BreakerState.OPEN  # probed again: still not alive


@pytest.mark.parametrize(("status", "headers"), [(401, []), (401, [(b"www-authenticate", b"Basic")]), (403, CHALLENGE)])
async def test_another_refusal_without_a_token_says_nothing(status: int, headers: list[tuple[bytes, bytes]]) -> None:
    with replica_answering(status, headers) as (replica, _):
        with pytest.raises(ExchangeError) as raised:
            await prober(replica).probe(replica)
        assert not isinstance(raised.value, ChallengedWithoutToken)
        await prober(replica).check(replica)
        assert replica.up and replica.misses == 0  # in rotation: not ejected for it
        half_open(replica)
        await prober(replica).check(replica)
        assert replica.breaker.state is BreakerState.HALF_OPEN  # nor readmitted


async def test_an_unreachable_replica_without_a_token_is_not_alive() -> None:
    replica = replica_at(f"http://127.0.0.1:{free_port()}/mcp")
    error = await prober(replica).probe(replica)
    assert error is not None and "cannot connect" in error
    half_open(replica)
    await prober(replica).check(replica)
    assert not replica.up and replica.breaker.state is BreakerState.OPEN
