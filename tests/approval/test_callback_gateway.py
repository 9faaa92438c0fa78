"""The callback in the gateway: served outside MCP authentication (and nothing else is reachable that way),
shared by two instances through Redis (a callback landing on the other one completes the call; a replayed
2026-07-28 retry is refused there too), refused when Redis is down, and what `check-config` says."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp import MCPError
from starlette.types import Receive, Scope, Send

from mcp_middleware.approval import CALLBACK_PATH
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import ConfigError, load_config, parse_config
from mcp_middleware.gateway.config_check import check_config
from tests.approval.callback_approver import CallbackApprover
from tests.approval.conftest import ENDPOINTS, GATEWAY_FILES, SECRET, Endpoint, Setup, client_for
from tests.approval.test_legacy_answers import answer, calling, open_session
from tests.approval.test_modern_state import asked, call, retry
from tests.conftest import ERAS, Era, RedisServer, Served, free_port, serve_app
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

SERVER = """
[[servers]]
name = "files"
app = "tests.approval.conftest:gateway_files"

[auth]
mode = "static"

[auth.tokens]
alice = {{ subject = "alice", scopes = ["mcp"] }}

[approval]
select = ["tools/call:purge_*"]
secrets = ["{secret}"]
{more}
"""


def config_text(hook: str | None, *, store: str = "memory://", timeout: float = 20) -> str:
    more = f'store = "{store}"\n'
    if hook is not None:
        more += f'approver = {{ webhook = "{hook}", callback = true, timeout = {timeout} }}\n'
    return SERVER.format(secret=SECRET, more=more)


@contextlib.contextmanager
def gateways(tmp_path: Path, text: str, count: int = 1, file: str = "gateway.toml") -> Iterator[list[Served]]:
    path = tmp_path / file
    path.write_text(text, encoding="utf-8")
    with contextlib.ExitStack() as stack:
        served = []
        for _ in range(count):
            port = free_port()
            served.append(stack.enter_context(serve_app(build_gateway(load_config(path), port=port).app, port=port)))
        yield served


def url_of(served: Served, endpoint: Endpoint) -> str:
    return f"{served.base}/mcp/files" if endpoint == "mount" else f"{served.base}/mcp"


def name_of(endpoint: Endpoint, tool: str) -> str:
    return tool if endpoint == "mount" else f"files__{tool}"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_the_gateway_serves_the_callback_without_an_mcp_token(
    era: Era, endpoint: Endpoint, tmp_path: Path, serve: Any
) -> None:
    approver = CallbackApprover("approve", delay=0.3)  # its callback carries no Authorization at all
    hook = serve(approver.app())
    GATEWAY_FILES.calls.clear()
    with gateways(tmp_path, config_text(f"{hook.base}/hook")) as (gateway,):
        async with client_for(url_of(gateway, endpoint), era, "alice") as client:
            deleted = await client.call_tool(name_of(endpoint, "delete_file"), {"path": "/cb/a"})
    assert deleted.content[0].text == "deleted /cb/a"  # type: ignore[union-attr]
    await until(lambda: approver.statuses == [200])  # (its own answer may come after the client's)
    assert approver.seen[0]["callback"].startswith(f"{gateway.base}{CALLBACK_PATH}")


@pytest.mark.parametrize("era", ERAS)
async def test_under_a_root_path_the_callback_url_carries_it_and_is_served_there(
    era: Era, tmp_path: Path, serve: Any
) -> None:
    """A gateway a host mounts under `/gw` (as Starlette's `Mount` does: the path keeps the prefix, `root_path`
    names it) hands out `…/gw/approval/callback/…`, and the callback is answered there (the path below the
    root is matched, as every other route of the gateway)."""
    approver = CallbackApprover("approve", delay=0.3)
    hook = serve(approver.app())
    GATEWAY_FILES.calls.clear()
    (tmp_path / "gateway.toml").write_text(config_text(f"{hook.base}/hook"), encoding="utf-8")
    inner = build_gateway(load_config(tmp_path / "gateway.toml")).app

    async def host(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            assert scope["path"].startswith("/gw/"), scope["path"]
            scope = {**scope, "root_path": "/gw"}
        await inner(scope, receive, send)

    with serve_app(host) as gateway:
        async with client_for(f"{gateway.base}/gw/mcp/files", era, "alice") as client:
            deleted = await client.call_tool("delete_file", {"path": "/cb/root"})
        await until(lambda: approver.statuses == [200])
    assert deleted.content[0].text == "deleted /cb/root"  # type: ignore[union-attr]
    assert approver.seen[0]["callback"].startswith(f"{gateway.base}/gw{CALLBACK_PATH}")


async def raw_post(served: Served, target: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
    """POST `target` byte for byte (an HTTP client would normalize `..`): (status, body)."""
    host, port = served.base.removeprefix("http://").split(":")
    request = (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\n{headers}Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body

    def exchange() -> bytes:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    answer = await anyio.to_thread.run_sync(exchange)
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


@pytest.mark.parametrize(
    "target",
    [
        "/approval/callback/../mcp",
        "/approval/callback/%2e%2e/mcp",
        "/approval/callback/..%2fmcp",
        "/approval/callback/..%2f..%2fmcp%2ffiles",
        "/approval%2fcallback/x/../../mcp",
        "/mcp/../approval/callback/x",
        "/mcp/files/../../approval/callback/x",
        "//approval/callback/../mcp",
    ],
)
async def test_nothing_else_is_reachable_through_the_callback_path(target: str, tmp_path: Path, serve: Any) -> None:
    hook = serve(CallbackApprover("never").app())
    listing = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    calling = orjson.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "read_file", "arguments": {"path": "/"}}}
    )
    with gateways(tmp_path, config_text(f"{hook.base}/hook")) as (gateway,):
        for body in (listing, calling):
            status, answer = await raw_post(gateway, target, body, "MCP-Protocol-Version: 2025-11-25\r\n")
            assert status in (401, 404), (status, answer)  # our 404, or the router's (authenticated) refusal
            assert b'"result"' not in answer and b"read_file" not in answer
        status, _ = await raw_post(gateway, "/mcp", listing, "MCP-Protocol-Version: 2025-11-25\r\n")
        assert status == 401  # the front door still asks for a token


@pytest.mark.parametrize("era", ERAS)
async def test_a_callback_landing_on_the_other_instance_completes_the_call(
    era: Era, tmp_path: Path, serve: Any, redis_server: RedisServer
) -> None:
    approver = CallbackApprover("approve", delay=0.3)
    hook = serve(approver.app())
    GATEWAY_FILES.calls.clear()
    text = config_text(f"{hook.base}/hook", store=redis_server.url)
    with gateways(tmp_path, text, count=2) as (first, second):
        approver.redirect = second.base  # the load balancer sends the approver's POST to the other instance
        async with client_for(url_of(first, "aggregate"), era, "alice") as client:
            purged = await client.call_tool("files__purge_cache", {"region": "eu"})
    assert purged.content[0].text == "purged eu"  # type: ignore[union-attr]
    await until(lambda: approver.statuses == [200])  # (its own answer may come after the client's)
    assert approver.seen[0]["callback"].startswith(first.base)  # it was sent the first instance's URL


async def test_a_replayed_retry_is_refused_at_the_other_instance(tmp_path: Path, redis_server: RedisServer) -> None:
    GATEWAY_FILES.calls.clear()
    with gateways(tmp_path, config_text(None, store=redis_server.url), count=2) as (first, second):
        at_first = Setup(first.base, GATEWAY_FILES, None)  # type: ignore[arg-type]
        at_second = Setup(second.base, GATEWAY_FILES, None)  # type: ignore[arg-type]
        state = await asked(at_first, "mount", "purge_cache", {"region": "us"})
        approving = retry(state)
        status, answer = await call(at_first, "mount", "purge_cache", {"region": "us"}, extra=approving)
        assert status == 200 and answer["result"]["content"][0]["text"] == "purged us"
        status, answer = await call(at_second, "mount", "purge_cache", {"region": "us"}, extra=approving)
        assert status == 403 and answer["error"]["data"]["approval"] == "state_replayed"
    assert GATEWAY_FILES.ran("purge_cache") == [{"region": "us"}]


async def test_redis_down_refuses_and_never_approves(tmp_path: Path, serve: Any, redis_server: RedisServer) -> None:
    approver = CallbackApprover("approve")
    hook = serve(approver.app())
    GATEWAY_FILES.calls.clear()
    with (
        gateways(tmp_path, config_text(None, store=redis_server.url)) as (client_gateway,),
        gateways(tmp_path, config_text(f"{hook.base}/hook", store=redis_server.url), file="hooked.toml") as (
            hook_gateway,
        ),
    ):
        at = Setup(client_gateway.base, GATEWAY_FILES, None)  # type: ignore[arg-type]
        state = await asked(at, "mount", "purge_cache", {"region": "ap"})
        redis_server.stop()
        status, answer = await call(at, "mount", "purge_cache", {"region": "ap"}, extra=retry(state))
        assert status == 403 and answer["error"]["data"]["approval"] == "store_unavailable"
        async with client_for(url_of(hook_gateway, "mount"), "modern", "alice") as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("purge_cache", {"region": "ap"})
        assert raised.value.data["approval"] == "store_unavailable"
    assert GATEWAY_FILES.ran("purge_cache") == [] and approver.seen == []  # refused before the webhook was asked


def test_the_callback_is_read_and_checked() -> None:
    settings = parse_config(config_text("https://hooks.example/h", store="redis://127.0.0.1:6379/3")).approval
    assert settings.webhook is not None and settings.webhook.callback and settings.store.endswith("/3")
    hosts_anywhere = config_text("https://hooks.example/h") + '\n[front_door]\nallowed_hosts = ["*"]\n'
    with pytest.raises(ConfigError) as raised:
        parse_config(hosts_anywhere)
    assert "approval.approver.callback" in [p.path for p in raised.value.problems]
    fixed = hosts_anywhere.replace("[auth]\n", '[gateway]\npublic_url = "https://gw.example"\n\n[auth]\n', 1)
    assert parse_config(fixed).approval.webhook is not None
    with pytest.raises(ConfigError) as raised:
        parse_config(config_text(None, store="memcached://x"))
    assert "approval.store" in [p.path for p in raised.value.problems]


def test_check_config_says_what_stays_per_process() -> None:
    keyed = f'[gateway]\nsession_key = "{SECRET}"\n\n[auth]'
    hooked = parse_config(config_text("https://hooks.example/h").replace("[auth]", keyed, 1))
    problems, _ = check_config(hooked, workers=2)
    assert any(p.path == "approval.store" and "callback" in p.message for p in problems), problems
    shared = config_text(None) + '\n[ratelimit]\nstore = "redis://127.0.0.1:6379/0"\n'
    _, warnings = check_config(parse_config(shared))
    assert any(p.path == "approval.store" and "spent" in p.message for p in warnings), warnings
    _, warnings = check_config(parse_config(config_text(None, store="redis://127.0.0.1:6379/0")))
    assert not any(p.path.startswith("approval") for p in warnings), warnings


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_legacy_answer_reaching_the_other_instance_is_delivered(
    endpoint: Endpoint, tmp_path: Path, redis_server: RedisServer
) -> None:
    """At the aggregate the question's id names the backend whose stack asked (router/answer_ids.py): the other
    instance passes the answer into that stack, whose approval layer hands it to the store."""
    text = (
        config_text(None, store=redis_server.url).replace(
            "[auth]\n", f'[gateway]\nsession_key = "{SECRET}"\n\n[auth]\n', 1
        )
        + '\n[auth.tokens.bob]\nsubject = "bob"\nscopes = ["mcp"]\n'
    )
    GATEWAY_FILES.calls.clear()
    yes = {"action": "accept", "content": {"approve": True}}
    with gateways(tmp_path, text, count=2) as (first, second):
        at_first, at_second = url_of(first, endpoint), url_of(second, endpoint)
        async with httpx2.AsyncClient(timeout=30) as http:
            session = await open_session(http, at_first, "alice", {"elicitation": {}})  # a sealed handle
            bobs = await open_session(http, at_second, "bob", {"elicitation": {}})
            delete = name_of(endpoint, "delete_file")
            async with calling(http, at_first, session, "alice", delete, {"path": "/x/y"}) as stream:
                question = (await stream.next_message())["id"]
                assert await answer(http, at_second, bobs, "bob", question, yes) == 404  # another principal's
                assert await answer(http, at_second, session, "alice", question, yes) == 202  # the other instance
                result = await stream.next_message()
            assert await answer(http, at_second, session, "alice", question, yes) == 404  # answered already
    assert result["id"] == 7 and result["result"]["content"][0]["text"] == "deleted /x/y"
    assert GATEWAY_FILES.ran("delete_file") == [{"path": "/x/y"}]
