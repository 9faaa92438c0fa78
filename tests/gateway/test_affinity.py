"""Session affinity: session ids say which gateway instance holds them; a misrouted one is refused clearly."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import pytest
from starlette.types import ASGIApp

from mcp_middleware.gateway.affinity import SessionAffinityMiddleware
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import build_server

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_real_clients_work_through_the_tagging(serve: Callable[[ASGIApp], Served], era: Era) -> None:
    served = serve(SessionAffinityMiddleware(build_server().streamable_http_app(), instance="g1"))
    async with connect(served.mcp_url, era) as client:
        for text in ("one", "two", "three"):  # a legacy session: several requests on the tagged id
            result = await client.call_tool("echo", {"text": text})
            assert result.content[0].text == text  # type: ignore[union-attr]


def test_session_ids_are_tagged_and_untagged(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(SessionAffinityMiddleware(build_server().streamable_http_app(), instance="g7"))
    with httpx2.Client() as http:
        init = http.post(served.mcp_url, json=INIT, headers=HEADERS)
        session = init.headers["mcp-session-id"]
        assert session.startswith("g7.") and len(session) > 3
        headers = {**HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        ping = http.post(served.mcp_url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=headers)
        assert ping.status_code == 200


def test_a_session_of_another_instance_is_refused(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(SessionAffinityMiddleware(build_server().streamable_http_app(), instance="g1"))
    headers = {**HEADERS, "mcp-session-id": "g2.abc", "mcp-protocol-version": "2025-11-25"}
    response = httpx2.post(served.mcp_url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=headers)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Session belongs to gateway instance 'g2', not 'g1'"
    untagged = httpx2.post(
        served.mcp_url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers={**headers, "mcp-session-id": "x"}
    )
    assert untagged.status_code == 404 and untagged.json()["error"]["message"] == "Session not found"


@pytest.mark.parametrize("instance", ["", "a.b", "x" * 64, "ünï"])
def test_the_instance_must_be_a_dns_label(instance: str) -> None:
    with pytest.raises(ValueError, match="DNS label"):
        SessionAffinityMiddleware(build_server().streamable_http_app(), instance=instance)
