"""Three gateways sharing a `session_key` behind a real nginx doing plain round robin (no affinity).

The nginx config is examples/gateway/nginx.conf itself, with free ports and private paths; its
access log names the upstream (the instance) of every request. Backends: `inst`, in-process in
every gateway (its `whoami` answers the instance's name: a session moving between instances is
re-opened there from its sealed `initialize`), and `remote`, one separate uvicorn process every
gateway proxies to (its session is continued by whichever gateway gets the request). Proved with
the SDK's legacy client: a session's requests land on every instance and all succeed; SIGKILL the
instance that opened a session and the session's next request succeeds on another; SIGKILL the
instance running a call and the call fails (bounded, no hang) while the session goes on. The
TypeScript SDK and the MCP Inspector CLI are run against the same cluster when node is installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

from tests.conformance.suite import SuiteUnavailable, ensure_suite
from tests.conftest import free_port, require_binary
from tests.gateway.instance_server import build
from tests.gateway.test_inspector import CACHE as INSPECTOR
from tests.gateway.test_inspector import install_inspector
from tests.support import processes
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]
NGINX_EXAMPLE = ROOT / "examples" / "gateway" / "nginx.conf"
INSTANCES = ("g1", "g2", "g3")
KEY = "the scale-out test's shared session key (32+ chars)"

pytestmark = pytest.mark.anyio


def build_slow() -> MCPServer:
    """An in-process backend with a call that takes its time (and says where it runs: a file per instance)."""
    server = MCPServer("slow")

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, after noting which gateway instance runs this call."""
        (Path(os.environ["SEALED_MARKERS"]) / os.environ.get("MCP_GATEWAY_INSTANCE", "?")).write_text("running")
        await anyio.sleep(seconds)
        return "finished"

    @server.tool()
    def whoami() -> str:
        """The gateway instance this request reached."""
        return os.environ.get("MCP_GATEWAY_INSTANCE", "?")

    return server


def remote_app() -> ASGIApp:
    """The remote backend (`uvicorn --factory`): its `whoami` answers its own name."""
    return build().streamable_http_app()


@dataclass
class Cluster:
    base: str
    gateways: dict[str, subprocess.Popen[bytes]]
    ports: dict[str, int]
    access_log: Path
    markers: Path
    """Where the `slow` tool notes the instance running it."""

    def alive(self) -> set[str]:
        return {name for name, process in self.gateways.items() if process.poll() is None}

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def instances_after(self, start: int, path: str) -> list[str]:
        """The instance of each logged request to `path` after line `start` (nginx logs when a response ends)."""
        by_port = {str(port): name for name, port in self.ports.items()}
        found = []
        for line in self.log_lines()[start:]:
            method, uri, _, upstreams = line.split(" ", 3)
            if uri == path and method == "POST":
                last = upstreams.split(", ")[-1].rsplit(":", 1)[-1]  # after a retry: the one that answered
                found.append(by_port.get(last, "?"))
        return found


