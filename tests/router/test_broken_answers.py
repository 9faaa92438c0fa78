"""An origin that sends a JSON answer's head and dies before its body: the client gets a JSON-RPC error.

A JSON answer is one message: the proxy holds a small one (up to `HELD_BODY_BYTES`) until it is whole
before passing its head on. A backend killed between its head and its body then leaves nothing at the
client, who gets a 502 with its request id and `mayHaveRun: true` (at a pool: another replica, when the
request may run twice), instead of a connection cut in the middle of a response its client cannot read
(CI met this once: a replica SIGKILLed under load, `httpx2.RemoteProtocolError` at the SDK client).
The origins are raw TCP servers on loopback (tests/router/test_upstream.py): only they can die at
exactly that point every time.
"""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest

from mcp_middleware.router import HttpBackend, McpRouter, PoolBackend
from mcp_middleware.router._upstream import HELD_BODY_BYTES
from tests.router.test_upstream import json_reply, raw_origin

pytestmark = pytest.mark.anyio

CUT = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 264\r\n\r\n" + b'{"jsonrpc":"2.0",'
"""A head promising 264 bytes, then 17 of them, then the connection closes."""
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def call(request_id: int, method: str = "tools/call") -> dict[str, Any]:
    params = {"name": "record", "arguments": {}} if method == "tools/call" else {}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


async def test_a_mount_whose_backend_dies_after_the_head_answers_a_json_rpc_error(serve: Any) -> None:
    async with raw_origin(CUT, close_after_reply=True) as (origin, url):
        router = McpRouter()
        router.mount("cut", HttpBackend(url))
        served = serve(router)
        async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
            answer = await http.post("/mcp/cut", json=call(7), headers=HEADERS)
    assert len(origin.requests) == 1  # it reached the backend: it may have run
    assert answer.status_code == 502
    error = answer.json()
    assert error["id"] == 7
    assert error["error"]["code"] == -32017
    assert error["error"]["data"]["mayHaveRun"] is True


async def test_a_pool_replica_dying_after_the_head_is_a_failure_the_pool_answers(serve: Any) -> None:
    """A write is not sent again (it may have run): the documented -32017; a read goes to the other replica."""
    async with (
        raw_origin(CUT, close_after_reply=True) as (cut, cut_url),
        raw_origin(json_reply(b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}')) as (_, good_url),
    ):
        pool = PoolBackend([HttpBackend(cut_url), HttpBackend(good_url)], balance="round_robin", probe_interval=300)
        router = McpRouter()
        router.mount("pooled", pool)
        served = serve(router)
        async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
            reads = [await http.post("/mcp/pooled", json=call(n, "tools/list"), headers=HEADERS) for n in range(4)]
            writes_to_cut = len(cut.requests)
            pool_only_cut = PoolBackend([HttpBackend(cut_url)], probe_interval=300)
            lone = McpRouter()
            lone.mount("pooled", pool_only_cut)
            write = await http.post(f"{serve(lone).base}/mcp/pooled", json=call(9), headers=HEADERS)
    assert writes_to_cut >= 1  # the cut replica was tried for a read at least once
    assert [r.status_code for r in reads] == [200] * 4  # each read answered, by the other replica when cut
    assert all(r.json()["result"] == {"tools": []} for r in reads)
    assert write.status_code == 502
    error = write.json()
    assert (error["id"], error["error"]["code"]) == (9, -32017)
    assert error["error"]["data"] == {"backend": "pooled", "mayHaveRun": True}


async def test_an_answer_larger_than_the_hold_streams_on_and_arrives_whole(serve: Any) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"blob": "x" * (HELD_BODY_BYTES * 3)}})
    async with raw_origin(json_reply(body)) as (_, url):
        router = McpRouter()
        router.mount("big", HttpBackend(url))
        pool = McpRouter()
        pool.mount("big", PoolBackend([HttpBackend(url)], probe_interval=300))
        async with httpx2.AsyncClient(timeout=10) as http:
            direct = await http.post(f"{serve(router).base}/mcp/big", json=call(1, "tools/list"), headers=HEADERS)
            pooled = await http.post(f"{serve(pool).base}/mcp/big", json=call(1, "tools/list"), headers=HEADERS)
    assert direct.content == pooled.content == body
