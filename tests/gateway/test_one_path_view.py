"""One path view: routing and every security decision see the same path, whatever the ASGI `root_path`.

The gateway is served under `uvicorn --root-path /gw` and mounted inside a FastAPI app at
`/gw`; an anonymous caller tries every spelling of the aggregate and the mounts (prefixes,
trailing slashes, doubled slashes, percent-encoding, the path without the root). None of
them reaches a backend without a token; with a token, both endpoints serve.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
from fastapi import FastAPI

from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, Served, serve_app
from tests.gateway.test_gateway import client

pytestmark = pytest.mark.anyio

TOKEN = "path-view-token"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}
MODERN_CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {
        "name": "local__echo",
        "arguments": {"text": "leak"},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    },
}
SPELLINGS = ("/mcp", "/mcp/", "//mcp", "/mcp/local", "/mcp/local/", "/mcp/%6cocal", "/MCP", "/mcp/./local")


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[[servers]]
name = "local"
app = "tests.servers:build_server"

[auth]
mode = "static"
[auth.tokens]
"{TOKEN}" = ["mcp"]
[auth.scopes]
"tools/call:slow" = ["local:slow"]

[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 1000
rate = 1000

[cache]
ttl = 30

[breaker]
consecutive_failures = 5
""",
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def under_root_path(tmp_path: Path) -> Iterator[tuple[Gateway, Served]]:
    gateway = build_gateway(load_config(config_file(tmp_path)))
    with serve_app(gateway.app, root_path="/gw") as served:
        yield gateway, served


@contextlib.contextmanager
def inside_fastapi(tmp_path: Path) -> Iterator[tuple[Gateway, Served]]:
    gateway = build_gateway(load_config(config_file(tmp_path)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with gateway.router.lifespan():
            yield

    host = FastAPI(lifespan=lifespan)

    @host.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    host.mount("/gw", gateway.app)
    with serve_app(host) as served:
        yield gateway, served


HOSTINGS = {"root_path": under_root_path, "fastapi": inside_fastapi}
PREFIX = {"root_path": "", "fastapi": "/gw"}
"""Where clients call: `uvicorn --root-path` stands behind a proxy that strips the prefix; FastAPI's mount does not."""


async def probe(http: httpx2.AsyncClient, url: str) -> list[int]:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    legacy = await http.post(url, json=INITIALIZE, headers=headers)
    modern = await http.post(
        url,
        json=MODERN_CALL,
        headers={
            **headers,
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": "local__echo",
        },
    )
    for answer in (legacy, modern):
        assert b"leak" not in answer.content
        if answer.status_code != 404:
            assert answer.json()["error"]["code"] in (-32012, -32600, -32601)
    return [legacy.status_code, modern.status_code]


@pytest.mark.parametrize("hosting", sorted(HOSTINGS))
async def test_no_spelling_of_a_path_reaches_a_backend_without_a_token(hosting: str, tmp_path: Path) -> None:
    with HOSTINGS[hosting](tmp_path) as (_, served):
        async with httpx2.AsyncClient(timeout=10) as http:
            for spelling in SPELLINGS:
                for url in (f"{served.base}/gw{spelling}", f"{served.base}{spelling}"):
                    statuses = await probe(http, url)
                    assert all(status in (401, 404) for status in statuses), (url, statuses)
            at_aggregate = await probe(http, f"{served.base}{PREFIX[hosting]}/mcp")
            at_mount = await probe(http, f"{served.base}{PREFIX[hosting]}/mcp/local")
    assert at_aggregate == [401, 401] and at_mount == [401, 401]


@pytest.mark.parametrize("hosting", sorted(HOSTINGS))
@pytest.mark.parametrize("era", ERAS)
async def test_both_endpoints_serve_and_decide_alike_under_a_prefix(hosting: str, era: Era, tmp_path: Path) -> None:
    with HOSTINGS[hosting](tmp_path) as (_, served):
        async with client(f"{served.base}{PREFIX[hosting]}/mcp", era, TOKEN) as aggregate:
            names = {tool.name for tool in (await aggregate.list_tools()).tools}
            echoed = await aggregate.call_tool("local__echo", {"text": "through the aggregate"})
            with pytest.raises(Exception):  # noqa: B017, PT011 - 403: the SDK client's own error type
                await aggregate.call_tool("local__slow", {"steps": 1})
        async with client(f"{served.base}{PREFIX[hosting]}/mcp/local", era, TOKEN) as mount:
            direct = await mount.call_tool("echo", {"text": "through the mount"})
            with pytest.raises(Exception):  # noqa: B017, PT011
                await mount.call_tool("slow", {"steps": 1})
    assert {"local__echo", "local__slow"} <= names
    assert echoed.content[0].text == "through the aggregate"  # type: ignore[union-attr]
    assert direct.content[0].text == "through the mount"  # type: ignore[union-attr]
