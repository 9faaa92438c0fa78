"""A Redis outage as an orchestrator and an operator see it: `/readyz` and the log.

A fail-open store that is down leaves every request served, so `/readyz` stays 200 and says
`degraded`, naming the store (one Redis outage must not take every pod out of rotation); a
fail-closed one refuses requests, so the gateway is not ready (503). The outage and the recovery
are each logged once at WARNING, naming the backend, however many requests meet the dead store.
"""

from __future__ import annotations

import logging
import time

import httpx2
import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from tests.conftest import RedisServer, serve_app

LIST = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def config_text(redis_url: str, fail: str) -> str:
    return f"""
[[servers]]
name = "local"
app = "tests.servers:build_server"
[aggregate]
enabled = false
[ratelimit]
store = "{redis_url}"
failure = "{fail}"
[[ratelimit.policies]]
name = "per-user"
capacity = 1000
rate = 1000
[cache]
store = "{redis_url.replace("/0", "/1")}"
[tracing]
access_log = false
"""


def ready(base: str) -> httpx2.Response:
    return httpx2.get(f"{base}/readyz", timeout=10)


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_readyz_while_redis_is_down(redis_server: RedisServer, fail: str, caplog: pytest.LogCaptureFixture) -> None:
    gateway = build_gateway(parse_config(config_text(redis_server.url, fail)))
    with serve_app(gateway.app) as served:
        before = ready(served.base)
        assert before.status_code == 200 and before.json()["status"] == "ready", before.text
        assert f"ratelimit {redis_server.url}: ok" in before.json()["checks"]["stores"]["detail"]

        redis_server.stop()
        try:
            with caplog.at_level(logging.WARNING, logger="mcp_middleware"):
                answers = [httpx2.post(f"{served.base}/mcp/local", json=LIST, headers=HEADERS) for _ in range(5)]
                down = ready(served.base)
            stores = down.json()["checks"]["stores"]
            assert f"ratelimit {redis_server.url}: down" in stores["detail"], stores
            assert "cache redis://127.0.0.1" in stores["detail"] and "lookups miss" in stores["detail"]
            if fail == "open":
                assert [a.status_code for a in answers] == [200] * 5  # every request is still served …
                assert down.status_code == 200, down.text  # … so the gateway stays in rotation
                assert down.json()["status"] == "degraded"
                assert stores["ok"] is True and stores["degraded"] is True
                assert "requests admitted (fail-open)" in stores["detail"]
            else:
                assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
                assert answers[0].json()["id"] == 7  # refused with a JSON-RPC error carrying the id
                assert down.status_code == 503 and down.json()["status"] == "not ready"
                assert stores["ok"] is False and "degraded" not in stores
                assert "requests refused (fail-closed)" in stores["detail"]
            outage = [r for r in caplog.records if r.name == "mcp_middleware.ratelimit" and "unavailable" in r.message]
            assert len(outage) == 1, [r.message for r in caplog.records]  # five requests, one line
            assert outage[0].levelno == logging.WARNING and "'local'" in outage[0].message
        finally:
            redis_server.start()

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mcp_middleware"):
            deadline = time.monotonic() + 10
            while True:
                answer = httpx2.post(f"{served.base}/mcp/local", json=LIST, headers=HEADERS)
                if answer.status_code == 200 and any("recovered" in r.message for r in caplog.records):
                    break
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.2)
            for _ in range(3):
                assert httpx2.post(f"{served.base}/mcp/local", json=LIST, headers=HEADERS).status_code == 200
        recovered = [r for r in caplog.records if r.name == "mcp_middleware.ratelimit" and "recovered" in r.message]
        assert len(recovered) == 1 and "'local'" in recovered[0].message
        assert recovered[0].levelno == logging.WARNING
        after = ready(served.base)
        assert after.status_code == 200 and after.json()["status"] == "ready", after.text
