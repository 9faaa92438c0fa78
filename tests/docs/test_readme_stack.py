"""The README's whole stack, run as written: a second `tools/list` is answered by the cache.

`MCPServer` marks its results `ttlMs: 0` ("do not cache") unless built with `cache_hints=`, so a
cache that honours `ttlMs` keeps nothing from it; the README's stack says `honor_ttl_ms: False`.
The second test runs the same code with the upstream TTL honoured, to show that line is what caches.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from tests.docs.blocks import ROOT, blocks_of
from tests.support.requests import legacy_headers, legacy_session, modern_body, modern_headers

pytestmark = pytest.mark.anyio

BEARER = {"authorization": "Bearer dev-token"}  # the README's StaticTokenVerifier token


def readme_stack(edit: tuple[str, str] | None = None) -> Any:
    """The `app` the README's python blocks build, run in order in one namespace (as `<!-- continue -->` says)."""
    blocks = [b for b in blocks_of(ROOT / "README.md") if b.lang == "python" and not b.fragment]
    assert any("stack(" in b.code for b in blocks), "the README's stack() block is gone or marked a fragment"
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks:
        code = block.code
        if edit is not None and "stack(" in code:
            assert edit[0] in code, f"README.md:{block.line} no longer says {edit[0]!r}"
            code = code.replace(*edit)
        exec(compile(code, block.where, "exec"), namespace)
    return namespace["app"]


async def list_twice_modern(url: str) -> list[str]:
    async with httpx2.AsyncClient(timeout=30) as http:
        answers = [
            await http.post(
                url, content=modern_body("tools/list", request_id=n), headers={**modern_headers("tools/list"), **BEARER}
            )
            for n in (1, 2)
        ]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].json()["result"]["tools"] == answers[1].json()["result"]["tools"]
    assert answers[1].json()["id"] == 2  # the hit answers the request it was asked by
    return [a.headers["x-mcp-cache"] for a in answers]


async def test_the_readme_stack_answers_a_second_tools_list_from_its_cache(serve: Any) -> None:
    served = serve(readme_stack())
    assert await list_twice_modern(served.mcp_url) == ["miss", "hit"]
    # The add tool is listed and callable through the whole stack.
    async with httpx2.AsyncClient(timeout=30) as http:
        called = await http.post(
            served.mcp_url,
            content=modern_body("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}}, request_id=3),
            headers={**modern_headers("tools/call", "add"), **BEARER},
        )
    assert called.json()["result"]["structuredContent"] == {"result": 5}


async def test_the_readme_stack_caches_in_the_legacy_era_too(serve: Any) -> None:
    served = serve(readme_stack())
    async with httpx2.AsyncClient(timeout=30, headers=BEARER) as http:
        session = await legacy_session(http, served.mcp_url)
        body = b'{"jsonrpc":"2.0","id":%d,"method":"tools/list"}'
        answers = [await http.post(served.mcp_url, content=body % n, headers=legacy_headers(session)) for n in (1, 2)]
    assert [a.headers.get("x-mcp-cache") for a in answers] == ["miss", "hit"]


async def test_honouring_mcpservers_ttl_ms_the_same_stack_caches_nothing(serve: Any) -> None:
    served = serve(readme_stack(edit=('"honor_ttl_ms": False', '"honor_ttl_ms": True')))
    assert await list_twice_modern(served.mcp_url) == ["miss", "miss"]
