"""`[[routes]]`: a tool, a prompt or resources of the aggregate served by a primary server, else by its fallbacks.

```toml
[[routes]]
tool = "search"              # or: prompt = "brief"  (the name every server of the route offers it under)
                             # or: resource_prefix = "docs://"  (every resource whose URI starts so)
primary = "vendor_a"         # [[servers]] names
fallback = ["vendor_b"]
allow_retry = false          # true: calling it twice is harmless (move on after a timeout too)
```

The file's problems name key and line: a server no `[[servers]]` entry names (with "did you
mean"), one left out of the aggregate, a server as its own fallback or twice, two routes for one
name. `check-config --probe` adds a warning for a route whose tool none of its servers lists.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

from mcp_middleware.router import Route
from mcp_middleware.router.routes import check_route

from .config_types import GatewayConfig, ServerSettings
from .toml_reader import Problem, Reader, did_you_mean

__all__ = ["live_routes", "route_warnings", "routes"]

logger = logging.getLogger("mcp_middleware.gateway")


def routes(top: Reader, servers: Sequence[ServerSettings]) -> tuple[Route, ...]:
    """Every `[[routes]]` table that is a valid route (the others are problems)."""
    by_name = {server.name: server for server in servers}
    found: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for table in top.tables("routes"):
        tool = table.string("tool", None)
        prompt = table.string("prompt", None)
        resource_prefix = table.string("resource_prefix", None)
        primary = table.string("primary")
        fallback = table.strings("fallback", ())
        allow_retry = table.boolean("allow_retry", False)
        before = len(table.problems)
        for key, message in check_route(tool, prompt, primary, fallback, None, resource_prefix):
            table.problem(key, message)
        for key, name in (("primary", primary), *(("fallback", name) for name in fallback)):
            if not isinstance(name, str) or (name in by_name and by_name[name].aggregate):
                continue
            if name in by_name:
                table.problem(key, f"{name!r} is not in the aggregate (its aggregate = false)")
            else:
                table.problem(key, f"{name!r} is not the name of a [[servers]] entry{did_you_mean(name, by_name)}")
        kind, name = (
            ("tool", tool)
            if tool is not None
            else ("prompt", prompt)
            if prompt is not None
            else ("resource_prefix", resource_prefix)
        )
        if isinstance(name, str) and name:
            other = seen.get((kind, name))
            if other is not None:
                table.problem(kind, f"{name!r} is routed by {other} already")
            seen.setdefault((kind, name), table.path)
        table.done()
        if len(table.problems) == before and isinstance(primary, str):
            found.append(
                Route(
                    primary,
                    fallback,
                    tool=tool,
                    prompt=prompt,
                    allow_retry=allow_retry,
                    resource_prefix=resource_prefix,
                )
            )
    return tuple(found)


def live_routes(configured: Sequence[Route], members: Collection[str]) -> tuple[Route, ...]:
    """The routes over the servers that are in the aggregate (an optional server may have been skipped)."""
    kept: list[Route] = []
    for route in configured:
        live = route.among(members)
        if live is None:
            logger.warning("route for %s skipped: none of its servers is in the aggregate", route.describe())
            continue
        if live.servers != route.servers:
            logger.warning("route for %s without %s (skipped)", route.describe(), set(route.servers) - set(members))
        kept.append(live)
    return tuple(kept)


def route_warnings(config: GatewayConfig, tools: Mapping[str, Sequence[str]]) -> list[Problem]:
    """`check-config --probe`: a route whose tool none of its reachable servers lists (or some do not)."""
    warnings: list[Problem] = []
    for index, route in enumerate(config.routes):
        if route.tool is None:
            continue
        reached = [server for server in route.servers if server in tools]
        offering = [server for server in reached if route.tool in tools[server]]
        if not reached or len(offering) == len(reached):
            continue
        path = f"routes[{index}].tool"
        if not offering:
            names = sorted({name for server in reached for name in tools[server]})
            message = f"{route.tool!r} is a tool of none of {', '.join(reached)}{did_you_mean(route.tool, names)}"
        else:
            missing = [server for server in reached if server not in offering]
            message = f"{route.tool!r} is not a tool of {', '.join(missing)}: calls that move there fail"
        warnings.append(config.problem(path, message))
    return warnings
