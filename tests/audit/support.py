"""An audited SDK server under uvicorn, and requests to it: what the audit tests share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson

from mcp_middleware.audit import AuditMiddleware, AuditTrail
from tests.conftest import Served, serve_app
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import until

__all__ = ["call_echo", "read_records", "served_trail", "settled"]


def read_records(*paths: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in paths for line in path.read_bytes().splitlines()]


@contextlib.contextmanager
def served_trail(trail: AuditTrail) -> Iterator[Served]:
    """A bare SDK server behind `AuditMiddleware(trail)`; the trail is closed when the block ends."""
    try:
        with serve_app(AuditMiddleware(build_server().streamable_http_app(), trail=trail)) as served:
            yield served
    finally:
        trail.close()


async def call_echo(served: Served, count: int, *, text: str = "hello") -> None:
    """`count` modern `tools/call echo` requests, each answered 200."""
    async with httpx2.AsyncClient(timeout=30) as http:
        for number in range(count):
            body = modern_body("tools/call", {"name": "echo", "arguments": {"text": f"{text} {number}"}}, number)
            response = await http.post(served.mcp_url, content=body, headers=modern_headers("tools/call", "echo"))
            assert response.status_code == 200, response.text


async def settled(trail: AuditTrail, operations: int, patience: float = 20.0) -> None:
    """Wait until `operations` operations reached the trail and every queued one is written.

    A record is handed over when the response has ended, a moment after the client read it.
    """
    await until(lambda: trail.offered >= operations and trail.pending == 0, patience)
