"""The proxy's HTTP/1.1 client against a raw origin: framing, stale keep-alive connections, garbage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from mcp_middleware.router import HttpBackend, McpRouter

pytestmark = pytest.mark.anyio


class RawOrigin:
    """A TCP server speaking just enough HTTP/1.1, answering with `reply` and closing when told to."""

    def __init__(self, reply: bytes, *, close_after_reply: bool) -> None:
        self.reply = reply
        self.close_after_reply = close_after_reply
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                lower = head.lower()
                if b"transfer-encoding: chunked" in lower:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        if size == 0:
                            await reader.readuntil(b"\r\n")
                            break
                        body += (await reader.readexactly(size + 2))[:-2]
                elif b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                self.requests.append(head + body)
                writer.write(self.reply)
                await writer.drain()
                if self.close_after_reply:  # without saying so: the proxy's pooled connection goes stale
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_origin(reply: bytes, *, close_after_reply: bool = False) -> AsyncIterator[tuple[RawOrigin, str]]:
    origin = RawOrigin(reply, close_after_reply=close_after_reply)
    server = await asyncio.start_server(origin.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield origin, f"http://127.0.0.1:{port}/mcp"
    finally:
        server.close()


def json_reply(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def test_a_connection_the_origin_closed_is_replaced_without_failing_the_request(serve: Any) -> None:
    async with raw_origin(json_reply(b'{"ok":true}'), close_after_reply=True) as (origin, url):
        router = McpRouter()
        router.mount("raw", HttpBackend(url))
        served = serve(router)
        async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
            answers = [await http.post("/mcp/raw", json={"n": n}) for n in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json() for a in answers] == [{"ok": True}] * 3
    assert len(origin.requests) == 3  # each sent once: the stale connection had read nothing
    assert origin.connections == 3


async def test_body_of_unknown_length_streams_up_chunked(serve: Any) -> None:
    async with raw_origin(json_reply(b"{}")) as (origin, url):
        router = McpRouter()
        router.mount("raw", HttpBackend(url))
        served = serve(router)

        async def body() -> AsyncIterator[bytes]:
            for part in (b'{"jsonrpc":"2.0",', b'"id":1,', b'"method":"tools/list"}'):
                yield part
                await asyncio.sleep(0.05)  # separate arrivals: the proxy must pass them on as they come

        async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
            answer = await http.post("/mcp/raw", content=body(), headers={"content-type": "application/json"})
            again = await http.post("/mcp/raw", content=b'{"second":1}', headers={"content-type": "application/json"})
    assert answer.status_code == again.status_code == 200
    first, second = origin.requests
    assert first.endswith(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
    assert b"transfer-encoding: chunked" in first.lower()
    assert second.endswith(b'{"second":1}') and b"content-length: 12" in second.lower()
    assert origin.connections == 1  # kept alive and reused


async def test_body_until_close_is_relayed(serve: Any) -> None:
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: one\n\ndata: two\n\n"
    async with raw_origin(reply, close_after_reply=True) as (_, url):
        router = McpRouter()
        router.mount("raw", HttpBackend(url))
        served = serve(router)
        async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
            answer = await http.post("/mcp/raw", json={})
    assert answer.status_code == 200
    assert answer.text == "data: one\n\ndata: two\n\n"


async def test_an_origin_answering_garbage_is_a_502(serve: Any) -> None:
    async with raw_origin(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as (_, url):
        router = McpRouter()
        router.mount("raw", HttpBackend(url))
        served = serve(router)
        async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
            answer = await http.post("/mcp/raw", json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == -32017
