"""Backends and configs for the sealed aggregate tests: a remote server that records its sessions.

`Recorded` wraps a small SDK server whose `count` tool keeps per-session state, and records the
session ids its `initialize` answers issued, the ids its requests carried, and DELETEs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core.sealing import Sealer
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from mcp_middleware.gateway.session_config import SESSION_PURPOSE
from mcp_middleware.gateway.session_handles import SessionHandles, SessionState
from tests.conftest import Served, serve_app

KEY = "the sealed aggregate test's session key (32+ chars)"
ALICE = {"authorization": "Bearer alice-token"}
BOB = {"authorization": "Bearer bob-token"}


def build_counter(name: str) -> MCPServer:
    """A backend with per-session state: `count` answers how often this session called it."""
    server = MCPServer(name)
    counts: Counter[str] = Counter()

    @server.tool()
    def count(ctx: Context) -> str:
        """This session's calls so far (keyed by the session id the request carries)."""
        request = ctx.request_context.request
        session = request.headers.get("mcp-session-id", "") if request is not None else ""
        counts[session] += 1
        return str(counts[session])

    return server


@dataclass
class Recorded:
    """A remote backend that records the sessions it issued and the session ids its requests carried."""

    name: str
    app: ASGIApp = field(init=False)
    issued: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    initializes: int = 0
    deleted: int = 0
    received: list[str] = field(default_factory=list)
    """Every session id any request carried (GET streams and DELETEs too)."""

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A new server process, as it were: every session it held is gone."""
        self.app = build_counter(self.name).streamable_http_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carried = dict(scope["headers"]).get(b"mcp-session-id")
        if carried is not None:
            self.received.append(carried.decode())
        if carried is not None and scope["method"] == "POST":
            self.carried.append(carried.decode())
        self.deleted += scope["method"] == "DELETE"

        async def peeking() -> Message:
            message = await receive()
            if carried is None and b'"method":"initialize"' in message.get("body", b"").replace(b" ", b""):
                self.initializes += 1
            return message

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                issued = dict(message.get("headers", ())).get(b"mcp-session-id")
                if issued is not None and carried is None:
                    self.issued.append(issued.decode())
            await send(message)

        await self.app(scope, peeking, noting)

    def sessions(self) -> set[str]:
        return set(self.carried)


def config_text(urls: dict[str, str | list[str]], extra: str = "") -> str:
    servers = "".join(f'[[servers]]\nname = "{name}"\nurl = {_toml(url)}\n' for name, url in urls.items())
    return f"""
[gateway]
shutdown_timeout = 2
session_key = "{KEY}"
[auth]
mode = "static"
[auth.tokens]
"alice-token" = {{ scopes = ["mcp"], subject = "alice" }}
"bob-token" = {{ scopes = ["mcp"], subject = "bob" }}
[aggregate]
enabled = true
{extra}
[[servers]]
name = "local"
app = "tests.servers:build_server"
{servers}"""


def _toml(url: str | list[str]) -> str:
    return f'"{url}"' if isinstance(url, str) else "[" + ", ".join(f'"{u}"' for u in url) + "]"


def sealed_state(handle: str) -> SessionState:
    """What a handle minted under :data:`KEY` carries (the tests may read it: they hold the key)."""
    return SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE)).open(handle).state


def serve_gateway(path: Path, text: str) -> contextlib.AbstractContextManager[Served]:
    path.write_text(text, encoding="utf-8")
    return serve_app(build_gateway(load_config(path)).app)


@contextlib.contextmanager
def built_gateway(path: Path, text: str) -> Iterator[tuple[Served, Gateway]]:
    """A gateway served in this process, and the gateway object (to reach its router)."""
    path.write_text(text, encoding="utf-8")
    gateway = build_gateway(load_config(path))
    with serve_app(gateway.app) as served:
        yield served, gateway


IN_PROCESS: list[Recorded] = []
"""The in-process servers `recorded_in_process` made (a gateway in this test process imports it)."""


def recorded_in_process() -> Recorded:
    """An in-process `app` for a gateway config (`tests.gateway.sealed_backends:recorded_in_process`)."""
    IN_PROCESS.append(Recorded("in-process"))
    return IN_PROCESS[-1]
