"""What the router costs.

1. In process (no sockets, `AsgiStreamTransport` into the router app, modern era, one
   `mcp.Client`): `tools/list` through the aggregate over 1, 10 and 100 in-process
   backends, cold (every backend asked again) and cached; `tools/call` of `echo`
   straight to a backend app, through a path mount and through the aggregate.
2. A remote HTTP backend behind a path mount: the test server in one uvicorn
   subprocess, the router (proxying to it) in another; the e2e load generator's
   `tools/call` throughput through the mount vs straight to the backend, alternating
   runs. Target: ≥ 0.6x of calling it directly. The same backend behind the aggregate
   (names kept) in the same run: target ≥ 0.8x of the path mount (issue 14).
3. Path-mount lookup cost with 1 and 10,000 mounts (it must not grow).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.types import ASGIApp

from mcp_middleware.core.lifespan import run_lifespan
from mcp_middleware.router import InProcessBackend, McpRouter
from mcp_middleware.router._asgi_transport import AsgiStreamTransport
from tests.router.servers import numbered_server
from tests.servers import build_server

from ._common import median, section, table, verdict
from .bench_e2e import HOST, ROOT, Server, free_port, load, wait_ready

TARGET_REMOTE_RATIO = 0.6
TARGET_AGGREGATE_RATIO = 0.8  # the aggregate vs the path mount of the same backend
TARGET_LIST_RATIO = 2.0  # tools/list over 100 backends vs 1, warm
ORIGIN = "http://127.0.0.1:1"  # the origin whose httpx2 request logs the router filters out (no socket)


# --- uvicorn factories for the remote case -----------------------------------------------------


def remote_mount_app() -> ASGIApp:
    """The router with one HTTP backend at /mcp/remote (`BENCH_ROUTER_BACKEND` is its URL)."""
    from mcp_middleware.router import HttpBackend

    router = McpRouter(aggregate_path=None)
    router.mount("remote", HttpBackend(os.environ["BENCH_ROUTER_BACKEND"]))
    return router


def remote_aggregate_app() -> ASGIApp:
    """The router's aggregate at /mcp over the same HTTP backend, names kept (the load calls `echo`)."""
    from mcp_middleware.router import HttpBackend, NamingPolicy, PrefixMode

    router = McpRouter(naming=NamingPolicy(prefix=PrefixMode.NEVER))
    router.mount("remote", HttpBackend(os.environ["BENCH_ROUTER_BACKEND"]))
    return router


def _start(factory: str, env: dict[str, str]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", HOST, "--port", str(port)]
    command += ["--loop", "asyncio", "--http", "h11", "--lifespan", "on", "--log-level", "warning", "--no-access-log"]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by Server.stop)
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    return Server(factory.rsplit(":", 1)[-1], port, process, log)


async def remote_ratio(quick: bool) -> dict[str, Any]:
    backend = _start("tests.benchmarks.apps:bare", {})
    env = {"BENCH_ROUTER_BACKEND": f"http://{HOST}:{backend.port}/mcp"}
    router = _start("tests.benchmarks.bench_router:remote_mount_app", env)
    aggregate = _start("tests.benchmarks.bench_router:remote_aggregate_app", env)
    repeats, duration, warmup, connections = (2, 2.0, 0.5, 16) if quick else (5, 5.0, 1.0, 16)
    direct: list[float] = []
    mounted: list[float] = []
    aggregated: list[float] = []
    backend_cpu: list[float] = []  # ms of backend CPU per request, straight
    proxy_cpu: list[float] = []  # ms of router CPU per proxied request
    try:
        await wait_ready(backend, app="bare")
        await wait_ready(router, path="/mcp/remote", app="bare")
        await wait_ready(aggregate, path="/mcp", app="bare")
        for index in range(repeats):
            order = [("direct", backend, "/mcp"), ("mounted", router, "/mcp/remote"), ("aggregate", aggregate, "/mcp")]
            for name, server, path in order if index % 2 == 0 else reversed(order):
                run = await load(
                    server,
                    index=index,
                    connections=connections,
                    warmup=warmup,
                    duration=duration,
                    path=path,
                    app="bare",
                )
                if run.errors:
                    raise RuntimeError(f"{name}: {run.errors} errors, first {run.first_error}")
                # CPU per request of the process under load (robust to other load on the machine):
                # the backend's when called straight, the router's when proxied.
                if name == "direct":
                    direct.append(run.rps)
                    backend_cpu.append(run.server_us_per_request / 1000)
                elif name == "aggregate":
                    aggregated.append(run.rps)
                else:
                    mounted.append(run.rps)
                    proxy_cpu.append(run.server_us_per_request / 1000)
    finally:
        aggregate.stop()
        router.stop()
        backend.stop()
    ratio = median(mounted) / median(direct)
    pairs = [a / m for a, m in zip(aggregated, mounted, strict=True)]
    return {
        "direct_rps": median(direct),
        "mounted_rps": median(mounted),
        "aggregate_rps": median(aggregated),
        "aggregate_ratio": median(pairs),
        "aggregate_ratios": pairs,
        "ratio": ratio,
        "repeats": repeats,
        "backend_cpu_ms": median(backend_cpu),
        "proxy_cpu_ms": median(proxy_cpu),
    }


