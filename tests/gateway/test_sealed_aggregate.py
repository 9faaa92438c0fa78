"""The aggregate's backend sessions continue on any instance: the handle seals each remote backend's session.

Three gateway processes share a `session_key` and the same remote backends: two SDK servers under
uvicorn (`alpha`, `beta`) and a pool of two (`pooled`), each recording the `Mcp-Session-Id` every
request carries, the ids its own `initialize` answers issued, and keeping a per-session counter
(its `count` tool). A legacy SDK client initializes at one instance's `/mcp`; its requests are then
steered to the others: each backend sees ONE session throughout (no second `initialize`) and the
counter goes on; SIGKILL the instance that opened it and the next call still goes on. A backend
that restarts (its sessions lost) is given a new session transparently. Attacks: another
principal's handle, a handle of another path, a backend never receives another backend's id.
(The bounds, in one process: test_sealed_aggregate_bounds.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import free_port, serve_app
from tests.gateway.sealed_backends import ALICE, BOB, Recorded, config_text
from tests.support import processes
from tests.support.requests import legacy_post, legacy_session
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio

INSTANCES = ("g1", "g2", "g3")


@dataclass
class Cluster:
    gateways: dict[str, subprocess.Popen[bytes]]
    ports: dict[str, int]
    backends: dict[str, Recorded]
    """alpha, beta, and the pool's replicas r1, r2."""
    running: dict[str, contextlib.ExitStack]
    """Each backend's uvicorn (closed to stop it)."""
    backend_ports: dict[str, int]

    def url(self, instance: str, path: str = "/mcp") -> str:
        return f"http://127.0.0.1:{self.ports[instance]}{path}"

    def start(self, name: str) -> None:
        stack = self.running[name] = contextlib.ExitStack()
        stack.enter_context(serve_app(self.backends[name], self.backend_ports[name]))

    def restart(self, name: str) -> None:
        """Stop backend `name`'s server and start a new one on its port: its sessions are gone."""
        self.running[name].close()
        self.backends[name].restart()
        self.start(name)


class Steer(httpx2.AsyncBaseTransport):
    """Sends every request to the gateway instance `target` names (the client's URL names the first)."""

    def __init__(self, ports: dict[str, int], target: str) -> None:
        self.ports = ports
        self.target = target
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(port=self.ports[self.target])
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    scratch = tmp_path_factory.mktemp("sealed-aggregate")
    backends = {name: Recorded(name) for name in ("alpha", "beta", "r1", "r2")}
    ports = {name: free_port() for name in backends}
    cluster = Cluster({}, {}, backends, {}, ports)
    try:
        for name in backends:
            cluster.start(name)
        url = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
        config = scratch / "gateway.toml"
        config.write_text(
            config_text({"alpha": url["alpha"], "beta": url["beta"], "pooled": [url["r1"], url["r2"]]}),
            encoding="utf-8",
        )
        for instance in INSTANCES:
            cluster.ports[instance] = port = free_port()
            env = {**os.environ, "MCP_GATEWAY_INSTANCE": instance}
            cluster.gateways[instance] = processes.start_gateway(config, port, scratch / f"{instance}.log", env=env)
        yield cluster
    finally:
        processes.stop_all(reversed(list(cluster.gateways.values())), patience=15)
        for stack in cluster.running.values():
            stack.close()


async def text_of(client: Client, tool: str) -> str:
    result = await client.call_tool(tool, {})
    assert not result.is_error, result
    return result.content[0].text  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def legacy_client(cluster: Cluster, first: str) -> AsyncIterator[tuple[Client, Steer]]:
    """The SDK's legacy client, initialized at instance `first`; move its requests with `steer.target`."""
    steer = Steer(cluster.ports, first)
    async with httpx2.AsyncClient(transport=steer, headers=ALICE, timeout=60) as http:
        streams = streamable_http_client(cluster.url(first), http_client=http)
        async with Client(streams, mode="legacy", cache=None) as client:
            assert client.protocol_version == "2025-11-25"
            yield client, steer


def snapshot(cluster: Cluster) -> dict[str, tuple[int, int, int]]:
    """Per backend: (initializes, session ids issued, requests carrying a session id) so far."""
    return {name: (b.initializes, len(b.issued), len(b.carried)) for name, b in cluster.backends.items()}


def since(cluster: Cluster, before: dict[str, tuple[int, int, int]], name: str) -> tuple[list[str], list[str]]:
    """Backend `name`'s issued ids and carried ids after `before`."""
    backend = cluster.backends[name]
    _, issued, carried = before[name]
    return backend.issued[issued:], backend.carried[carried:]