def nginx_config(listen: int, ports: dict[str, int], scratch: Path) -> str:
    """The shipped config with free ports and private temp paths (and the same routing)."""
    text = NGINX_EXAMPLE.read_text()
    text = text.replace("127.0.0.1:8100", f"127.0.0.1:{listen}")
    for index, instance in enumerate(INSTANCES, 1):
        text = text.replace(f"127.0.0.1:810{index}", f"127.0.0.1:{ports[instance]}")
    text = text.replace("pid /tmp/mcp-gateway-nginx.pid;", f"pid {scratch / 'nginx.pid'};")
    return re.sub(r"/tmp/mcp-gateway-nginx", str(scratch / "nginx"), text)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nginx = require_binary("nginx", "the sealed scale-out test runs gateways behind a real nginx")
    scratch = tmp_path_factory.mktemp("sealed-scale-out")
    started: list[subprocess.Popen[bytes]] = []
    try:
        remote_port = free_port()
        remote_log = scratch / "remote.log"
        command = [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:remote_app", "--port", str(remote_port)]
        env = {**os.environ, "MCP_GATEWAY_INSTANCE": "remote"}
        remote = processes.start(command, cwd=ROOT, env=env, stdout=remote_log.open("wb"), stderr=subprocess.STDOUT)
        started.append(remote)
        processes.wait_listening(remote_port, remote, remote_log)
        config = scratch / "gateway.toml"
        config.write_text(
            f"""
[gateway]
shutdown_timeout = 2
session_key = "${{env:MCP_GATEWAY_SESSION_KEY}}"
[[servers]]
name = "inst"
app = "tests.gateway.instance_server:build"
[[servers]]
name = "remote"
url = "http://127.0.0.1:{remote_port}/mcp"
[[servers]]
name = "slow"
app = "{__name__}:build_slow"
""",
            encoding="utf-8",
        )
        ports = {instance: free_port() for instance in INSTANCES}
        markers = scratch / "markers"
        markers.mkdir()
        gateways: dict[str, subprocess.Popen[bytes]] = {}
        for instance, port in ports.items():
            env = {**os.environ, "MCP_GATEWAY_INSTANCE": instance, "MCP_GATEWAY_SESSION_KEY": KEY}
            env["SEALED_MARKERS"] = str(markers)
            gateways[instance] = processes.start_gateway(config, port, scratch / f"{instance}.log", env=env)
            started.append(gateways[instance])
        listen = free_port()
        (scratch / "nginx").mkdir()
        nginx_conf = scratch / "nginx.conf"
        nginx_conf.write_text(nginx_config(listen, ports, scratch))
        nginx_log = scratch / "nginx.log"
        proxy = processes.start(
            [nginx, "-p", str(scratch), "-c", str(nginx_conf)], stdout=nginx_log.open("wb"), stderr=subprocess.STDOUT
        )
        started.append(proxy)
        processes.wait_listening(listen, proxy, nginx_log)
        yield Cluster(f"http://127.0.0.1:{listen}", gateways, ports, scratch / "nginx-access.log", markers)
    finally:
        processes.stop_all(reversed(started), patience=15)


async def whoami(session: Client, tool: str = "whoami") -> str:
    result = await session.call_tool(tool, {})
    return result.content[0].text  # type: ignore[union-attr]


async def test_a_legacy_session_is_served_by_every_instance(cluster: Cluster) -> None:
    async with Client(cluster.base + "/mcp/inst", mode="legacy", cache=None) as session:
        assert session.protocol_version == "2025-11-25"
        served = [await whoami(session) for _ in range(24)]
    assert set(served) == set(INSTANCES), served  # one session, every instance, every call answered


async def test_a_remote_backends_session_goes_on_through_every_instance(cluster: Cluster) -> None:
    start = len(cluster.log_lines())
    async with Client(cluster.base + "/mcp/remote", mode="legacy", cache=None) as session:
        answers = [await whoami(session) for _ in range(18)]
    assert answers == ["remote"] * 18
    assert set(cluster.instances_after(start, "/mcp/remote")) == set(INSTANCES)


async def test_the_aggregate_session_is_served_by_every_instance(cluster: Cluster) -> None:
    async with Client(cluster.base + "/mcp", mode="legacy", cache=None) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert {"inst__whoami", "remote__whoami"} <= tools
        served = [await whoami(session, "inst__whoami") for _ in range(12)]
        assert set(served) == set(INSTANCES)
        assert [await whoami(session, "remote__whoami") for _ in range(6)] == ["remote"] * 6


TS_CLIENT = """
import { Client } from "SDK/client/index.js";
import { StreamableHTTPClientTransport } from "SDK/client/streamableHttp.js";
const client = new Client({ name: "sealed-scale-out", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(process.argv[2]));
await client.connect(transport);
const served = [];
for (let i = 0; i < Number(process.argv[3]); i++) {
  const result = await client.callTool({ name: "whoami", arguments: {} });
  served.push(result.content[0].text);
}
console.log(JSON.stringify({ session: transport.sessionId.length, served }));
await transport.terminateSession();
await client.close();
"""


def node_tools() -> tuple[Path, Path]:
    """Node 22 and the TypeScript SDK the conformance suite installs (skipped locally without them; CI fails)."""
    try:
        suite = ensure_suite()
    except SuiteUnavailable as exc:
        unavailable(f"node and the TypeScript SDK: {exc}")
    # The suite's own dependency: <cache>/<suite version>/node_modules/@modelcontextprotocol/sdk.
    sdk = suite.cli.parents[3] / "@modelcontextprotocol" / "sdk" / "dist" / "esm"
    if not sdk.exists():
        unavailable(f"no TypeScript SDK at {sdk}")
    return suite.node, sdk


def unavailable(why: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


@pytest.mark.conformance  # node and npm, as the Inspector's own test
def test_the_typescript_sdk_session_is_served_by_every_instance(cluster: Cluster, tmp_path: Path) -> None:
    node, sdk = node_tools()
    script = tmp_path / "client.mjs"
    script.write_text(TS_CLIENT.replace("SDK/", f"{sdk.as_posix()}/"), encoding="utf-8")
    done = processes.run(
        [str(node), str(script), cluster.base + "/mcp/inst", "15"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < answer["session"] < 512
    assert set(answer["served"]) == set(INSTANCES), answer  # one TypeScript session, every instance


@pytest.mark.conformance
def test_the_inspector_cli_works_across_instances(cluster: Cluster) -> None:
    node, _ = node_tools()
    # As tests/gateway/test_inspector.py does (it may not have run yet, or runs now in another xdist worker):
    # the check and the install happen under the install lock, never on a half-written package.json.
    install_inspector()
    start = len(cluster.log_lines())
    served = []
    cli = [str(node), str(INSPECTOR / "node_modules" / ".bin" / "mcp-inspector"), "--cli", cluster.base + "/mcp/inst"]
    for _ in range(3):  # each run: a session of its own (initialize, initialized, tools/call, ...)
        done = processes.run(
            [*cli, "--transport", "http", "--method", "tools/call", "--tool-name", "whoami"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "MCP_CATALOG_PATH": str(INSPECTOR / "catalog.json")},
        )
        assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        served.append(json.loads(done.stdout)["content"][0]["text"])
    assert set(served) <= set(INSTANCES)
    assert set(cluster.instances_after(start, "/mcp/inst")) == set(INSTANCES)  # the sessions' requests moved


async def test_the_session_survives_the_sigkill_of_the_instance_that_opened_it(cluster: Cluster) -> None:
    start = len(cluster.log_lines())
    async with (
        Client(cluster.base + "/mcp/inst", mode="legacy", cache=None) as session,
        Client(cluster.base + "/mcp/remote", mode="legacy", cache=None) as remote,
    ):
        opener = cluster.instances_after(start, "/mcp/inst")[0]  # the initialize: the first POST of the session
        before = [await whoami(session) for _ in range(3)]
        victim = cluster.gateways[opener]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        after = [await whoami(session) for _ in range(12)]
        assert [await whoami(remote) for _ in range(6)] == ["remote"] * 6
    assert set(before) <= set(INSTANCES)
    assert opener not in after and set(after) == cluster.alive(), (opener, after)


async def test_an_in_flight_call_on_a_killed_instance_fails_and_the_session_goes_on(cluster: Cluster) -> None:
    outcome: list[object] = []
    async with Client(cluster.base + "/mcp/slow", mode="legacy", cache=None) as session:

        async def call() -> None:
            try:
                outcome.append(await session.call_tool("slow", {"seconds": 60}))
            except Exception as error:  # what the client sees of a stream that died with its instance
                outcome.append(error)

        with anyio.fail_after(90):  # bounded: a hang here is the failure
            async with anyio.create_task_group() as group:
                group.start_soon(call)
                await until(lambda: any(cluster.markers.iterdir()), patience=30)  # the call runs somewhere
                [marker] = list(cluster.markers.iterdir())
                victim = cluster.gateways[marker.name]
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(10)
        assert len(outcome) == 1 and isinstance(outcome[0], Exception), outcome  # failed, not finished
        after = [await whoami(session) for _ in range(4)]
    assert marker.name not in after and set(after) <= cluster.alive()
