"""Legacy sessions are bound to the principal that opened them, at every kind of backend and at the aggregate.

An attacker who learns another user's `Mcp-Session-Id` (a log, a proxy, a shared screen) presents
it with their own valid token. Every endpoint of the gateway — an in-process mount, a proxied
(`url`) mount, a stdio mount and the aggregate — must answer as if the session did not exist
(HTTP 404, a JSON-RPC error with the attacker's request id) and leave the session untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import Served, free_port, serve_app
from tests.servers import build_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
VERSION = "2025-11-25"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@contextlib.contextmanager
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, Served]]:
    with serve_app(build_server().streamable_http_app()) as remote:
        path = tmp_path / "gateway.toml"
        path.write_text(
            f"""
[[servers]]
name = "local"
app = "tests.servers:build_server"

[[servers]]
name = "remote"
url = "{remote.mcp_url}"

[[servers]]
name = "text"
command = ["{{python}}", "{ROOT / "examples" / "gateway" / "stdio_server.py"}"]

[auth]
mode = "dev"
auto_approve = true
""",
            encoding="utf-8",
        )
        port = free_port()
        built = build_gateway(load_config(path), port=port)
        with serve_app(built.app, port=port) as served:
            yield built, served


def token(gateway: Gateway, resource: str, subject: str) -> str:
    issued, _ = gateway.authorization_server.issue_access_token(
        subject=subject, client_id=f"{subject}-app", scope="", resource=resource
    )
    return str(issued)


async def post(
    http: httpx2.AsyncClient, url: str, bearer: str, body: dict[str, Any], session: str | None = None
) -> httpx2.Response:
    headers = {**HEADERS, "authorization": f"Bearer {bearer}", "mcp-protocol-version": VERSION}
    if session is not None:
        headers["mcp-session-id"] = session
    return await http.post(url, json=body, headers=headers)


def initialize(request_id: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "victim", "version": "1"}},
    }


@pytest.mark.parametrize("endpoint", ["/mcp", "/mcp/local", "/mcp/remote", "/mcp/text"])
async def test_another_principal_cannot_use_a_session(endpoint: str, tmp_path: Path) -> None:
    with gateway(tmp_path) as (built, served):
        resource = f"{built.base_url}{endpoint}"
        alice, mallory = token(built, resource, "alice"), token(built, resource, "mallory")
        url = f"{served.base}{endpoint}"
        async with httpx2.AsyncClient(timeout=30) as http:
            opened = await post(http, url, alice, initialize(1))
            assert opened.status_code == 200
            session = opened.headers["mcp-session-id"]
            await post(http, url, alice, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
            stolen = await post(http, url, mallory, {"jsonrpc": "2.0", "id": 66, "method": "tools/list"}, session)
            ended = await http.delete(
                url,
                headers={
                    "authorization": f"Bearer {mallory}",
                    "mcp-session-id": session,
                    "mcp-protocol-version": VERSION,
                },
            )
            still = await post(http, url, alice, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
    assert stolen.status_code == 404, stolen.text
    assert stolen.json()["error"]["message"] == "Session not found"
    assert stolen.json()["id"] in (66, None)  # the SDK's own binding (in-process, stdio) answers without the id
    assert ended.status_code == 404
    assert still.status_code == 200
    assert "tools" in still.text
