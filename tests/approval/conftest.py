"""Approval fixtures: a files backend with destructive tools, behind auth and approval, at a mount and the aggregate.

Two principals (alice, bob) with static tokens. The backend records every call that reached it, so a
test can assert that a refused call never ran. `Files.bodies` records the request bodies that
reached the backend (below the approval middleware), to see what was taken out of a retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.types import ToolAnnotations
from pydantic import BaseModel
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.approval import ApprovalMiddleware
from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import CoreConfig
from mcp_middleware.router import InProcessBackend, McpRouter
from tests.conftest import Era, connect
from tests.support.decisions import DecisionRecorder

Endpoint = Literal["mount", "aggregate"]
ENDPOINTS: tuple[Endpoint, ...] = ("mount", "aggregate")
EVERY_PATH = CoreConfig(paths=("*",))
TOKENS = {"alice": ["mcp"], "bob": ["mcp"]}
SECRET = "an approval-state secret of at least thirty-two characters"


@dataclass
class Files:
    """What reached the backend."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    def ran(self, tool: str) -> list[dict[str, Any]]:
        return [arguments for name, arguments in self.calls if name == tool]


class Copies(BaseModel):
    copies: int


def ask_copies(path: str) -> Elicit[Copies]:
    return Elicit(f"How many copies of {path}?", Copies)


def files_server(files: Files) -> MCPServer:
    server = MCPServer("files")

    @server.tool(annotations=ToolAnnotations(destructive_hint=True))
    def delete_file(path: str, token: str = "") -> str:
        """Delete a file (destructive: approval by annotation)."""
        files.calls.append(("delete_file", {"path": path}))
        return f"deleted {path}"

    @server.tool()
    def purge_cache(region: str) -> str:
        """Not annotated: approval by selector."""
        files.calls.append(("purge_cache", {"region": region}))
        return f"purged {region}"

    @server.tool(annotations=ToolAnnotations(destructive_hint=True))
    async def wipe_disk(disk: str, ctx: Context) -> str:
        """Reports progress while it works."""
        for step in (1, 2, 3):
            await ctx.report_progress(step, 3, f"wiping {step}/3")
        files.calls.append(("wipe_disk", {"disk": disk}))
        return f"wiped {disk}"

    @server.tool(annotations=ToolAnnotations(destructive_hint=True))
    def shred(path: str, copies: Annotated[Copies, Resolve(ask_copies)]) -> str:
        """Asks its own question (2025-11-25: a request on the stream; 2026-07-28: its own input_required)."""
        files.calls.append(("shred", {"path": path}))
        return f"shredded {path}: {copies.copies}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def read_file(path: str) -> str:
        files.calls.append(("read_file", {"path": path}))
        return f"contents of {path}"

    return server


class BodyTap:
    """Between the approval middleware and the backend: keeps every POST body that got through."""

    def __init__(self, app: ASGIApp, files: Files) -> None:
        self.app = app
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        done = False

        async def tapped() -> Message:
            nonlocal done
            message = await receive()
            if not done and message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done = True
                    self.files.bodies.append(b"".join(chunks))
            return message

        await self.app(scope, tapped, send)


class LegacyOnly:
    """A backend that refuses 2026-07-28 requests (an older server): its tools cannot be fetched in that era."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (b"mcp-protocol-version", b"2026-07-28") in scope["headers"]:
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32022,"message":"Unsupported protocol version"}}'
            await send(
                {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


@dataclass
class Setup:
    base: str
    files: Files
    recorder: DecisionRecorder

    def url(self, endpoint: Endpoint) -> str:
        return f"{self.base}/mcp/files" if endpoint == "mount" else f"{self.base}/mcp"


def public(endpoint: Endpoint, tool: str) -> str:
    return tool if endpoint == "mount" else f"files__{tool}"


def build(files: Files, *, json_response: bool = False, legacy_only: bool = False, **approval: Any) -> DecisionRecorder:
    verifier = StaticTokenVerifier(TOKENS)
    options: dict[str, Any] = {
        "require": ["tools/call:purge_*"],
        "backend": "files",
        "timeout": 2.0,
        "secrets": [SECRET],
        "config": EVERY_PATH,
        **approval,
    }
    stack = [
        Middleware(
            AuthMiddleware,
            verifier=verifier,
            resource="http://127.0.0.1/mcp/files",
            required_scopes=["mcp"],
            require_audience=False,
            config=EVERY_PATH,
        ),
        Middleware(ApprovalMiddleware, **options),
    ]
    door = Middleware(
        AuthMiddleware,
        verifier=verifier,
        resource="http://127.0.0.1/mcp",
        required_scopes=["mcp"],
        require_audience=False,
        config=EVERY_PATH,
    )
    router = McpRouter(aggregate_middleware=[door])
    backend: ASGIApp = BodyTap(files_server(files).streamable_http_app(json_response=json_response), files)
    if legacy_only:
        backend = LegacyOnly(backend)
    router.mount("files", InProcessBackend(backend), middleware=stack)
    return DecisionRecorder(router)


@pytest.fixture
def setup(serve: Any) -> Setup:
    files = Files()
    recorder = build(files)
    served = serve(recorder)
    return Setup(served.base, files, recorder)


@contextlib.asynccontextmanager
async def client_for(target: str, era: Era, token: str, **options: Any) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        connect(streamable_http_client(target, http_client=http), era, **options) as client,  # type: ignore[arg-type]
    ):
        yield client


GATEWAY_FILES = Files()
"""What reached the backend the gateway tests configure (`app = "tests.approval.conftest:gateway_files"`)."""


def gateway_files() -> MCPServer:
    return files_server(GATEWAY_FILES)
