"""Mount many MCP servers under one path: `/mcp/{name}` path mounts and one aggregated `/mcp`.

See docs/router.md. The pieces:

* :class:`McpRouter`: the ASGI app (path mounts, the aggregate, lifespans);
* backends: :class:`InProcessBackend`, :class:`HttpBackend`, :class:`StdioBackend`;
* :class:`AggregateServer`: the aggregated endpoint, an MCP server of its own;
* :class:`NamingPolicy`, :class:`PrefixMode`, :class:`NameTable`: portable namespaced names;
* :class:`StreamingProxy`: the transparent streaming reverse proxy for remote mounts;
* :class:`Curation` (:class:`ItemRules`, :class:`Override`, :class:`ResourceRules`): what clients see of a
  backend (docs/governance.md); `McpRouter.virtual_server()` for endpoints assembled across backends.
* :class:`PoolBackend`: replicas of one backend, balanced, health-checked, failing over safely.
"""

from ._links import BackendUnavailable
from .aggregate import ROUTER_META_KEY, AggregateServer
from .backends import Backend, HttpBackend, InProcessBackend, StdioBackend
from .curation import Curation, ItemRules, Override, ResourceRules
from .mounts import McpRouter, Mount, MountMiddleware
from .names import Collision, NameTable, NamingPolicy, PrefixMode
from .pool import PoolBackend
from .proxy import StreamingProxy
from .registry import Applied, MountChanges, MountSpec
from .routes import Route

__all__ = [
    "ROUTER_META_KEY",
    "AggregateServer",
    "Applied",
    "Backend",
    "BackendUnavailable",
    "Collision",
    "Curation",
    "HttpBackend",
    "InProcessBackend",
    "ItemRules",
    "McpRouter",
    "Mount",
    "MountChanges",
    "MountMiddleware",
    "MountSpec",
    "NameTable",
    "NamingPolicy",
    "Override",
    "PoolBackend",
    "PrefixMode",
    "Route",
    "ResourceRules",
    "StdioBackend",
    "StreamingProxy",
]
