"""The router as e2e stacks: the test server behind a path mount, and behind the aggregate.

* `router_mount`: the load's `/mcp` is the router's in-process path mount `/mcp/bench`
  (the request goes straight to the backend app, no MCP session in between);
* `router_aggregate`: the load's `/mcp` is the aggregated endpoint over the one backend,
  `PrefixMode.NEVER` so the load's `echo` keeps its name: every call is answered by the
  aggregate's MCP server, which calls the backend through its shared SDK session;
* `router_pool`: the path mount's backend is a `PoolBackend` of one in-process replica (the pool's
  cost: its own read of the request, the replica's choice, breaker and tap), `router_pool3` of three
  (the same app three times: the choice among three, least in flight).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.router import InProcessBackend, McpRouter, NamingPolicy, PoolBackend, PrefixMode

from .apps import Stack


class _AtMount:
    """The load's `/mcp` is the router's `/mcp/bench`."""

    def __init__(self, router: ASGIApp) -> None:
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mcp":
            scope = {**scope, "path": "/mcp/bench", "raw_path": b"/mcp/bench"}
        await self.router(scope, receive, send)


def mounted(app: ASGIApp) -> ASGIApp:
    router = McpRouter(aggregate_path=None)
    router.mount("bench", InProcessBackend(app))
    return _AtMount(router)


def pooled(app: ASGIApp, replicas: int = 1) -> ASGIApp:
    router = McpRouter(aggregate_path=None)
    # One app lifespan: the other replicas are the same app, its lifespan already run by the first.
    members = [InProcessBackend(app, run_lifespan=index == 0) for index in range(replicas)]
    # No probing while measured: a probe is the pool's background work, not a request's (the one at
    # start-up is in both runs of the instruction count and cancels out).
    router.mount("bench", PoolBackend(members, probe_interval=3600))
    return _AtMount(router)


def aggregated(app: ASGIApp) -> ASGIApp:
    router = McpRouter(naming=NamingPolicy(prefix=PrefixMode.NEVER))
    router.mount("bench", InProcessBackend(app))
    return router


STACKS = {
    "router_mount": Stack(mounted, lifespan=True),
    "router_aggregate": Stack(aggregated, lifespan=True),
    "router_pool": Stack(pooled, lifespan=True),
    "router_pool3": Stack(lambda app: pooled(app, 3), lifespan=True),
}