RAW_LIST = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{'
    b'"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
)
RAW_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/list",
}
"""A modern `tools/list` as bytes: the aggregate's own cost, without an SDK client parsing 100 tools."""


# --- in process --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client_of(app: ASGIApp, path: str) -> AsyncIterator[Client]:
    transport = AsgiStreamTransport(app)
    async with (
        httpx2.AsyncClient(transport=transport, base_url=ORIGIN, timeout=None) as http,
        Client(streamable_http_client(f"{ORIGIN}{path}", http_client=http), cache=None) as client,
    ):
        yield client


async def timed(action: Callable[[], Awaitable[Any]], samples: int) -> float:
    """Median milliseconds of `action` over `samples` runs (after two warm-ups)."""
    for _ in range(2):
        await action()
    times: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        await action()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


async def in_process(quick: bool) -> dict[str, Any]:
    samples = 15 if quick else 60
    lists: dict[int, dict[str, float]] = {}
    for count in (1, 10, 100):
        router = McpRouter(page_size=1000, list_ttl=3600)
        for index in range(count):
            router.mount(f"s{index}", numbered_server(index).streamable_http_app())
        async with run_lifespan(router), client_of(router, "/mcp") as client:

            async def cold(client: Client = client, router: McpRouter = router, count: int = count) -> None:
                for server in router.mounts:  # as after every backend's list_changed
                    router.aggregate.catalog.forget(server, frozenset({"tools"}))
                assert len((await client.list_tools()).tools) == count

            async def cached(client: Client = client) -> None:
                await client.list_tools()

            transport = AsgiStreamTransport(router)
            async with httpx2.AsyncClient(transport=transport, base_url=ORIGIN, timeout=None) as http:

                async def raw(http: httpx2.AsyncClient = http, count: int = count) -> None:
                    answer = await http.post("/mcp", content=RAW_LIST, headers=RAW_HEADERS)
                    assert answer.status_code == 200 and answer.content.count(b'"name"') >= count

                lists[count] = {
                    "cold": await timed(cold, max(5, samples // (1 + count // 20))),
                    "cached": await timed(cached, samples),
                    "server": await timed(raw, samples),
                }

    calls: dict[str, float] = {}
    direct_app = build_server().streamable_http_app()
    router = McpRouter()
    router.mount("test", InProcessBackend(build_server().streamable_http_app()))
    async with run_lifespan(direct_app), run_lifespan(router):
        for label, app, path, tool in (
            ("direct", direct_app, "/mcp", "echo"),
            ("path mount", router, "/mcp/test", "echo"),
            ("aggregate", router, "/mcp", "test__echo"),
        ):
            async with client_of(app, path) as client:

                async def call(client: Client = client, tool: str = tool) -> None:
                    await client.call_tool(tool, {"text": "x" * 900})

                calls[label] = await timed(call, samples * 4)
    return {"lists_ms": lists, "calls_ms": calls}


async def lookup_cost(quick: bool) -> dict[int, float]:
    """Nanoseconds per dispatch of a request to a mount whose app does nothing, by mount count."""
    requests = 20_000 if quick else 100_000

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        return None

    routers: dict[int, tuple[McpRouter, dict[str, Any]]] = {}
    for count in (1, 10_000):
        router = McpRouter(aggregate_path=None)
        for index in range(count):
            router.mount(f"s{index}", InProcessBackend(nothing))
        scope = {"type": "http", "path": f"/mcp/s{count - 1}", "root_path": "", "method": "POST", "headers": []}
        routers[count] = (router, scope)
    samples: dict[int, list[float]] = {count: [] for count in routers}
    rounds = 9
    for round_index in range(rounds):  # interleaved rounds: noise falls on both alike
        for count in sorted(routers, reverse=bool(round_index % 2)):
            router, scope = routers[count]
            started = time.perf_counter_ns()
            for _ in range(requests // rounds):
                await router(dict(scope), nothing, nothing)
            samples[count].append((time.perf_counter_ns() - started) / (requests // rounds))
    return {count: median(values) for count, values in samples.items()}


def main(quick: bool) -> dict[str, Any]:
    figures = asyncio.run(in_process(quick))
    lookups = asyncio.run(lookup_cost(quick))
    remote = asyncio.run(remote_ratio(quick))
    lists, calls = figures["lists_ms"], figures["calls_ms"]
    lines = [section("router: in process (modern era, one client, medians)")]
    lines.append(
        table(
            ["backends", "tools/list cold ms", "warm, SDK client ms", "warm, raw request ms"],
            [[count, f"{v['cold']:.2f}", f"{v['cached']:.2f}", f"{v['server']:.2f}"] for count, v in lists.items()],
        )
    )
    lines.append(
        table(
            ["tools/call echo", "ms", "x direct"],
            [[k, f"{v:.2f}", f"{v / calls['direct']:.2f}"] for k, v in calls.items()],
        )
    )
    lines.append(section("router: path-mount lookup"))
    lines.append(table(["mounts", "ns per dispatch"], [[k, f"{v:.0f}"] for k, v in lookups.items()]))
    lines.append(section("router: remote HTTP backend behind a path mount (uvicorn subprocesses, e2e load)"))
    lines.append(
        f"  direct {remote['direct_rps']:.0f} req/s, through the mount {remote['mounted_rps']:.0f} req/s: "
        f"ratio {remote['ratio']:.2f} (≥ {TARGET_REMOTE_RATIO}: {verdict(remote['ratio'] >= TARGET_REMOTE_RATIO)})"
    )
    lines.append(
        f"  the same backend behind the aggregate {remote['aggregate_rps']:.0f} req/s: "
        f"{remote['aggregate_ratio']:.2f} x the mount (median of per-repeat ratios "
        f"{', '.join(f'{r:.2f}' for r in remote['aggregate_ratios'])}; ≥ {TARGET_AGGREGATE_RATIO}: "
        f"{verdict(remote['aggregate_ratio'] >= TARGET_AGGREGATE_RATIO)})"
    )
    lines.append(
        f"  CPU per request: backend {remote['backend_cpu_ms']:.2f} ms, router (proxy) {remote['proxy_cpu_ms']:.2f} ms"
        f" = {remote['proxy_cpu_ms'] / remote['backend_cpu_ms']:.2f} x the backend's own"
    )
    print("\n".join(lines))
    lookup_ratio = lookups[10_000] / lookups[1]
    list_ratio = lists[100]["server"] / lists[1]["server"]
    client_list_ratio = lists[100]["cached"] / lists[1]["cached"]
    call_ratio = calls["path mount"] / calls["aggregate"]
    return {
        **figures,
        "lookup_ns": lookups,
        "remote": remote,
        "targets": [
            [
                "remote HTTP backend behind a path mount",
                round(remote["ratio"], 3),
                "x direct",
                "≥ 0.6",
                remote["ratio"] >= TARGET_REMOTE_RATIO,
            ],
            ["mount lookup, 10,000 vs 1 mounts", round(lookup_ratio, 2), "x", "≤ 1.5 (O(1))", lookup_ratio <= 1.5],
            [
                "remote backend: aggregate tools/call vs its path mount",
                round(remote["aggregate_ratio"], 3),
                "x mount",
                f"≥ {TARGET_AGGREGATE_RATIO}",
                remote["aggregate_ratio"] >= TARGET_AGGREGATE_RATIO,
            ],
            [
                "in-process backend: aggregate tools/call vs its path mount (one client)",
                round(call_ratio, 3),
                "x mount",
                f"≥ {TARGET_AGGREGATE_RATIO}",
                call_ratio >= TARGET_AGGREGATE_RATIO,
            ],
            [
                "aggregate tools/list, warm, 100 backends vs 1 (raw request: the aggregate's own cost)",
                round(list_ratio, 2),
                "x",
                f"≤ {TARGET_LIST_RATIO}",
                list_ratio <= TARGET_LIST_RATIO,
            ],
            [
                "aggregate tools/list, warm, 100 backends vs 1 (SDK client, which parses 100 tools)",
                round(client_list_ratio, 2),
                "x",
                "(information)",
                True,
            ],
        ],
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
