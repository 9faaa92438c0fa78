"""Try the reference gateway from the command line: a real OAuth 2.1 login, then MCP calls.

    make run                                    # in one terminal
    .venv/bin/python examples/gateway/try_it.py # in another (URL: first argument, default below)

The `mcp` SDK's `OAuthClientProvider` discovers the gateway's protected-resource metadata,
registers a client, and runs the authorization-code flow with PKCE against the embedded
authorization server. Where a browser would show the login page, this script fills it in
and presses "Approve" for you, as the user `USER` (default `dev-user`). Then it lists the
aggregated tools and calls two of them, in the 2026-07-28 era.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import sys
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT_URI = "http://127.0.0.1:1/callback"  # never contacted: the redirect is read, not followed


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Login:
    """What a person does in the browser: open the login page, approve, land on the callback."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.result: AuthorizationCodeResult | None = None

    async def redirect(self, url: str) -> None:
        async with httpx2.AsyncClient(timeout=30) as http:
            page = await http.get(url)
            if page.status_code == 200:  # the login/consent page: submit its form as "Approve"
                action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text)[1])  # type: ignore[index]
                fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
                form = {html.unescape(k): html.unescape(v) for k, v in fields.items()}
                page = await http.post(action, data={**form, "username": self.user, "decision": "approve"})
            location = page.headers.get("location", "")
        query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
        if "code" not in query:
            raise SystemExit(f"login failed: {query or page.text[:300]}")
        print(f"  logged in as {self.user}")
        self.result = AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


async def main(url: str) -> None:
    login = Login(os.environ.get("USER_NAME", "dev-user"))
    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="mcp-gateway try_it.py",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=login.redirect,
        callback_handler=login.callback,
    )
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), cache=None) as client,
    ):
        tools = (await client.list_tools()).tools
        print(f"  {len(tools)} tools: {', '.join(sorted(tool.name for tool in tools))}")
        echo = await client.call_tool("demo__echo", {"text": "hello through the gateway"})
        print(f"  demo__echo -> {echo.content[0].text}")  # type: ignore[union-attr]
        total = await client.call_tool("demo__add", {"a": 20, "b": 22})
        print(f"  demo__add -> {total.content[0].text}")  # type: ignore[union-attr]


def first_cause(error: BaseException) -> BaseException:
    """The first error inside the SDK's task-group `ExceptionGroup`s (what went wrong, not where)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def run(url: str) -> int:
    """Run `main(url)`; any failure is one line on stderr and exit code 1 (no traceback)."""
    try:
        asyncio.run(main(url))
    except BaseException as error:  # the script's last word: one line, whatever it was
        cause = first_cause(error)
        if isinstance(cause, KeyboardInterrupt):
            return 130
        if isinstance(cause, SystemExit):  # `Login` says why a login failed
            why = str(cause.code)
        elif isinstance(cause, httpx2.TransportError):
            why = f"cannot reach the gateway at {url}: {cause or type(cause).__name__} (is it running? `make run`)"
        else:
            why = f"{url}: {type(cause).__name__}: {cause}"
        print("try_it.py: " + " ".join(why.split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/mcp"))
