"""A pool's probes while the identity provider is down: a replica that is back is readmitted at once.

Two replicas (SDK `MCPServer`s under uvicorn behind `GuardedBackend`: 401 `WWW-Authenticate: Bearer`
without a token the loopback RFC 8693 endpoint issued for the pool) and that endpoint, each stopped and
started again on its own port. With the endpoint down and the gateway's own token refused (expired, as
far as the replicas go), a probe has no token to ask with: it asks without one, and a replica that answers
with its OAuth challenge is alive. So a replica that was ejected and came back is readmitted while the
endpoint is still down; a replica that is still down is not; callers meanwhile get the exchange error
(502 with their request id); once the endpoint is back, the first call is served.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx2
import pytest
from starlette.types import ASGIApp

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from mcp_middleware.router import PoolBackend
from tests.conftest import free_port, serve_app
from tests.router.pool_replica import build
from tests.router.test_pool_exchange import AUDIENCE, CALLERS, CONFIG
from tests.support.requests import modern_body, modern_headers
from tests.support.token_exchange import GATEWAY_SECRET, GuardedBackend, IssuingServer
from tests.support.waiting import held_within, until

pytestmark = pytest.mark.anyio


class Restartable:
    """An app under uvicorn on a port of its own, stopped and started again on that port."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.port = free_port()
        self._running: contextlib.ExitStack | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._running is None
        self._running = contextlib.ExitStack()
        self._running.enter_context(serve_app(self.app, self.port))

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None


async def call(base: str, token: str, request_id: object) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{base}/mcp/pooled",
            content=modern_body("tools/call", {"name": "whoami", "arguments": {}}, request_id=request_id),
            headers={**modern_headers("tools/call", "whoami"), "authorization": f"Bearer {token}"},
        )


async def test_while_the_token_endpoint_is_down_a_replica_back_is_readmitted_and_served_once_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_POOL_EXCHANGE_SECRET", GATEWAY_SECRET)
    issuer = IssuingServer(callers=CALLERS, audiences={AUDIENCE})
    guarded = [GuardedBackend(build(f"r{n}").streamable_http_app(), issuer, audience=AUDIENCE) for n in range(2)]
    idp = Restartable(issuer.app)
    replicas = [Restartable(each) for each in guarded]
    with contextlib.ExitStack() as stack:
        for part in (idp, *replicas):
            part.start()
            stack.callback(part.stop)
        path = tmp_path / "gateway.toml"
        urls = ", ".join(f'"{replica.base}/mcp"' for replica in replicas)
        path.write_text(CONFIG.format(urls=urls, endpoint=f"{idp.base}/token", audience=AUDIENCE))
        gateway = build_gateway(load_config(path))
        served = stack.enter_context(serve_app(gateway.app))
        pool = gateway.router.mounts["pooled"].backend
        assert isinstance(pool, PoolBackend)
        await until(lambda: pool.state().up == 2, patience=20)
        assert (await call(served.base, "alice-token", 1)).status_code == 200

        replicas[0].stop()  # r0 goes away: ejected by its probes
        await until(lambda: pool.state().up == 1, patience=20)
        idp.stop()  # the identity provider goes away, and the gateway's own token is refused from now on
        for replica in guarded:
            replica.revoked |= {
                token for token, issued in issuer.issued.items() if issued.grant == "client_credentials"
            }
        assert not await held_within(lambda: pool.state().up != 1, 1.5)  # a replica still down is not readmitted
        assert pool.state().up == 1  # and the one that answers stays in rotation

        guarded[0].app = build("r0").streamable_http_app()  # r0 is back (a new process, a new app)
        replicas[0].start()
        await until(lambda: pool.state().up == 2, patience=40)  # readmitted while the endpoint is still down

        refused = await call(served.base, "bob-token", "while-down")  # bob has no token yet: none can be had
        assert refused.status_code == 502, refused.text
        answer = refused.json()
        assert answer["id"] == "while-down" and answer["error"]["code"] == ErrorCode.BAD_GATEWAY
        assert "token endpoint is unreachable" in answer["error"]["message"]

        idp.start()  # the identity provider is back: the first call is served, at either replica
        for n in range(4):
            response = await call(served.base, "bob-token", n)
            assert response.status_code == 200, response.text
            assert response.json()["result"]["content"][0]["text"] in {"r0", "r1"}

    for replica in guarded:  # what went without a token: probes only, never a caller's call
        for seen in replica.seen:
            if seen.authorization is None:
                assert seen.method == "server/discover", seen
    assert any(seen.authorization is None for seen in guarded[0].seen)  # r0 was readmitted by such a probe