async def test_a_remote_backend_sees_one_session_through_every_instance(cluster: Cluster) -> None:
    before = snapshot(cluster)
    async with legacy_client(cluster, "g1") as (client, steer):
        # Opened at initialize, before any call: the remote members' sessions (in-process ones stay lazy).
        opened = {name: cluster.backends[name].initializes - before[name][0] for name in cluster.backends}
        assert opened["alpha"] == opened["beta"] == 1 and opened["r1"] + opened["r2"] == 1, opened
        counts = []
        for instance in ("g1", "g2", "g3", "g2", "g1", "g3"):
            steer.target = instance
            counts.append(await text_of(client, "alpha__count"))
        assert counts == ["1", "2", "3", "4", "5", "6"]  # the backend's per-session state went on
        pooled = []
        for instance in ("g3", "g2", "g1"):
            steer.target = instance
            pooled.append(await text_of(client, "pooled__count"))
        assert pooled == ["1", "2", "3"], repr(
            {n: (cluster.backends[n].issued, cluster.backends[n].carried) for n in ("r1", "r2")}
        )
        steer.target = "g2"
        assert await text_of(client, "beta__count") == "1"
    for name in ("alpha", "beta"):
        issued, carried = since(cluster, before, name)
        assert len(issued) == 1 and set(carried) == set(issued), (name, issued, set(carried))
    replicas = {name: since(cluster, before, name) for name in ("r1", "r2")}
    [holder] = [name for name, (issued, _) in replicas.items() if issued]
    issued, carried = replicas[holder]
    assert len(issued) == 1 and set(carried) == set(issued)
    assert not any(carried for name, (_, carried) in replicas.items() if name != holder)


def assert_own_ids_only(cluster: Cluster) -> None:
    """Every session id a backend received is one it issued itself: no handle's id reached another backend."""
    for name, backend in cluster.backends.items():
        assert set(backend.carried) <= set(backend.issued), name


async def test_another_principal_or_another_path_gets_an_unknown_session_and_reaches_no_backend(
    cluster: Cluster,
) -> None:
    async with httpx2.AsyncClient(timeout=60) as http:
        handle = await legacy_session(http, cluster.url("g1"), **ALICE)
        mount = await legacy_session(http, cluster.url("g1", "/mcp/alpha"), **ALICE)
        before = snapshot(cluster)
        at_aggregate = {"name": "alpha__count", "arguments": {}}
        at_mount = {"name": "count", "arguments": {}}
        for instance in ("g2", "g3", "g1"):
            refused = [
                await legacy_post(http, cluster.url(instance), handle, "tools/call", 9, at_aggregate, **BOB),
                await legacy_post(
                    http, cluster.url(instance, "/mcp/alpha"), handle, "tools/call", 9, at_mount, **ALICE
                ),
                await legacy_post(http, cluster.url(instance), mount, "tools/call", 9, at_aggregate, **ALICE),
            ]
            for answer in refused:
                assert answer.status_code == 404, (instance, answer.text)
                assert answer.json() == {
                    "jsonrpc": "2.0",
                    "id": 9,
                    "error": {"code": -32600, "message": "Session not found"},
                }
        assert snapshot(cluster) == before  # none of it reached a backend
        for instance, expected in (("g2", "1"), ("g3", "2")):  # the owner goes on, in the one backend session
            answer = await legacy_post(http, cluster.url(instance), handle, "tools/call", 12, at_aggregate, **ALICE)
            assert answer.status_code == 200, answer.text
            assert json_of(answer)["result"]["content"][0]["text"] == expected
    assert_own_ids_only(cluster)


async def test_a_backend_that_lost_its_sessions_gives_the_client_a_new_one_transparently(cluster: Cluster) -> None:
    before = snapshot(cluster)
    async with legacy_client(cluster, "g1") as (client, steer):
        assert await text_of(client, "alpha__count") == "1"
        await anyio.to_thread.run_sync(cluster.restart, "alpha")  # every session it held is gone
        steer.target = "g2"
        assert await text_of(client, "alpha__count") == "1"  # a new session at alpha (its state starts again)
        assert await text_of(client, "alpha__count") == "2"  # which goes on here
        steer.target = "g1"
        # The handle cannot change (the client keeps its session id): the instance that opened it learns of
        # the loss on its own next request, and opens a session of its own there too.
        assert await text_of(client, "alpha__count") == "1"
        assert await text_of(client, "beta__count") == "1"  # the other backends' sessions were never touched
    issued, carried = since(cluster, before, "alpha")
    assert len(issued) == 3 and set(carried) == set(issued)
    assert_own_ids_only(cluster)


async def test_sigkill_of_the_instance_that_opened_the_session_loses_no_backend_session(cluster: Cluster) -> None:
    before = snapshot(cluster)
    async with legacy_client(cluster, "g1") as (client, steer):
        assert await text_of(client, "beta__count") == "1"
        steer.target = "g3"
        assert await text_of(client, "beta__count") == "2"
        victim = cluster.gateways["g1"]
        victim.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(victim.wait, 30)
        for expected in ("3", "4"):
            steer.target = "g2"
            assert await text_of(client, "beta__count") == expected
        steer.target = "g3"
        assert await text_of(client, "pooled__count") == "1"
    issued, carried = since(cluster, before, "beta")
    assert len(issued) == 1 and set(carried) == set(issued)  # the same session id at beta throughout
    assert_own_ids_only(cluster)
