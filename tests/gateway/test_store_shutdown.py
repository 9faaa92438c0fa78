"""The gateway's Redis connections end with it: every store it opened is closed when it stops.

A real `redis-server` holds all four stores (rate-limit buckets, window quotas, cache entries, approval
nonces and answers with their pub/sub channel). The gateway serves in this process, so a connection it
failed to close would stay open after it stopped: `CLIENT LIST` on the server shows every connection
left, named by role (`mcp-middleware:ratelimit`, `:quota`, `:cache`, `:approval`), and collecting the
stopped gateway warns of anything left unclosed. Reloads that replace the server build new stacks on
the same stores: the connections do not grow with reloads.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.approval.callback_approver import CallbackApprover
from tests.approval.conftest import SECRET
from tests.conftest import RedisServer, Served, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

CONFIG = """
[[servers]]
name = "files"
app = "tests.approval.conftest:gateway_files"
{more}

[auth]
mode = "static"
[auth.tokens]
alice = {{ subject = "alice", scopes = ["mcp"] }}

[ratelimit]
store = "{redis}/0"
[[ratelimit.policies]]
name = "per-user"
capacity = 1000
rate = 1000
[[ratelimit.policies]]
name = "daily"
limit = "1000/day"

[cache]
store = "{redis}/1"

[approval]
select = ["tools/call:purge_*"]
secrets = ["{secret}"]
store = "{redis}/2"
approver = {{ webhook = "{hook}", callback = true, timeout = 20 }}
"""

ROLES = {"mcp-middleware:ratelimit", "mcp-middleware:quota", "mcp-middleware:cache", "mcp-middleware:approval"}


def write(path: Path, server: RedisServer, hook: str, more: str = "") -> Path:
    base = server.url.removesuffix("/0")
    path.write_text(CONFIG.format(redis=base, secret=SECRET, hook=hook, more=more), encoding="utf-8")
    return path


@pytest.fixture
def watcher(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url) as connection:
        yield connection


def others(watcher: redis.Redis) -> list[dict[str, Any]]:
    """Every connection to the server but the watcher's own."""
    mine = watcher.client_id()
    return [entry for entry in watcher.client_list() if int(entry["id"]) != mine]


def quotas(watcher: redis.Redis) -> int:
    """The quota storage's connections (one per stack before: a reload replacing a server added one)."""
    return sum(1 for entry in others(watcher) if entry["name"] == "mcp-middleware:quota")


def names(watcher: redis.Redis) -> set[str]:
    return {str(entry["name"]) for entry in others(watcher)}


async def use_every_store(url: str) -> None:
    """A cached list, rate-limited calls (bucket and quota), and a call held for a webhook's approval."""
    async with client(url, "modern", "alice") as session:
        for _ in range(2):
            await session.list_tools()
        result = await session.call_tool("purge_cache", {"region": "eu"})  # held until the webhook calls back
        assert not result.is_error, result


async def test_every_redis_connection_is_closed_when_the_gateway_stops(
    tmp_path: Path, redis_server: RedisServer, watcher: redis.Redis
) -> None:
    approver = CallbackApprover("approve")
    with serve_app(approver.app()) as hook:
        port = free_port()
        gateway = build_gateway(
            load_config(write(tmp_path / "gateway.toml", redis_server, f"{hook.base}/hook")), port=port
        )
        gc.collect()  # what earlier tests left unreachable warns now, not below
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with serve_app(gateway.app, port=port) as served:
                await use_every_store(f"{served.base}/mcp/files")
                assert approver.seen, "the call was not held for the webhook"
                assert names(watcher) >= ROLES, others(watcher)  # every store connected, each named by its role
            await until(lambda: others(watcher) == [], patience=10)  # the gateway stopped: nothing of it is left
            del gateway, served
            gc.collect()
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert unclosed == [], unclosed  # no "unclosed Connection" (redis-py), transport (asyncio), stream (anyio)


async def test_reloads_open_no_connection_and_the_last_ones_close_at_shutdown(
    tmp_path: Path, redis_server: RedisServer, watcher: redis.Redis
) -> None:
    approver = CallbackApprover("approve")
    with serve_app(approver.app()) as hook:
        path = write(tmp_path / "gateway.toml", redis_server, f"{hook.base}/hook")
        port = free_port()
        gateway = build_gateway(load_config(path), port=port)
        assert gateway.reloader is not None
        with serve_app(gateway.app, port=port) as served:
            await use_every_store(f"{served.base}/mcp/files")
            before = quotas(watcher)
            assert before >= 1
            for n in range(4):  # each reload replaces the server: a new stack on the gateway's stores
                write(path, redis_server, f"{hook.base}/hook", more=f"timeout = {100 + n}")
                applied = await _reload(gateway, served)
                assert applied == ("files",), applied
                await use_every_store(f"{served.base}/mcp/files")
            assert quotas(watcher) == before, others(watcher)  # the same storage: not one more per reload
            assert names(watcher) <= ROLES
        await until(lambda: others(watcher) == [], patience=10)


async def _reload(gateway: Gateway, served: Served) -> tuple[str, ...]:
    """Reload in the server's event loop (the router's task group lives there); the servers replaced."""
    assert gateway.reloader is not None and served.loop is not None
    running = asyncio.run_coroutine_threadsafe(gateway.reloader.reload(), served.loop)
    applied = await asyncio.wrap_future(running)
    assert applied is not None, "the reload was refused"
    return applied.replaced
