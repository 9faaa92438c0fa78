"""Bad input at the aggregate gets what it gets at a mount: a JSON-RPC error with the request's id, never a 500.

Unknown and malformed public names, forged cursors, references of the wrong type and names of a
backend that is down — in both eras, as raw requests (what a hostile client sends) — and nothing
is left behind: the next good request is served.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx2
import orjson
import pytest

from mcp_middleware.router import HttpBackend, McpRouter
from tests.conftest import ERAS, Era, free_port
from tests.servers import build_server

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


class Session:
    """Raw JSON-RPC over HTTP in one era (a legacy session is opened first)."""

    def __init__(self, http: httpx2.AsyncClient, url: str, era: Era) -> None:
        self.http, self.url, self.era = http, url, era
        self.session_id: str | None = None

    async def open(self) -> None:
        if self.era == "legacy":
            opened = await self.post(
                "initialize",
                {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}},
                request_id=0,
            )
            assert opened.status_code == 200
            self.session_id = opened.headers["mcp-session-id"]
            await self.post("notifications/initialized", None, request_id=None)

    async def post(self, method: str, params: dict[str, Any] | None, request_id: Any = 41) -> httpx2.Response:
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if request_id is not None:
            body["id"] = request_id
        if self.era == "modern":
            headers.update({"mcp-protocol-version": MODERN, "mcp-method": method})
            params = {**(params or {}), "_meta": ENVELOPE}
            name = (params or {}).get("name") or (params or {}).get("uri")
            if isinstance(name, str) and name.isascii() and name.isprintable() and len(name) <= 200:
                headers["mcp-name"] = name
        else:
            headers["mcp-protocol-version"] = LEGACY
            if self.session_id is not None:
                headers["mcp-session-id"] = self.session_id
        if params is not None:
            body["params"] = params
        return await self.http.post(self.url, content=orjson.dumps(body), headers=headers)


def error_of(response: httpx2.Response) -> dict[str, Any]:
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(line[5:].strip() for line in text.splitlines() if line.startswith("data:") and '"id"' in line)
    message = orjson.loads(text)
    assert "error" in message, message
    return dict(message)


FORGED_CURSOR = base64.urlsafe_b64encode(b'{"v":1,"k":"prompts","a":"x"}').decode().rstrip("=")
CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("unknown tool", "tools/call", {"name": "nobody__echo", "arguments": {}}, -32602),
    ("tool name not a string", "tools/call", {"name": 7, "arguments": {}}, -32602),
    ("empty tool name", "tools/call", {"name": "", "arguments": {}}, -32602),
    ("huge tool name", "tools/call", {"name": "a" * 100_000, "arguments": {}}, -32602),
    ("unicode look-alike", "tools/call", {"name": "g\u043e\u043ed__echo", "arguments": {}}, -32602),
    ("separator only", "tools/call", {"name": "__", "arguments": {}}, -32602),
    ("unknown prompt", "prompts/get", {"name": "good__nothing"}, -32602),
    ("unknown resource", "resources/read", {"uri": "nobody+demo://x"}, -32602),
    ("uri not a string", "resources/read", {"uri": ["x"]}, -32602),
    ("completion without ref", "completion/complete", {"argument": {"name": "a", "value": "b"}}, -32602),
    ("completion ref of no kind", "completion/complete", {"ref": {"type": "ref/tool", "name": "x"}}, -32602),
    ("forged cursor", "tools/list", {"cursor": "not-base64-!!"}, -32602),
    ("cursor of another list", "tools/list", {"cursor": FORGED_CURSOR}, -32602),
]


@pytest.mark.parametrize("era", ERAS)
async def test_bad_input_gets_an_error_with_the_id_and_leaves_nothing(era: Era, serve: Any) -> None:
    router = McpRouter()
    router.mount("good", build_server().streamable_http_app())
    router.mount("down", HttpBackend(f"http://127.0.0.1:{free_port()}/mcp", timeout=2))
    served = serve(router)
    async with httpx2.AsyncClient(timeout=30) as http:
        session = Session(http, served.mcp_url, era)
        await session.open()
        seen: list[tuple[str, int, int]] = []
        for label, method, params, code in CASES:
            answer = await session.post(method, params, request_id=f"case-{label}")
            assert answer.status_code < 500, (label, answer.status_code, answer.text[:300])
            error = error_of(answer)
            assert error["id"] == f"case-{label}", (label, error)
            seen.append((label, error["error"]["code"], code))
        down = await session.post("tools/call", {"name": "down__echo", "arguments": {"text": "x"}}, request_id=99)
        good = await session.post("tools/call", {"name": "good__echo", "arguments": {"text": "still fine"}})
    # -32020 where the modern ladder already refuses the name's header (it must mirror the body)
    allowed = {-32602, -32020} if era == "modern" else {-32602}
    assert [(label, got) for label, got, _ in seen if got not in allowed | {code}] == []
    assert down.status_code < 500 or down.status_code in (502, 503, 504)
    assert error_of(down)["id"] == 99 and error_of(down)["error"]["code"] in (-32602, -32015, -32016, -32017)
    assert good.status_code == 200 and "still fine" in good.text
