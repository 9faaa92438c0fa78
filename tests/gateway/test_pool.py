"""A `url = [...]` server in the gateway: the config, `/readyz` (degraded, then not ready) and `/metrics`."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.router import PoolBackend
from tests.conftest import connect, free_port, serve_app
from tests.router.pool_replica import build
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.path, p.line, p.message) for p in caught.value.problems]


def test_a_list_of_urls_is_a_pool_with_its_options() -> None:
    config = parse_config(
        """
[[servers]]
name = "search"
url = ["http://10.0.0.1:8000/mcp", "http://10.0.0.2:8000/mcp"]
balance = "round_robin"
probe_interval = 2
retry_tools = ["tools/call:search_*"]
on_replica_loss = "reinitialize"
"""
    )
    (server,) = config.servers
    assert server.kind == "url" and server.url == "http://10.0.0.1:8000/mcp"
    assert server.pool is not None
    assert server.pool.urls == ("http://10.0.0.1:8000/mcp", "http://10.0.0.2:8000/mcp")
    assert (server.pool.balance, server.pool.probe_interval, server.pool.probe_failures) == ("round_robin", 2.0, 2)
    assert server.pool.retry_tools == ("tools/call:search_*",) and server.pool.on_replica_loss == "reinitialize"
    backend = build_gateway(config).router.mounts["search"].backend
    assert isinstance(backend, PoolBackend) and len(backend.replicas) == 2 and backend.name == "search"


def test_pool_problems_name_their_key_and_line() -> None:
    found = problems(
        """
[[servers]]
name = "a"
url = []
[[servers]]
name = "b"
url = ["http://ok/mcp", "ftp://nope"]
balance = "random"
probe_failures = 0
retry_tools = ["tool/call:x"]
[[servers]]
name = "c"
url = "http://one/mcp"
on_replica_loss = "reinitialize"
"""
    )
    assert ("servers[0].url", 4, "must name at least one replica") in found
    assert any(p == "servers[1].url" and "'ftp://nope'" in m for p, _, m in found), found
    assert any(p == "servers[1].balance" and line == 8 for p, line, _ in found), found
    assert any(p == "servers[1].probe_failures" for p, _, _ in found), found
    assert any(p == "servers[1].retry_tools[0]" and "'tools/call'" in m for p, _, m in found), found
    assert any(p == "servers[2].on_replica_loss" and "pool" in m and line == 14 for p, line, m in found), found
    assert len([p for p, _, _ in found if p == "servers[2].on_replica_loss"]) == 1, found


def _gateway_config(urls: list[str], optional: bool = False) -> str:
    listed = ", ".join(f'"{url}"' for url in urls)
    return f"""
[[servers]]
name = "pooled"
url = [{listed}]
probe_interval = 0.2
probe_timeout = 1
optional = {str(optional).lower()}
[[servers]]
name = "local"
app = "tests.servers:build_server"
[tracing]
access_log = false
"""


async def test_readyz_is_degraded_while_a_replica_is_ejected_and_metrics_label_replicas_by_config(
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    with serve_app(build("r0").streamable_http_app()) as r0, serve_app(build("r1").streamable_http_app()) as r1:
        gateway = build_gateway(parse_config(_gateway_config([r0.mcp_url, dead, r1.mcp_url])))
        with serve_app(gateway.app) as served:
            async with connect(f"{served.base}/mcp/pooled", "modern") as client:
                for _ in range(6):
                    assert (await client.call_tool("lookup", {"key": "k"})).content[0].text.startswith("k@r")  # type: ignore[union-attr]

            def ready() -> httpx2.Response:
                return httpx2.get(f"{served.base}/readyz", timeout=10)

            await until(lambda: ready().json()["status"] == "degraded", 10)
            answer = ready()
            assert answer.status_code == 200
            detail = answer.json()["checks"]["pools"]["detail"]
            assert detail.startswith("pooled: 2/3 replicas up") and "pooled replica 1" in detail, detail
            # Hostile session ids and names: no new label values (replicas are labelled by their place in the config).
            headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
            for index in range(20):
                body = {"jsonrpc": "2.0", "id": index, "method": "ping"}
                forged: dict[str, str | bytes] = {
                    **headers,
                    "mcp-session-id": secrets.token_hex(8).encode() + b"\xc3\xa9",
                }
                response = httpx2.post(f"{served.base}/mcp/pooled", json=body, headers=forged)
                assert response.status_code == 404 and response.json()["id"] == index
            metrics = httpx2.get(f"{served.base}/metrics").text
    up = re.findall(r"mcp_middleware_pool_replica_up\{([^}]*)\} ([0-9.]+)", metrics)
    labels = {re.search(r'mcp_middleware_replica="([^"]*)"', found).group(1): value for found, value in up}  # type: ignore[union-attr]
    assert labels == {"0": "1.0", "1": "0.0", "2": "1.0"}, up


async def test_readyz_is_not_ready_when_no_replica_is_up() -> None:
    dead = [f"http://127.0.0.1:{free_port()}/mcp" for _ in range(2)]
    gateway = build_gateway(parse_config(_gateway_config(dead)))
    with serve_app(gateway.app) as served:

        def status() -> Any:
            return httpx2.get(f"{served.base}/readyz", timeout=10)

        await until(lambda: status().status_code == 503, 10)
        detail = status().json()["checks"]["pools"]["detail"]
        assert detail.startswith("pooled: 0/2 replicas up"), detail
        body = {"jsonrpc": "2.0", "id": "x", "method": "tools/list", "params": {}}
        answer = httpx2.post(f"{served.base}/mcp/pooled", json=body, headers={"accept": "application/json"})
        assert answer.status_code == 503 and answer.json()["error"]["data"] == {
            "backend": "pooled",
            "mayHaveRun": False,
        }
    optional = build_gateway(parse_config(_gateway_config(dead, optional=True)))
    with serve_app(optional.app) as served:
        await until(lambda: httpx2.get(f"{served.base}/readyz", timeout=10).json()["status"] == "degraded", 10)
