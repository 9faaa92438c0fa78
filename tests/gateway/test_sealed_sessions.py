"""Sealed session handles: two gateways sharing a `session_key` serve each other's legacy sessions.

Two real gateways (built from one config, each under its own uvicorn) in front of an in-process
backend (re-opened on the other gateway from the sealed `initialize`) and a remote one (a bare SDK
server under uvicorn: its session is continued, not re-created). Static tokens stand for two
principals. Attacks: another principal's handle, another key's, an expired one, one minted for
another path, a garbage header, a modern-era request carrying a handle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import Component, Outcome
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import Served, serve_app
from tests.servers import build_server
from tests.support.decisions import DecisionRecorder
from tests.support.requests import (
    legacy_headers,
    legacy_post,
    legacy_session,
    modern_body,
    modern_headers,
)
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
KEY = "a session key for the tests, long enough to seal"
OTHER_KEY = "another gateway's session key, also long enough"
ALICE = {"authorization": "Bearer alice-token"}
BOB = {"authorization": "Bearer bob-token"}


def config_text(remote_url: str, key: str = KEY, extra: str = "") -> str:
    return f"""
[gateway]
session_key = ["{key}"]
{extra}
[auth]
mode = "static"
[auth.tokens]
"alice-token" = {{ scopes = ["mcp"], subject = "alice" }}
"bob-token" = {{ scopes = ["mcp"], subject = "bob" }}
[aggregate]
enabled = true
[[servers]]
name = "local"
app = "tests.servers:build_server"
[[servers]]
name = "remote"
url = "{remote_url}"
"""


class SessionsSeen:
    """The remote backend's view: the session ids its requests carried, and how many opened one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.opened = 0
        self.ids: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        session = dict(scope["headers"]).get(b"mcp-session-id")
        if session is not None:
            self.ids.add(session)

        async def peeking() -> Message:  # an `initialize` opens a session (probes and modern calls do not)
            message = await receive()
            if session is None and b'"method":"initialize"' in message.get("body", b"").replace(b" ", b""):
                self.opened += 1
            return message

        await self.app(scope, peeking, send)


@dataclass
class Pair:
    one: str
    two: str
    remote: SessionsSeen
    foreign: str
    """A gateway with another key."""
    decisions: DecisionRecorder
    """What the second gateway decided."""


def _gateway(
    tmp_path: Path, name: str, text: str, recorder: list[DecisionRecorder] | None = None
) -> contextlib.AbstractContextManager[Served]:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    app = build_gateway(load_config(path)).app
    if recorder is not None:
        recorder.append(DecisionRecorder(app))
        app = recorder[-1]
    return serve_app(app)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    seen = SessionsSeen(build_server().streamable_http_app())
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(serve_app(seen))
        text = config_text(remote.mcp_url)
        one = stack.enter_context(_gateway(tmp_path, "one", text))
        recorded: list[DecisionRecorder] = []
        two = stack.enter_context(_gateway(tmp_path, "two", text, recorded))
        foreign = stack.enter_context(_gateway(tmp_path, "foreign", config_text(remote.mcp_url, OTHER_KEY)))
        yield Pair(one.base, two.base, seen, foreign.base, recorded[0])


async def echo(
    http: httpx2.AsyncClient, url: str, session: str, text: str, who: dict[str, str] = ALICE, request_id: int = 7
) -> str:
    params = {"name": "echo", "arguments": {"text": text}}
    response = await legacy_post(http, url, session, "tools/call", request_id, params, **who)
    assert response.status_code == 200, response.text
    assert response.headers.get("mcp-session-id", session) == session  # the inner id never leaks
    return str(json_of(response)["result"]["content"][0]["text"])


@pytest.mark.parametrize("mount", ["/mcp/local", "/mcp/remote", "/mcp"])
async def test_a_session_opened_on_one_gateway_goes_on_at_the_other(pair: Pair, mount: str) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        handle = await legacy_session(http, pair.one + mount, **ALICE)
        assert len(handle) < 512 and "-" not in handle[:1]
        tool = "echo" if mount != "/mcp" else "local__echo"
        for index, base in enumerate([pair.two, pair.one, pair.two, pair.two, pair.one]):
            params = {"name": tool, "arguments": {"text": f"t{index}"}}
            answer = await legacy_post(http, base + mount, handle, "tools/call", index, params, **ALICE)
            assert answer.status_code == 200, answer.text
            assert json_of(answer)["result"]["content"][0]["text"] == f"t{index}"


