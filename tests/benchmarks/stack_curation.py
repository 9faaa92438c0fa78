"""Curation as an e2e stack: the router's path mount with a `Curation`, against the same mount without.

`router_mount_curated` is `router_mount` (stack_router.py) with deny globs and a rename that leave the
load's `echo` callable: every request passes the `CurationMiddleware` (the call-time question, and
for lists the streaming rewrite), so `--apps router_mount,router_mount_curated` is its cost.
"""

from __future__ import annotations

from starlette.types import ASGIApp

from mcp_middleware.router import Curation, InProcessBackend, ItemRules, McpRouter, Override

from .apps import Stack
from .stack_router import _AtMount

CURATION = Curation(
    tools=ItemRules(
        allow=("echo", "lookup", "set_*", "stream*"),
        deny=("*_admin", "drop_*"),
        rename={"lookup": "find"},
        override={"echo": Override(description="Echo", annotations={"readOnlyHint": True})},
    )
)


def curated(app: ASGIApp) -> ASGIApp:
    router = McpRouter(aggregate_path=None)
    router.mount("bench", InProcessBackend(app), curation=CURATION)
    return _AtMount(router)


STACKS = {"router_mount_curated": Stack(curated, lifespan=True)}
