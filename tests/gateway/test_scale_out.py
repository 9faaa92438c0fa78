"""Three gateway processes behind a real nginx on loopback, sharing one real redis-server.

The nginx config is examples/gateway/nginx-affinity.conf itself (gateways without a session key; with
one, see test_sealed_scale_out.py and nginx.conf), with its ports and temp paths
replaced by free ones. Proved: a global rate limit holds across instances; a legacy
session keeps working over many requests (affinity by the instance tag in the session
id); the modern era needs no affinity; killing an instance loses no completed request
and new requests go on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
import redis
from mcp import Client, MCPError

from tests.conftest import RedisServer, free_port, require_binary
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
NGINX_EXAMPLE = ROOT / "examples" / "gateway" / "nginx-affinity.conf"  # gateways without a session key
INSTANCES = ("g1", "g2", "g3")
LIMIT = 30


@dataclass
class Cluster:
    url: str
    gateways: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    cache_url: str


def nginx_config(listen: int, ports: dict[str, int], scratch: Path) -> str:
    """The shipped config with free ports and private temp paths (and the same routing)."""
    text = NGINX_EXAMPLE.read_text()
    text = text.replace("127.0.0.1:8100", f"127.0.0.1:{listen}")
    for index, instance in enumerate(INSTANCES, 1):
        text = text.replace(f"127.0.0.1:810{index}", f"127.0.0.1:{ports[instance]}")
    text = re.sub(r"/tmp/mcp-gateway-nginx", str(scratch / "nginx"), text)
    return text


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nginx = require_binary("nginx", "the scale-out test runs gateways behind a real nginx")
    scratch = tmp_path_factory.mktemp("scale-out")
    redis_server = RedisServer(require_binary("redis-server", "shared rate limits"), scratch)
    redis_server.start()
    cache_url = redis_server.url.replace("/0", "/1")
    config = scratch / "gateway.toml"
    config.write_text(
        f"""
