"""A pool of replicas behind one mount: balancing, sticky legacy sessions, safe failover, clear errors."""

from __future__ import annotations

import secrets
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.breaker import BreakerPolicy
from mcp_middleware.core import Principal, set_principal
from mcp_middleware.router import HttpBackend, McpRouter, PoolBackend
from tests.conftest import ERAS, Era, connect, free_port
from tests.router.pool_replica import build
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

MODERN = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2026-07-28",
}
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


class Seen:
    """Counts the POSTs a replica receives, and remembers their session ids."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.posts = 0
        self.session_posts = 0
        self.sessions: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
            for key, value in scope["headers"]:
                if key == b"mcp-session-id":
                    self.session_posts += 1
                    self.sessions.add(value.decode())
        await self.app(scope, receive, send)


def replicas(serve: Any, count: int = 3) -> tuple[list[str], list[Seen]]:
    seen = [Seen(build(f"r{index}").streamable_http_app()) for index in range(count)]
    return [serve(app).mcp_url for app in seen], seen


def pool_router(urls: list[str], **options: Any) -> McpRouter:
    router = McpRouter()
    options.setdefault("probe_interval", 0.2)
    router.mount("pool", PoolBackend([HttpBackend(url) for url in urls], **options))
    return router


def dead_url() -> str:
    """A loopback port nobody listens on: connections are refused (the request is never sent)."""
    return f"http://127.0.0.1:{free_port()}/mcp"


def modern_call(tool: str, arguments: dict[str, Any], request_id: int | str = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": ENVELOPE},
    }


async def post(url: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    extra = {"Mcp-Method": body["method"]}
    if body["method"] == "tools/call":
        extra["Mcp-Name"] = body["params"]["name"]
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(url, json=body, headers={**MODERN, **extra, **headers})


@pytest.mark.parametrize("era", ERAS)
async def test_requests_spread_over_the_replicas_and_a_legacy_session_stays_on_one(era: Era, serve: Any) -> None:
    urls, seen = replicas(serve)
    served = serve(pool_router(urls))
    answers: Counter[str] = Counter()
    async with connect(f"{served.base}/mcp/pool", era) as client:
        for _ in range(12):
            result = await client.call_tool("whoami", {})
            answers[result.content[0].text] += 1  # type: ignore[union-attr]
    if era == "legacy":
        assert len(answers) == 1, answers  # the session's replica answers every call
        holders = [replica for replica in seen if replica.sessions]
        assert len(holders) == 1 and len(holders[0].sessions) == 1
    else:
        assert set(answers) == {"r0", "r1", "r2"}, answers  # modern requests go anywhere


async def test_round_robin_takes_the_replicas_in_turn(serve: Any) -> None:
    urls, _ = replicas(serve)
    served = serve(pool_router(urls, balance="round_robin"))
    order = []
    for index in range(6):
        response = await post(f"{served.base}/mcp/pool", modern_call("whoami", {}, index))
        order.append(response.json()["result"]["content"][0]["text"])
    assert order[:3] == order[3:] and sorted(order[:3]) == ["r0", "r1", "r2"], order


async def test_a_replica_that_refuses_connections_is_skipped_for_every_call_and_ejected(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    urls, _ = replicas(serve, 2)
    down = dead_url()
    served = serve(pool_router([down, *urls], probe_interval=60))  # no probe: passive health alone
    caplog.set_level("WARNING", "mcp_middleware.router.pool")
    for index in range(8):
        # `record` must not run twice: a connection that was refused never delivered it, so it goes elsewhere.
        response = await post(f"{served.base}/mcp/pool", modern_call("record", {"entry": f"e{index}"}, index))
        assert response.status_code == 200, response.text
        assert "recorded" in response.json()["result"]["content"][0]["text"]
    ejected = [r for r in caplog.records if "ejected" in r.getMessage()]
    assert len(ejected) == 1, [r.getMessage() for r in caplog.records]  # one WARNING per transition
    assert "'pool' replica 0" in ejected[0].getMessage() and "2 of 3 replicas up" in ejected[0].getMessage()


async def test_every_replica_down_is_a_503_that_says_the_call_never_ran(serve: Any) -> None:
    served = serve(pool_router([dead_url(), dead_url()], probe_interval=60))
    response = await post(f"{served.base}/mcp/pool", modern_call("record", {"entry": "x"}, "req-7"))
    assert response.status_code == 503
    assert response.headers["retry-after"]
    error = response.json()
    assert error["id"] == "req-7"
    assert error["error"]["code"] == -32015
    assert error["error"]["data"] == {"backend": "pool", "mayHaveRun": False}


class HangUp:
    """A TCP server that reads a request and closes the connection without answering (a crash mid-call)."""

    def __init__(self, answer: bytes = b"") -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    if conn.recv(65536):
                        self.received += 1
                        conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hang_up() -> Iterator[HangUp]:
    server = HangUp()
    yield server
    server.close()


@pytest.fixture
def garbage() -> Iterator[HangUp]:
    server = HangUp(b"SSH-2.0-OpenSSH_9.6 not http at all\r\n\r\n")
    yield server
    server.close()


@pytest.mark.parametrize("broken", ["hang_up", "garbage"])
async def test_a_call_that_may_have_run_fails_over_only_when_it_is_safe(
    broken: str, serve: Any, request: pytest.FixtureRequest
) -> None:
    bad: HangUp = request.getfixturevalue(broken)
    urls, _ = replicas(serve, 1)
    pool = PoolBackend(
        [HttpBackend(bad.url), HttpBackend(urls[0])],
        balance="round_robin",
        probe_interval=60,
        retry_tools=["tools/call:search_*"],
        health=BreakerPolicy(consecutive_failures=100, failure_rate=None),  # stays in rotation for the test
    )
    router = McpRouter()
    router.mount("pool", pool)
    served = serve(router)
    url = f"{served.base}/mcp/pool"
    listed = await post(url, {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {"_meta": ENVELOPE}})
    assert listed.status_code == 200  # a list is safe: whichever replica failed, another answered
    # The pool learnt the tools' annotations from that list: `lookup` is read-only and idempotent.
    outcomes = {}
    for index, (tool, arguments) in enumerate(
        [("lookup", {"key": "a"}), ("search_docs", {"query": "q"}), ("record", {"entry": "once"})] * 2
    ):
        response = await post(url, modern_call(tool, arguments, index + 1))
        outcomes.setdefault(tool, []).append((response.status_code, response.json()))
    for status, body in outcomes["lookup"] + outcomes["search_docs"]:  # annotated / allowed: sent again elsewhere
        assert status == 200 and "@r0" in body["result"]["content"][0]["text"], body
    failed = outcomes["record"]  # round robin: every first attempt goes to the broken replica
    for status, body in failed:  # not safe to repeat, and it may have run: the client is told so
        assert status == 502
        assert body["error"]["code"] == -32017
        assert body["error"]["data"] == {"backend": "pool", "mayHaveRun": True}
        assert body["id"] in (3, 6)
    assert bad.received >= 1


class Refusing:
    """An MCP replica that answers 503 to everything (overloaded, or a balancer with nothing behind it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def test_a_replica_answering_503_is_passed_over_for_safe_calls(serve: Any) -> None:
    urls, _ = replicas(serve, 1)
    refusing = serve(Refusing()).mcp_url
    served = serve(pool_router([refusing, urls[0]], balance="round_robin", probe_interval=60))
    for index in range(4):
        response = await post(f"{served.base}/mcp/pool", modern_call("whoami", {}, index))
        assert response.status_code == 200 and response.json()["result"]["content"][0]["text"] == "r0"


async def test_forged_session_ids_reach_no_replica_and_leave_nothing_behind(serve: Any) -> None:
    urls, seen = replicas(serve)
    router = pool_router(urls)
    served = serve(router)
    pool = router.mounts["pool"].backend
    assert isinstance(pool, PoolBackend)
    async with connect(f"{served.base}/mcp/pool", "legacy") as client:
        await client.call_tool("whoami", {})
        real = next(iter(next(s for s in seen if s.sessions).sessions))
    before = sum(s.session_posts for s in seen)
    headers = {**MODERN, "MCP-Protocol-Version": "2025-11-25"}
    async with httpx2.AsyncClient(timeout=30) as http:
        for index in range(50):
            forged = secrets.token_hex(16) if index % 2 else real[:-1] + ("0" if real[-1] != "0" else "1")
            body = {
                "jsonrpc": "2.0",
                "id": index,
                "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}},
            }
            response = await http.post(
                f"{served.base}/mcp/pool", json=body, headers={**headers, "Mcp-Session-Id": forged}
            )
            assert response.status_code == 404
            assert response.json()["id"] == index and response.json()["error"]["code"] == -32600
    assert sum(s.session_posts for s in seen) == before  # no replica saw any of them
    assert len(pool.proxy.sessions) <= 1  # the real session at most (the client ended it)


async def test_a_legacy_session_on_a_lost_replica_is_told_it_is_gone(serve: Any) -> None:
    urls, _ = replicas(serve, 2)
    router = pool_router(urls, probe_interval=60)
    served = serve(router)
    pool = router.mounts["pool"].backend
    assert isinstance(pool, PoolBackend)
    async with connect(f"{served.base}/mcp/pool", "legacy") as client:
        first = (await client.call_tool("whoami", {})).content[0].text  # type: ignore[union-attr]
        lost = pool.proxy.replicas[int(first[1:])]
        lost.eject("test: replica lost")
        with pytest.raises(MCPError) as raised:
            await client.call_tool("whoami", {})
    assert "Session not found" in str(raised.value)
    assert len(pool.proxy.sessions) == 0


async def test_reinitialize_recreates_a_lost_session_on_another_replica(serve: Any) -> None:
    urls, seen = replicas(serve, 2)
    router = pool_router(urls, probe_interval=60, on_replica_loss="reinitialize")
    served = serve(router)
    pool = router.mounts["pool"].backend
    assert isinstance(pool, PoolBackend)
    async with connect(f"{served.base}/mcp/pool", "legacy") as client:
        first = (await client.call_tool("whoami", {})).content[0].text  # type: ignore[union-attr]
        pool.proxy.replicas[int(first[1:])].eject("test: replica lost")
        second = (await client.call_tool("whoami", {})).content[0].text  # type: ignore[union-attr]
        third = (await client.call_tool("lookup", {"key": "k"})).content[0].text  # type: ignore[union-attr]
    assert first != second and third == f"k@{second}"
    moved = seen[int(second[1:])]
    assert len(moved.sessions) == 1  # the client kept its id; the new replica saw its own


@pytest.mark.parametrize("era", ERAS)
async def test_the_aggregate_lists_and_calls_a_pool_with_a_replica_down(era: Era, serve: Any) -> None:
    urls, _ = replicas(serve, 2)
    router = McpRouter()
    router.mount("pool", PoolBackend([HttpBackend(dead_url()), *(HttpBackend(url) for url in urls)], probe_interval=60))
    served = serve(router)
    async with connect(f"{served.base}/mcp", era) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"pool__whoami", "pool__record"} <= names
        for index in range(6):
            answer = await client.call_tool("pool__record", {"entry": f"e{index}"})  # never sent to the dead one
            assert answer.content[0].text.startswith("recorded")  # type: ignore[union-attr]