async def test_a_remote_backends_session_is_continued_not_recreated(pair: Pair) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        handle = await legacy_session(http, pair.one + "/mcp/remote", **ALICE)
        assert pair.remote.opened == 1 and len(pair.remote.ids) == 1
        for base in (pair.two, pair.one, pair.two):
            assert await echo(http, base + "/mcp/remote", handle, "across") == "across"
        # The other gateway sent its requests into the backend's own session: no second initialize there.
        assert pair.remote.opened == 1 and len(pair.remote.ids) == 1


async def test_another_principals_handle_is_an_unknown_session(pair: Pair) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        for mount in ("/mcp/local", "/mcp/remote", "/mcp"):
            handle = await legacy_session(http, pair.one + mount, **ALICE)
            for base in (pair.one, pair.two):
                stolen = await legacy_post(http, base + mount, handle, "ping", 41, **BOB)
                assert stolen.status_code == 404, (mount, base, stolen.text)
                assert stolen.json()["error"]["message"] == "Session not found" and stolen.json()["id"] == 41
            assert (
                await echo(
                    http, pair.two + "/mcp/local", await legacy_session(http, pair.one + "/mcp/local", **ALICE), "x"
                )
                == "x"
            )


async def test_handles_that_do_not_open_are_unknown_sessions_with_the_request_id(pair: Pair) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        local = await legacy_session(http, pair.one + "/mcp/local", **ALICE)
        foreign = await legacy_session(http, pair.foreign + "/mcp/local", **ALICE)
        flipped = local[:-3] + ("A" if local[-3] != "A" else "B") + local[-2:]
        for session in (foreign, flipped, "x" * 10_000, "not-a-handle", local + "="):
            answer = await legacy_post(http, pair.two + "/mcp/local", session, "ping", 99, **ALICE)
            assert answer.status_code == 404, answer.text
            assert answer.json() == {
                "jsonrpc": "2.0",
                "id": 99,
                "error": {"code": -32600, "message": "Session not found"},
            }
        # A handle minted on one path names nothing on another.
        other_path = await legacy_post(http, pair.two + "/mcp/remote", local, "ping", 5, **ALICE)
        assert other_path.status_code == 404 and other_path.json()["id"] == 5


async def test_an_expired_handle_is_refused(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(serve_app(build_server().streamable_http_app()))
        short = stack.enter_context(_gateway(tmp_path, "short", config_text(remote.mcp_url, extra="session_ttl = 1")))
        async with httpx2.AsyncClient(timeout=30) as http:
            handle = await legacy_session(http, short.base + "/mcp/local", **ALICE)
            assert await echo(http, short.base + "/mcp/local", handle, "fresh") == "fresh"
            await anyio.sleep(2.5)
            answer = await legacy_post(http, short.base + "/mcp/local", handle, "ping", 3, **ALICE)
            assert answer.status_code == 404 and answer.json()["id"] == 3


async def test_a_modern_request_carrying_a_handle_is_served(pair: Pair) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        handle = await legacy_session(http, pair.one + "/mcp/remote", **ALICE)
        body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "now"}})
        for base, mount in [(pair.two, "/mcp/local"), (pair.two, "/mcp/remote"), (pair.one, "/mcp/remote")]:
            answer = await http.post(
                base + mount,
                content=body,
                headers=modern_headers("tools/call", "echo", **ALICE, **{"mcp-session-id": handle}),
            )
            assert answer.status_code == 200, answer.text
            assert json_of(answer)["result"]["content"][0]["text"] == "now"
            assert "mcp-session-id" not in answer.headers
        assert handle.encode() not in pair.remote.ids  # a handle never reaches a backend, in either era


async def test_delete_ends_the_session_where_it_is_deleted(pair: Pair) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        handle = await legacy_session(http, pair.one + "/mcp/local", **ALICE)
        deleted = await http.delete(pair.one + "/mcp/local", headers=legacy_headers(handle, **ALICE))
        assert deleted.status_code in (200, 204), deleted.text
        again = await legacy_post(http, pair.one + "/mcp/local", handle, "ping", 8, **ALICE)
        assert again.status_code == 404  # not re-opened by the instance that deleted it


