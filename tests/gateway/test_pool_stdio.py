"""`command` with `replicas = N` in the gateway: a pool of processes, its problems, `/readyz` and both eras."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import httpx2
import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.backends import load_backend
from mcp_middleware.gateway.cli import EXIT_OK, main
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.router import PoolBackend, StdioBackend
from tests.conftest import connect, serve_app
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.path, p.line, p.message) for p in caught.value.problems]


POOL = """
[[servers]]
name = "pooled"
command = ["{python}", "-m", "tests.router.pool_stdio_replica"]
replicas = 3
probe_interval = 0.25
probe_timeout = 5
retry_tools = ["tools/call:search_*"]
on_replica_loss = "reinitialize"  # a legacy session on a killed process moves to another one
[tracing]
access_log = false
"""


def test_a_command_with_replicas_is_a_pool_of_processes() -> None:
    (server,) = parse_config(POOL).servers
    assert server.kind == "command" and server.pool is not None
    assert (server.pool.replicas, server.pool.urls, server.pool.probe_interval) == (3, (), 0.25)
    assert server.pool.retry_tools == ("tools/call:search_*",) and server.pool.on_replica_loss == "reinitialize"
    backend = load_backend(server, ROOT)
    assert isinstance(backend, PoolBackend) and backend.name == "pooled"
    assert len(backend.replicas) == 3 and all(isinstance(r, StdioBackend) for r in backend.replicas)
    assert len({id(r) for r in backend.replicas}) == 3  # three processes, not one shared


def test_replicas_problems_name_their_key_and_line() -> None:
    found = problems(
        """
[[servers]]
name = "a"
command = "python a.py"
replicas = 0
[[servers]]
name = "b"
url = "http://one/mcp"
replicas = 2
[[servers]]
name = "c"
command = "python c.py"
url = ["http://x/mcp", "http://y/mcp"]
replicas = 2
[[servers]]
name = "d"
app = "tests.servers:build_server"
replicas = "three"
"""
    )
    assert any(p == "servers[0].replicas" and line == 5 and "between 1 and 64" in m for p, line, m in found), found
    assert any(p == "servers[1].replicas" and line == 9 and "url = [...]" in m for p, line, m in found), found
    assert any(p == "servers[2].url" and line == 13 and "not both" in m for p, line, m in found), found
    assert any(p == "servers[3].replicas" and line == 18 and "integer" in m for p, line, m in found), found


async def test_the_gateway_serves_the_pool_in_both_eras_and_restarts_a_killed_process() -> None:
    gateway = build_gateway(parse_config(POOL))
    with serve_app(gateway.app) as served:
        url = f"{served.base}/mcp/pooled"

        def ready() -> dict[str, object]:
            return httpx2.get(f"{served.base}/readyz", timeout=10).json()  # type: ignore[no-any-return]

        await until(lambda: ready()["status"] == "ready", 30)
        seen: Counter[str] = Counter()
        async with connect(url, "modern") as client:
            for _ in range(6):
                seen[(await client.call_tool("whoami", {})).content[0].text] += 1  # type: ignore[union-attr]
        assert len(seen) == 3, seen
        async with connect(f"{served.base}/mcp", "legacy") as client:  # the aggregate, the other era
            answer = await client.call_tool("pooled__lookup", {"key": "k"})
            assert answer.content[0].text.split("@")[1] in seen  # type: ignore[union-attr]
            victim = sorted(seen)[0]
            os.kill(int(victim.removeprefix("pid")), signal.SIGKILL)  # a child of this test's gateway, by its pid
            for index in range(12):  # reads keep being answered while it is restarted
                answer = await client.call_tool("pooled__lookup", {"key": f"k{index}"})
                assert not answer.is_error, answer
        checks = ready()["checks"]
        assert "pools" in checks  # type: ignore[operator]
        await until(lambda: ready()["status"] == "ready", 45)
        after: Counter[str] = Counter()
        async with connect(url, "modern") as client:
            for _ in range(6):
                after[(await client.call_tool("whoami", {})).content[0].text] += 1  # type: ignore[union-attr]
        assert victim not in after and len(after) == 3, (seen, after)


def test_list_servers_shows_every_replica_of_a_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        POOL + '[[servers]]\nname = "urls"\nurl = ["http://10.0.0.1:8000/mcp", "http://10.0.0.2:8000/mcp"]\n'
    )
    assert main(["list-servers", "-c", str(config)]) == EXIT_OK
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["pooled"].endswith("{python} -m tests.router.pool_stdio_replica (x3)")
    assert rows["urls"].endswith("http://10.0.0.1:8000/mcp, http://10.0.0.2:8000/mcp")
