"""The aggregate's backend sessions continue on any instance: the handle seals each remote backend's session.

Three gateway processes share a `session_key` and the same remote backends: two SDK servers under
uvicorn (`alpha`, `beta`) and a pool of two (`pooled`), each recording the `Mcp-Session-Id` every
request carries, the ids its own `initialize` answers issued, and keeping a per-session counter
(its `count` tool). A legacy SDK client initializes at one instance's `/mcp`; its requests are then
steered to the others: each backend sees ONE session throughout (no second `initialize`) and the
counter goes on; SIGKILL the instance that opened it and the next call still goes on. A backend
that restarts (its sessions lost) is given a new session transparently. Attacks: another
principal's handle, a handle of another path, a backend never receives another backend's id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core.sealing import Sealer
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from mcp_middleware.gateway.session_config import SESSION_PURPOSE
from mcp_middleware.gateway.session_handles import SessionHandles, SessionState, decode, encode
from tests.conftest import Served, free_port, serve_app
from tests.gateway.test_sealed_handles import SDK_INIT, owner
from tests.router.test_resource_updates import notes_server
from tests.support import processes
from tests.support.requests import legacy_headers, legacy_post, legacy_session
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio

KEY = "the sealed aggregate test's session key (32+ chars)"
ALICE = {"authorization": "Bearer alice-token"}
BOB = {"authorization": "Bearer bob-token"}
INSTANCES = ("g1", "g2", "g3")


def build_counter(name: str) -> MCPServer:
    """A backend with per-session state: `count` answers how often this session called it."""
    server = MCPServer(name)
    counts: Counter[str] = Counter()

    @server.tool()
    def count(ctx: Context) -> str:
        """This session's calls so far (keyed by the session id the request carries)."""
        request = ctx.request_context.request
        session = request.headers.get("mcp-session-id", "") if request is not None else ""
        counts[session] += 1
        return str(counts[session])

    return server


@dataclass
class Recorded:
    """A remote backend that records the sessions it issued and the session ids its requests carried."""

    name: str
    app: ASGIApp = field(init=False)
    issued: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    initializes: int = 0
    deleted: int = 0

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A new server process, as it were: every session it held is gone."""
        self.app = build_counter(self.name).streamable_http_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carried = dict(scope["headers"]).get(b"mcp-session-id")
        if carried is not None and scope["method"] == "POST":
            self.carried.append(carried.decode())
        self.deleted += scope["method"] == "DELETE"

        async def peeking() -> Message:
            message = await receive()
            if carried is None and b'"method":"initialize"' in message.get("body", b"").replace(b" ", b""):
                self.initializes += 1
            return message

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                issued = dict(message.get("headers", ())).get(b"mcp-session-id")
                if issued is not None and carried is None:
                    self.issued.append(issued.decode())
            await send(message)

        await self.app(scope, peeking, noting)

    def sessions(self) -> set[str]:
        return set(self.carried)


def config_text(urls: dict[str, str | list[str]], extra: str = "") -> str:
    servers = "".join(f'[[servers]]\nname = "{name}"\nurl = {_toml(url)}\n' for name, url in urls.items())
    return f"""