async def test_concurrent_requests_reopen_a_session_once_and_the_decisions_say_why(pair: Pair) -> None:
    async with httpx2.AsyncClient(timeout=60) as http:
        handle = await legacy_session(http, pair.one + "/mcp/local", **ALICE)
        answers: list[str] = []

        async def one(index: int) -> None:
            answers.append(await echo(http, pair.two + "/mcp/local", handle, f"c{index}", request_id=100 + index))

        async with anyio.create_task_group() as group:
            for index in range(8):
                group.start_soon(one, index)
        assert sorted(answers) == sorted(f"c{index}" for index in range(8))
        assert pair.decisions.outcomes(Component.SESSION) == [Outcome.REOPENED]  # once, for all eight
        remote = await legacy_session(http, pair.one + "/mcp/remote", **ALICE)
        assert await echo(http, pair.two + "/mcp/remote", remote, "r") == "r"
        assert pair.decisions.outcomes(Component.SESSION) == [Outcome.REOPENED]  # continued, not re-opened
        bad = await legacy_post(http, pair.two + "/mcp/local", handle[:-4] + "AAAA", "ping", 1, **ALICE)
        other_path = await legacy_post(http, pair.two + "/mcp/remote", handle, "ping", 2, **ALICE)
        stolen = await legacy_post(http, pair.two + "/mcp/local", handle, "ping", 3, **BOB)
        assert (bad.status_code, other_path.status_code, stolen.status_code) == (404, 404, 404)
    assert pair.decisions.of(Component.SESSION)[1:] == [
        (Outcome.REJECTED, {"reason": "tampered"}),
        (Outcome.REJECTED, {"reason": "path"}),
        (Outcome.SESSION_REFUSED, {}),
    ]
    assert (Outcome.SESSION_REFUSED, {}) in pair.decisions.of(Component.ROUTER)  # another principal's: no `moved`


async def test_a_pool_session_goes_on_at_its_replica_through_another_gateway(tmp_path: Path) -> None:
    replicas = [SessionsSeen(build_server().streamable_http_app()) for _ in range(2)]
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(serve_app(replica)).mcp_url for replica in replicas]
        remote = stack.enter_context(serve_app(build_server().streamable_http_app()))
        text = config_text(remote.mcp_url) + f'[[servers]]\nname = "pooled"\nurl = ["{urls[0]}", "{urls[1]}"]\n'
        one = stack.enter_context(_gateway(tmp_path, "one", text))
        two = stack.enter_context(_gateway(tmp_path, "two", text))
        async with httpx2.AsyncClient(timeout=30) as http:
            handle = await legacy_session(http, one.base + "/mcp/pooled", **ALICE)
            [holder] = [replica for replica in replicas if replica.opened]
            for base in (two.base, one.base, two.base, two.base):
                assert await echo(http, base + "/mcp/pooled", handle, "pooled") == "pooled"
            stolen = await legacy_post(http, two.base + "/mcp/pooled", handle, "ping", 4, **BOB)
            assert stolen.status_code == 404
    # One session in all, at the replica that opened it, continued by the other gateway (not re-created).
    assert [replica.opened for replica in replicas].count(1) == 1 and sum(r.opened for r in replicas) == 1
    assert len(holder.ids) == 1 and not any(replica.ids for replica in replicas if replica is not holder), [
        (r.opened, r.ids) for r in replicas
    ]


async def test_a_stdio_backends_session_is_reopened_on_the_other_gateway(tmp_path: Path) -> None:
    stdio = (
        f'[[servers]]\nname = "text"\ncommand = ["{{python}}", "{ROOT / "examples" / "gateway" / "stdio_server.py"}"]\n'
    )
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(serve_app(build_server().streamable_http_app()))
        text = config_text(remote.mcp_url) + stdio
        one = stack.enter_context(_gateway(tmp_path, "one", text))
        recorded: list[DecisionRecorder] = []
        two = stack.enter_context(_gateway(tmp_path, "two", text, recorded))
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, one.base + "/mcp/text", **ALICE)
            for index, base in enumerate([two.base, one.base, two.base]):
                params = {"name": "reverse", "arguments": {"text": f"abc{index}"}}
                answer = await legacy_post(http, base + "/mcp/text", handle, "tools/call", index, params, **ALICE)
                assert answer.status_code == 200, answer.text
                assert json_of(answer)["result"]["content"][0]["text"] == f"{index}cba"
    assert recorded[0].outcomes(Component.SESSION) == [Outcome.REOPENED]  # the stdio bridge's session: re-opened
