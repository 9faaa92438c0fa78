"""A backend that cannot start: `/readyz` is 503 (unless it is optional) and its requests answer 502 with the id.

Never the silent failure of before: `ready`, and a mount answering `200` with `tools: []`. The
broken backends are real: a stdio command that exits at once and a URL nobody listens on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from tests.conftest import ERAS, Era, Served, connect, free_port, serve_app
from tests.servers import build_server
from tests.support.requests import initialize_body, legacy_headers, modern_body, modern_headers
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]
STDIO = ROOT / "examples" / "gateway" / "stdio_server.py"


def config_text(optional: bool) -> str:
    flag = "optional = true\n" if optional else ""
    return f"""
[[servers]]
name = "live"
app = "tests.servers:build_server"
[[servers]]
name = "dies"
command = ["{{python}}", "-c", "raise SystemExit(3)"]
timeout = 5
{flag}[[servers]]
name = "gone"
url = "http://127.0.0.1:{free_port()}/mcp"
{flag}[[servers]]
name = "text"
command = "{{python}} '{STDIO}'"
"""


@pytest.fixture(params=[False, True], ids=["required", "optional"])
def gateway(request: pytest.FixtureRequest) -> Iterator[tuple[Served, bool]]:
    optional: bool = request.param
    with serve_app(build_gateway(parse_config(config_text(optional))).app) as served:
        yield served, optional


def readyz(served: Served) -> httpx2.Response:
    return httpx2.get(f"{served.base}/readyz", timeout=10)


def test_readyz_waits_for_every_required_backend(gateway: tuple[Served, bool]) -> None:
    served, optional = gateway
    # The healthy stdio server takes a moment to start on a busy machine: until then it is "not started" too.
    anyio.run(until, lambda: "text:" not in readyz(served).json()["checks"]["backends"]["detail"], 30.0)
    response = readyz(served)
    backends = response.json()["checks"]["backends"]
    if optional:  # the live ones serve; the broken ones are named, and do not hold the gateway back
        assert response.status_code == 200, response.text
        assert "dies: unavailable" in backends["detail"] and "gone: unreachable" in backends["detail"]
        return
    assert response.status_code == 503 and response.json()["status"] == "not ready"
    assert backends["ok"] is False
    assert backends["detail"].startswith("not started: dies, gone; ")
    assert "dies: unavailable (" in backends["detail"] and "gone: unreachable (" in backends["detail"]


@pytest.mark.parametrize("name", ["dies", "gone"])
def test_a_backend_down_answers_502_with_the_request_id(gateway: tuple[Served, bool], name: str) -> None:
    served, _ = gateway
    url = f"{served.base}/mcp/{name}"
    modern = httpx2.post(url, content=modern_body("tools/list", request_id="m-7"), headers=modern_headers("tools/list"))
    legacy = httpx2.post(url, content=initialize_body(request_id=41), headers=legacy_headers())
    for response, request_id in ((modern, "m-7"), (legacy, 41)):
        assert response.status_code == 502, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["id"] == request_id and body["error"]["code"] == -32017
    if name == "dies":
        assert modern.json()["error"]["data"] == {"backend": "dies"}  # why it died is the operator's, not the caller's
        assert "SystemExit" not in modern.text and "python" not in modern.text.lower()


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_clients_get_an_error_not_an_empty_list(gateway: tuple[Served, bool], era: Era) -> None:
    served, _ = gateway
    with pytest.raises((MCPError, httpx2.HTTPStatusError, ExceptionGroup)):
        async with connect(f"{served.base}/mcp/dies", era) as client:
            await client.list_tools()
    async with connect(f"{served.base}/mcp/text", era) as client:  # a command written as one string works
        assert sorted(tool.name for tool in (await client.list_tools()).tools) == ["reverse", "word_count"]


def test_a_backend_that_starts_late_makes_the_gateway_ready(tmp_path: Path) -> None:
    """Required means "must have started": a remote that comes up later turns /readyz to 200."""
    port = free_port()
    text = '[[servers]]\nname = "live"\napp = "tests.servers:build_server"\n'
    text += f'[[servers]]\nname = "late"\nurl = "http://127.0.0.1:{port}/mcp"\n'
    with serve_app(build_gateway(parse_config(text)).app) as served:
        assert readyz(served).status_code == 503
        with serve_app(build_server().streamable_http_app(), port):
            anyio.run(until, lambda: readyz(served).status_code == 200, 10.0)
        # It served once: its outage now leaves the gateway ready while "live" serves.
        after = readyz(served)
        assert after.status_code == 200 and "late: unreachable" in after.json()["checks"]["backends"]["detail"]