[gateway]
shutdown_timeout = 2
session_key = "{KEY}"
[auth]
mode = "static"
[auth.tokens]
"alice-token" = {{ scopes = ["mcp"], subject = "alice" }}
"bob-token" = {{ scopes = ["mcp"], subject = "bob" }}
[aggregate]
enabled = true
{extra}
[[servers]]
name = "local"
app = "tests.servers:build_server"
{servers}"""


def _toml(url: str | list[str]) -> str:
    return f'"{url}"' if isinstance(url, str) else "[" + ", ".join(f'"{u}"' for u in url) + "]"


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


def _gateway(path: Path, text: str) -> contextlib.AbstractContextManager[Served]:
    path.write_text(text, encoding="utf-8")
    return serve_app(build_gateway(load_config(path)).app)


@contextlib.contextmanager
def _built(path: Path, text: str) -> Iterator[tuple[Served, Gateway]]:
    """A gateway served in this process, and the gateway object (to reach its router)."""
    path.write_text(text, encoding="utf-8")
    gateway = build_gateway(load_config(path))
    with serve_app(gateway.app) as served:
        yield served, gateway


async def test_a_handle_carries_ten_backend_sessions_in_config_order_under_512_bytes(tmp_path: Path) -> None:
    counter = Recorded("many")
    names = [f"member{index:02d}" for index in range(11)]
    port = free_port()
    text = config_text(dict.fromkeys(names, f"http://127.0.0.1:{port}/mcp"))
    with serve_app(counter, port), _gateway(tmp_path / "many.toml", text) as gateway:
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, gateway.base + "/mcp", **ALICE)
            assert len(handle) < 512, len(handle)
            state = SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE)).open(handle).state
            assert [name for name, _ in state.backends] == names[:10]  # the first ten; the in-process one lazy
            assert counter.initializes == 10 and {value for _, value in state.backends} == set(counter.issued)
            for tool, expected in (("member10__count", 11), ("member03__count", 11)):
                params = {"name": tool, "arguments": {}}
                answer = await legacy_post(http, gateway.base + "/mcp", handle, "tools/call", 3, params, **ALICE)
                assert answer.status_code == 200, answer.text
                assert counter.initializes == expected  # the eleventh opened on first use; the fourth continued
    assert set(counter.carried) <= set(counter.issued)


async def test_a_backend_down_at_initialize_is_left_out_and_the_initialize_goes_on(tmp_path: Path) -> None:
    counter = Recorded("up")
    down = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    port = free_port()
    text = config_text({"down": down, "up": f"http://127.0.0.1:{port}/mcp"})
    with serve_app(counter, port), _gateway(tmp_path / "down.toml", text) as gateway:
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, gateway.base + "/mcp", **ALICE)
            state = SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE)).open(handle).state
            assert [name for name, _ in state.backends] == ["up"]
            params = {"name": "up__count", "arguments": {}}
            answer = await legacy_post(http, gateway.base + "/mcp", handle, "tools/call", 4, params, **ALICE)
            assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"


class NeverInitializes:
    """A remote backend that accepts connections and never answers an `initialize` (hung, overloaded)."""

    def __init__(self) -> None:
        self.asked = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.asked += 1
        await anyio.sleep(120)  # cancelled when the gateway gives up on it (or the server stops)


async def test_a_hung_backend_is_given_up_after_its_timeout_and_the_initialize_goes_on(tmp_path: Path) -> None:
    counter, hung = Recorded("up"), NeverInitializes()
    port = free_port()
    with serve_app(hung) as stuck:
        text = config_text({"up": f"http://127.0.0.1:{port}/mcp"})
        text += f'[[servers]]\nname = "hung"\nurl = "{stuck.mcp_url}"\ntimeout = 1\n'
        with serve_app(counter, port), _gateway(tmp_path / "hung.toml", text) as gateway:
            async with httpx2.AsyncClient(timeout=60) as http:
                with anyio.fail_after(30):  # bounded: the hung backend's 1 s, never its 120 s
                    handle = await legacy_session(http, gateway.base + "/mcp", **ALICE)
                state = SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE)).open(handle).state
                assert [name for name, _ in state.backends] == ["up"] and hung.asked >= 1
                params = {"name": "up__count", "arguments": {}}
                answer = await legacy_post(http, gateway.base + "/mcp", handle, "tools/call", 5, params, **ALICE)
                assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"


async def test_a_subscription_at_a_session_opened_ahead_of_use_reaches_the_client(tmp_path: Path) -> None:
    updates: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            arrived.set()

    port = free_port()
    with (
        serve_app(notes_server().streamable_http_app(), port),
        _gateway(tmp_path / "notes.toml", config_text({"notes": f"http://127.0.0.1:{port}/mcp"})) as gateway,
    ):
        async with httpx2.AsyncClient(headers=ALICE, timeout=60) as http:
            streams = streamable_http_client(gateway.base + "/mcp", http_client=http)
            async with Client(streams, mode="legacy", cache=None, message_handler=on_message) as client:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await client.subscribe_resource("notes+notes://today")  # its first use: the stream now
                await anyio.sleep(0.3)
                await client.call_tool("notes__touch", {"uri": "notes://today"})
                with anyio.fail_after(10):
                    await arrived.wait()
    assert updates == ["notes+notes://today"]


async def test_a_sealed_backend_session_outlives_this_instance_forgetting_the_client(tmp_path: Path) -> None:
    counter = Recorded("kept")
    port = free_port()
    text = config_text({"kept": f"http://127.0.0.1:{port}/mcp"})
    with (
        serve_app(counter, port),
        _built(tmp_path / "one.toml", text) as (one, built),
        _gateway(tmp_path / "two.toml", text) as two,
    ):
        relay = built.router.aggregate.relay if built.router.aggregate is not None else None
        assert relay is not None
        relay.sessions.max_sessions = 1  # the next session evicts the first here
        params = {"name": "kept__count", "arguments": {}}
        async with httpx2.AsyncClient(timeout=60) as http:
            first = await legacy_session(http, one.base + "/mcp", **ALICE)
            await legacy_session(http, one.base + "/mcp", **ALICE)  # evicts the first session at `one`
            await anyio.sleep(0.5)  # an eviction's DELETEs would have gone by now
            assert not counter.deleted
            answer = await legacy_post(http, two.base + "/mcp", first, "tools/call", 6, params, **ALICE)
            assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"
    assert counter.initializes == 2  # the first session's backend session was continued at `two`


@given(
    ids=st.lists(st.uuids().map(lambda u: u.hex), min_size=1, max_size=10),
    labels=st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=10, max_size=10),
)
def test_the_codec_gives_back_each_backends_replica(ids: list[str], labels: list[str | None]) -> None:
    backends = tuple((f"b{index}", value) for index, value in enumerate(ids))
    replicas = tuple((name, label) for (name, _), label in zip(backends, labels, strict=False) if label is not None)
    state = SessionState(owner("x"), "/mcp", uuid.uuid4().hex, SDK_INIT, None, backends, 1234567, replicas)
    assert decode(encode(state)) == state
    if not replicas:  # without pools, the plaintext is the one earlier releases of format 1 wrote
        assert encode(state) == encode(
            SessionState(owner("x"), "/mcp", state.session_id, SDK_INIT, None, backends, 1234567)
        )


async def test_the_clients_delete_on_another_instance_ends_the_sealed_backend_session(tmp_path: Path) -> None:
    counter = Recorded("ended")
    port = free_port()
    text = config_text({"ended": f"http://127.0.0.1:{port}/mcp"})
    with (
        serve_app(counter, port),
        _gateway(tmp_path / "one.toml", text) as one,
        _gateway(tmp_path / "two.toml", text) as two,
    ):
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, one.base + "/mcp", **ALICE)
            params = {"name": "ended__count", "arguments": {}}
            answer = await legacy_post(http, two.base + "/mcp", handle, "tools/call", 7, params, **ALICE)
            assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"
            deleted = await http.delete(two.base + "/mcp", headers=legacy_headers(handle, **ALICE))
            assert deleted.status_code in (200, 204), deleted.text
            for _ in range(100):  # ended through its stack, in the background (within 5 s)
                if counter.deleted:
                    break
                await anyio.sleep(0.05)
    assert counter.deleted == 1 and counter.initializes == 1  # the one sealed session, ended where it was deleted