[gateway]
shutdown_timeout = 2
[[servers]]
name = "inst"
app = "tests.gateway.instance_server:build"
[aggregate]
enabled = false
[cache]
store = "{cache_url}"
honor_ttl_ms = false
[ratelimit]
store = "{redis_server.url}"
[[ratelimit.policies]]
name = "global"
selector = "tools/call:limited"
capacity = {LIMIT}
rate = 0.001
""",
        encoding="utf-8",
    )
    ports = {instance: free_port() for instance in INSTANCES}
    gateways: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    nginx_process: subprocess.Popen[bytes] | None = None
    try:
        for instance, port in ports.items():
            logs[instance] = scratch / f"{instance}.log"
            env = {**os.environ, "MCP_GATEWAY_INSTANCE": instance}
            gateways[instance] = processes.start(
                [sys.executable, "-m", "mcp_middleware.gateway", "serve", "-c", str(config), "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=logs[instance].open("wb"),
                stderr=subprocess.STDOUT,
            )
        for instance, port in ports.items():
            processes.wait_listening(port, gateways[instance], logs[instance])
        listen = free_port()
        (scratch / "nginx").mkdir()
        nginx_conf = scratch / "nginx.conf"
        nginx_conf.write_text(nginx_config(listen, ports, scratch))
        nginx_log = scratch / "nginx.log"
        text = nginx_conf.read_text().replace("pid /tmp/mcp-gateway-nginx.pid;", f"pid {scratch / 'nginx.pid'};")
        nginx_conf.write_text(text)
        nginx_process = processes.start(
            [nginx, "-p", str(scratch), "-c", str(nginx_conf)], stdout=nginx_log.open("wb"), stderr=subprocess.STDOUT
        )
        processes.wait_listening(listen, nginx_process, nginx_log)
        yield Cluster(f"http://127.0.0.1:{listen}/mcp/inst", gateways, logs, cache_url)
    finally:
        if nginx_process is not None:
            processes.stop(nginx_process, patience=15)  # nginx's master and workers: one group
        processes.stop_all(gateways.values(), patience=15)
        redis_server.stop()


@contextlib.asynccontextmanager
async def client(url: str, era: str) -> Iterator[Client]:  # type: ignore[misc]
    async with Client(url, mode="legacy" if era == "legacy" else "auto", cache=None) as session:
        yield session


async def whoami(session: Client, tool: str = "whoami") -> str:
    result = await session.call_tool(tool, {})
    return result.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_legacy_session_stays_on_its_instance(cluster: Cluster) -> None:
    for _ in range(3):  # three sessions, each pinned for its whole life
        async with client(cluster.url, "legacy") as session:
            served = {await whoami(session) for _ in range(15)}
            assert len(served) == 1 and served <= set(INSTANCES)


@pytest.mark.anyio
async def test_the_modern_era_needs_no_affinity(cluster: Cluster) -> None:
    async with client(cluster.url, "modern") as session:
        served = [await whoami(session) for _ in range(30)]
    assert set(served) == set(INSTANCES)  # spread over every instance, every call answered


@pytest.mark.anyio
async def test_a_global_limit_holds_across_instances(cluster: Cluster) -> None:
    admitted: list[str] = []
    refused: list[MCPError] = []

    async def one(session: Client) -> None:
        try:
            admitted.append(await whoami(session, "limited"))
        except MCPError as error:
            refused.append(error)

    async with client(cluster.url, "modern") as session, anyio.create_task_group() as group:
        for _ in range(2 * LIMIT):
            group.start_soon(one, session)
    assert len(admitted) == LIMIT, (len(admitted), [str(e) for e in refused[:3]])
    assert len(set(admitted)) > 1  # the instances admitted together what one bucket allows
    assert all(error.code == -32014 for error in refused)


@pytest.mark.anyio
async def test_killing_an_instance_loses_no_completed_request(cluster: Cluster) -> None:
    answers: list[str] = []
    failures: list[BaseException] = []
    victim = cluster.gateways["g2"]
    async with client(cluster.url, "modern") as session:
        for i in range(40):
            if i == 15:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(10)
            try:
                answers.append(await whoami(session))
            except (MCPError, httpx2.HTTPError) as error:
                failures.append(error)
    # Requests are sequential: none was in flight at the kill, so none may fail; after it, g2 serves none.
    assert failures == [] and len(answers) == 40
    assert "g2" not in answers[16:] and {"g1", "g3"} <= set(answers[16:])


def test_the_instances_share_the_cache_and_report_redis_ready(cluster: Cluster) -> None:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "prompts/list",  # a list no client of the other tests asked for
    }
    statuses = []
    store = redis.Redis.from_url(cluster.cache_url)
    stored_before = store.dbsize()
    with httpx2.Client(timeout=30) as http, store:
        for i in range(9):  # round robin: every instance answers three of them
            body = {"jsonrpc": "2.0", "id": i, "method": "prompts/list", "params": {"_meta": meta}}
            response = http.post(cluster.url, json=body, headers=headers)
            assert response.status_code == 200 and response.json()["id"] == i
            statuses.append(response.headers["x-mcp-cache"])
            if i == 0:
                # The instance stores the entry right after the last byte of its answer: wait for that write,
                # or a loaded machine can send the next request to another instance before it lands.
                deadline = time.monotonic() + 10
                while store.dbsize() <= stored_before and time.monotonic() < deadline:
                    time.sleep(0.01)
        ready = http.get(cluster.url.replace("/mcp/inst", "/readyz")).json()
    # One miss in all: the entry one instance stored is a hit on the others (Redis L2), not a miss per instance.
    assert statuses.count("miss") == 1 and statuses[0] == "miss", statuses
    assert ready["checks"]["stores"] == {**ready["checks"]["stores"], "ok": True}
    detail = ready["checks"]["stores"]["detail"]
    assert f"ratelimit {cluster.cache_url[:-1]}0: ok" in detail and f"cache {cluster.cache_url}: ok" in detail
