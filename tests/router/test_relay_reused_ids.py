"""A legacy client may reuse a JSON-RPC id once its call was answered; the relay must still route the new
call's `notifications/cancelled` to it, even when the old call's bookkeeping ends after the new call began.

The interleaving is forced, not hoped for: the relay's `_call` is wrapped so that the first call's own
ending (after its answer reached the client) waits until the second call with the same id is running at
the backend. Everything else is real: an SDK server under uvicorn behind the router, raw 2025-11-25 HTTP.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp.server.mcpserver import MCPServer

from mcp_middleware.router import McpRouter
from mcp_middleware.router.relay import Relay
from tests.support.requests import legacy_post, legacy_session

pytestmark = pytest.mark.anyio


async def test_a_reused_id_stays_cancellable_when_the_old_call_ends_late(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, cancelled, old_may_end = anyio.Event(), anyio.Event(), anyio.Event()
    server = MCPServer("slow")

    @server.tool()
    async def wait() -> str:
        started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "waited"

    @server.tool()
    def quick() -> str:
        return "quick"

    real_call = Relay._call
    calls = 0

    async def late_ending(self: Relay, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        first = calls == 1
        await real_call(self, *args, **kwargs)
        if first:  # the answer is out; the call's own ending waits for the second call
            await old_may_end.wait()

    monkeypatch.setattr(Relay, "_call", late_ending)
    router = McpRouter()
    router.mount("slow", server.streamable_http_app())
    url = f"{serve(router).base}/mcp"
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await legacy_session(http, url)
        first = await legacy_post(http, url, session, "tools/call", 5, {"name": "slow__quick", "arguments": {}})
        assert "quick" in first.text

        async def second_call() -> None:
            await legacy_post(http, url, session, "tools/call", 5, {"name": "slow__wait", "arguments": {}})

        async with anyio.create_task_group() as group:
            group.start_soon(second_call)
            with anyio.fail_after(20):
                await started.wait()
            old_may_end.set()  # now the first call's bookkeeping ends, after the second one began
            await anyio.sleep(0.2)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
            notice = await http.post(
                url,
                content=orjson.dumps(cancel),
                headers={
                    "content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "mcp-session-id": session,
                    "mcp-protocol-version": "2025-11-25",
                },
            )
            assert notice.status_code == 202
            with anyio.fail_after(20):
                await cancelled.wait()  # the cancellation reached the call running under the reused id
            group.cancel_scope.cancel()
