"""Run the python blocks of one Markdown file, in order, in this process; write one result per block.

    python -m tests.docs.run_python docs/cache.md RESULTS.json

One process per file keeps the test fast (the imports are paid once) and keeps what a block does to
process-wide state (logging, OpenTelemetry's global providers) away from the test run. Each block
runs in a fresh namespace (`__name__ == "__docs__"`, so `if __name__ == "__main__":` stays off), or,
marked `<!-- continue -->`, in the namespace the file's previous run python block left. A block that
assigns `app` at top level is served: uvicorn (lifespan on) on a free loopback port, and one
2026-07-28 `tools/list` POST to its MCP path must get a JSON-RPC answer with the request's id (a
result, or an error such as a 401 without a token), HTTP status below 500 and not 404.
"""

from __future__ import annotations

import ast
import contextlib
import json
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx2
import uvicorn

from tests.conftest import serve_app
from tests.docs.blocks import Block, blocks_of
from tests.support.requests import modern_body, modern_headers
from tests.support.sse import sse_messages

BLOCK_SECONDS = 20


class BlockTimeout(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise BlockTimeout(f"the block ran longer than {BLOCK_SECONDS} s")


def assigns_app(code: str) -> bool:
    """Whether the block binds `app` at top level (so it is an app to serve)."""
    for node in ast.parse(code).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == "app":
            return True
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "app" for t in targets):
            return True
    return False


@contextlib.contextmanager
def uvicorn_run_recorded(calls: list[tuple[Any, dict[str, Any]]]) -> Iterator[None]:
    """`<!-- run: import-only -->`: `uvicorn.run(app, ...)` records its arguments instead of serving."""
    original = uvicorn.run
    uvicorn.run = lambda app, **options: calls.append((app, options))
    try:
        yield
    finally:
        uvicorn.run = original


def one_request(app: Any, path: str) -> str:
    """Serve `app` and send it one 2026-07-28 `tools/list`; return what it answered, or raise."""
    assert callable(app), f"`app` is not an ASGI callable: {app!r}"
    with serve_app(app) as served:
        response = httpx2.post(
            served.base + path, content=modern_body("tools/list"), headers=modern_headers("tools/list")
        )
    assert response.status_code < 500 and response.status_code != 404, (response.status_code, response.text[:500])
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = sse_messages(response.text)
        assert messages, response.text[:500]
        message = messages[-1]
    else:
        message = response.json()
    assert message.get("jsonrpc") == "2.0" and message.get("id") == 1, message
    assert ("result" in message) != ("error" in message), message
    outcome = "result" if "result" in message else f"error {message['error'].get('code')}"
    return f"served: {path} tools/list -> HTTP {response.status_code}, {outcome}"


def run_block(block: Block, namespace: dict[str, Any]) -> str:
    import_only = block.markers.get("run") == "import-only"
    if "run" in block.markers and not import_only:
        raise ValueError(f"unknown run marker {block.markers['run']!r} (known: import-only)")
    calls: list[tuple[Any, dict[str, Any]]] = []
    signal.alarm(BLOCK_SECONDS)
    try:
        with uvicorn_run_recorded(calls) if import_only else contextlib.nullcontext():
            exec(compile(block.code, block.where, "exec"), namespace)
        if import_only:
            assert calls, "marked import-only but never called uvicorn.run"
            assert all(callable(app) for app, _ in calls), calls
            return f"import-only: uvicorn.run called {len(calls)} time(s)"
        if assigns_app(block.code):
            return one_request(namespace["app"], block.markers.get("mcp-path", "/mcp"))
        return "ran"
    finally:
        signal.alarm(0)


def main(document: str, results_path: str) -> None:
    signal.signal(signal.SIGALRM, _alarm)
    results: dict[int, dict[str, str]] = {}
    namespace: dict[str, Any] | None = None
    for block in blocks_of(Path(document).resolve()):
        if block.lang != "python" or block.fragment:
            continue
        if "continue" in block.markers:
            if namespace is None:
                results[block.line] = {"status": "failed", "detail": "<!-- continue --> with no run block before it"}
                continue
        else:
            namespace = {"__name__": "__docs__"}
        try:
            detail = run_block(block, namespace)
        except BaseException:  # a block's failure is reported for that block; the others still run
            results[block.line] = {"status": "failed", "detail": traceback.format_exc()}
        else:
            results[block.line] = {"status": "ok", "detail": detail}
        Path(results_path).write_text(json.dumps(results))  # as far as we got, if a block hangs the process
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
