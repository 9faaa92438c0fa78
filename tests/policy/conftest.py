"""Policy test fixtures: a small bank/CRM server behind auth (static tokens with roles and a home claim) and policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from mcp.types import Completion, ToolAnnotations
from starlette.types import ASGIApp

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from tests.auth.conftest import serve_late
from tests.conftest import Era, connect

RULES = """
[[rules]]
id = "payments-cap"
effect = "forbid"
match = "tools/call:pay"
when = "arguments.amount > 100"
reason = "payments above 100 need a human"

[[rules]]
id = "files-in-home"
effect = "forbid"
match = "tools/call:read_file"
when = "!arguments.path.startsWith(principal.claims.home)"
reason = "a path outside the caller's home"

[[rules]]
id = "destructive-needs-admin"
effect = "forbid"
match = "tools/call:*"
when = "has(annotations.destructiveHint) && annotations.destructiveHint && !('admin' in principal.roles)"
reason = "destructive tools are for admins"

[[rules]]
id = "tellers-pay"
effect = "permit"
match = ["tools/call:pay", "tools/call:read_file"]
when = "'teller' in principal.roles"

[[rules]]
id = "everyone-echoes"
effect = "permit"
match = ["tools/call:echo", "prompts/get:*", "resources/read:*"]
"""

ROLES = {"support": ["tools/call:crm_*"], "admin": ["*"]}


def bank_server() -> MCPServer:
    server = MCPServer("bank")

    @server.tool()
    def echo(text: str) -> str:
        return text

    @server.tool()
    def pay(amount: float, to: str) -> str:
        return f"paid {amount} to {to}"

    @server.tool()
    def read_file(path: str) -> str:
        return f"contents of {path}"

    @server.tool()
    def crm_search(query: str) -> list[str]:
        return [f"customer matching {query}"]

    @server.tool(annotations=ToolAnnotations(destructive_hint=True))
    def crm_delete(customer: int) -> str:
        return f"deleted {customer}"

    @server.resource("bank://rates")
    def rates() -> str:
        return "3%"

    @server.prompt()
    def greet(name: str) -> str:
        return f"Hello {name}"

    @server.resource("bank://accounts/{number}")
    def account(number: str) -> str:
        return f"account {number}"

    @server.resource("bank://vault/{box}")
    def vault(box: str) -> str:
        return f"box {box}"

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion:
        """What a completion tells: the prompt's argument names, the accounts and vault boxes that exist."""
        values = {"name": ["ana", "sam"], "number": ["1001", "1002"], "box": ["gold", "deeds"]}
        return Completion(values=[v for v in values.get(argument.name, []) if v.startswith(argument.value)])

    return server


VALID_ARGUMENTS: dict[str, dict[str, Any]] = {
    "echo": {"text": "hi"},
    "pay": {"amount": 50, "to": "bob"},
    "read_file": {"path": "/home/{subject}/notes.txt"},
    "crm_search": {"query": "acme"},
    "crm_delete": {"customer": 7},
}
"""Arguments every rule on arguments accepts (`{subject}` is the caller's)."""


def token(subject: str, roles: list[str], **claims: Any) -> AccessToken:
    return AccessToken(
        token="",
        client_id=f"{subject}-client",
        scopes=["mcp"],
        subject=subject,
        claims={"roles": roles, **claims},
    )


TOKENS: dict[str, AccessToken] = {
    "ana": token("ana", ["teller"], home="/home/ana/"),
    "sam": token("sam", ["support"], home="/home/sam/"),
    "root": token("root", ["admin", "teller"], home="/root/"),
    "nobody": token("nobody", [], home="/home/nobody/"),
    "homeless": token("homeless", ["teller"]),  # no home claim: rules reading it fail closed
}


def protected(serve: Any, policy: Callable[[ASGIApp], ASGIApp], *, tokens: Mapping[str, AccessToken] = TOKENS) -> str:
    """Serve the bank behind auth (its URL as the resource) and `policy` (a layer); the MCP URL."""
    mcp_app = bank_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    slot.app = AuthMiddleware(
        policy(mcp_app),
        verifier=StaticTokenVerifier(dict(tokens), resource=served.mcp_url),
        resource=served.mcp_url,
    )
    return str(served.mcp_url)


@asynccontextmanager
async def client_as(url: str, era: Era, bearer: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client
