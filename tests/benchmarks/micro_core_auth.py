"""The core's read and auth's admission of one modern `tools/call`, alone: CPU µs a request, in process.

The full stack's layers, narrowed to the two this measures: a layer of ours reads the request first (as API-only
tracing does), `AuthMiddleware` (a remembered bearer token, a per-tool scope rule) admits it, and a trivial app
reads the replayed body. No server, no SDK: what is left is the core's and auth's own CPU, so a change to either
shows above the noise that end-to-end runs on a shared machine have. Compare two trees by running each from its
own checkout (pin a CPU; the minimum over the rounds is the figure to compare)::

    PYTHONHASHSEED=0 taskset -c 1 python -m tests.benchmarks.micro_core_auth
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import read_request
from tests.support.requests import modern_body, modern_headers

_RESOURCE = "http://127.0.0.1/mcp"
_BODY = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 7)
_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    *((key.lower().encode(), value.encode()) for key, value in modern_headers("tools/call", "echo").items()),
    (b"content-length", str(len(_BODY)).encode()),
    (b"authorization", b"Bearer alice-token"),
    (b"user-agent", b"python-httpx/0.28"),
]


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()


async def _send(message: Message) -> None:
    return None


def _auth() -> AuthMiddleware:
    return AuthMiddleware(
        _app,
        verifier=StaticTokenVerifier({"alice-token": ["mcp:read"]}, resource=_RESOURCE),
        resource=_RESOURCE,
        authorization_servers=["https://issuer.example"],
        required_scopes=["mcp:read"],
        scopes={"tools/call:delete_*": ["admin"]},
    )


async def _one(auth: AuthMiddleware) -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": list(_HEADERS),
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    messages = [{"type": "http.request", "body": _BODY, "more_body": False}]

    async def receive() -> Message:
        return messages.pop()

    _, replay = await read_request(scope, receive, _send)
    await auth(scope, replay, _send)


async def measure(rounds: int = 15, requests: int = 5000) -> list[float]:
    """µs a request of each round, after a warm-up (the token verified and remembered) and `gc.freeze()`."""
    auth = _auth()
    for _ in range(2000):
        await _one(auth)
    gc.collect()
    gc.freeze()
    found = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(requests):
            await _one(auth)
        found.append((time.perf_counter() - started) / requests * 1e6)
    return sorted(found)


def main() -> None:
    logging.disable(logging.CRITICAL)
    rounds = asyncio.run(measure())
    print(f"core + auth: min {rounds[0]:.2f} µs, median {rounds[len(rounds) // 2]:.2f} µs a request")


if __name__ == "__main__":
    main()
