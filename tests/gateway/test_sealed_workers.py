"""`serve --workers 2` with a `session_key`: a legacy session opened in one worker goes on in the other.

The same scene as test_workers.py's 404 test (one worker blocked by the session's own call, the
next request on a new connection reaching the other worker), with sealed handles: the other
worker re-opens the session from its handle and answers, and the session's own worker goes on too.
"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import httpx2
import pytest

from mcp_middleware.gateway.config import parse_config
from mcp_middleware.gateway.config_workers import worker_problems
from tests.conftest import free_port
from tests.gateway.test_workers import LEGACY, SERVER, call, start
from tests.support import processes

KEY = "the sealed workers test's session key (32+ chars)"


def pid_of(response: httpx2.Response) -> str:
    found = re.search(r'"text":"(\d+)"', response.text)
    assert response.status_code == 200 and found is not None, response.text
    return found.group(1)


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/mcp/w", "/mcp"])
async def test_a_legacy_session_goes_on_in_another_worker(tmp_path: Path, path: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nshutdown_timeout = 2\nsession_key = "{KEY}"\n{SERVER}', encoding="utf-8")
    port, log = free_port(), tmp_path / "gateway.log"
    process = await anyio.to_thread.run_sync(start, config, port, log, "--workers", "2")
    url = f"http://127.0.0.1:{port}{path}"
    tool = "hold" if path == "/mcp/w" else "w__hold"
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    limits = httpx2.Limits(max_connections=1)  # one kept-alive connection: one worker
    try:
        async with httpx2.AsyncClient(timeout=30, limits=limits) as owner, httpx2.AsyncClient(timeout=30) as other:
            opened = await owner.post(url, json=initialize, headers=LEGACY)
            assert opened.status_code == 200, opened.text
            handle = opened.headers["mcp-session-id"]
            assert len(handle) < 512
            headers = {**LEGACY, "mcp-session-id": handle}
            done = await owner.post(
                url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
            )
            assert done.status_code == 202
            held: list[httpx2.Response] = []

            async def block_the_owner() -> None:  # the session's worker stops accepting for 3 s
                held.append(await owner.post(url, json=call(tool, {"seconds": 3}), headers=headers))

            async with anyio.create_task_group() as group:
                group.start_soon(block_the_owner)
                await anyio.sleep(1.0)
                answer = await other.post(url, json=call(tool, {"seconds": 0}, 7), headers=headers)  # the other worker
            assert answer.headers.get("mcp-session-id") in (None, handle)  # the handle, never an inner id
            elsewhere, home = pid_of(answer), pid_of(held[0])
            assert elsewhere != home  # served by the other worker, in the same session
            again = await owner.post(url, json=call(tool, {"seconds": 0}, 8), headers=headers)
            assert pid_of(again) == home  # and its own worker goes on as before
    finally:
        processes.stop(process)


def test_workers_without_a_session_key_are_refused_for_legacy_sessions() -> None:
    without = parse_config(f"[gateway]\nworkers = 2\n{SERVER}")
    sealed = parse_config(f'[gateway]\nworkers = 2\nsession_key = "{KEY}"\n{SERVER}')
    assert any("legacy (2025-11-25) sessions" in p.message for p in worker_problems(without)[0])
    assert not any("legacy" in p.message for p in [*worker_problems(sealed)[0], *worker_problems(sealed)[1]])