class AsUser:
    """Stands in for an auth middleware: the `X-User` header is the principal (tests only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            user = dict(scope["headers"]).get(b"x-user")
            if user:
                set_principal(scope, Principal(subject=user.decode(), issuer="https://idp.test"))
        await self.app(scope, receive, send)


async def test_another_principal_presenting_a_session_id_is_told_it_does_not_exist(serve: Any) -> None:
    urls, seen = replicas(serve, 2)
    router = pool_router(urls, probe_interval=60)
    served = serve(AsUser(router))
    headers = {**MODERN, "MCP-Protocol-Version": "2025-11-25"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    async with httpx2.AsyncClient(base_url=served.base, timeout=30) as http:
        opened = await http.post("/mcp/pool", json=initialize, headers={**headers, "X-User": "alice"})
        session = opened.headers["mcp-session-id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        alice = {**headers, "X-User": "alice", "Mcp-Session-Id": session}
        assert (await http.post("/mcp/pool", json=note, headers=alice)).status_code == 202
        before = sum(s.session_posts for s in seen)
        for user in ("mallory", ""):  # another principal, and nobody: the session does not exist for them
            stolen = await http.post(
                "/mcp/pool", json=call, headers={**headers, "X-User": user, "Mcp-Session-Id": session}
            )
            assert stolen.status_code == 404 and stolen.json()["id"] == 2
        assert sum(s.session_posts for s in seen) == before
        mine = await http.post("/mcp/pool", json=call, headers=alice)
        assert mine.status_code == 200 and "whoami" not in mine.text  # the replica's answer (an SSE event)
        assert '"r' in mine.text


@pytest.mark.parametrize("broken", ["hang_up", "garbage"])
async def test_the_probe_ejects_a_replica_that_does_not_serve_mcp(
    broken: str, serve: Any, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    bad: HangUp = request.getfixturevalue(broken)  # accepts connections (a TCP check would pass), answers no MCP
    urls, _ = replicas(serve, 1)
    caplog.set_level("WARNING", "mcp_middleware.router.pool")
    router = pool_router([bad.url, urls[0]], probe_interval=0.1, probe_failures=2)
    serve(router)
    pool = router.mounts["pool"].backend
    assert isinstance(pool, PoolBackend)
    await until(lambda: any("ejected" in r.getMessage() for r in caplog.records), 20)
    state = pool.state()
    assert state.up == 1 and [r.state for r in state.replicas] == ["ejected", "up"]
    assert "probes failed" in state.replicas[0].last_error
