"""What an operator reads in the log: each breaker transition once, at WARNING, naming the server.

The gateway keys a backend's breaker by its configured server name, so the line says `'flaky'`,
never the URL it proxies to, and one line per transition however many requests met the circuit.
"""

from __future__ import annotations

import logging
import time

import httpx2
import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from tests.conftest import free_port, serve_app
from tests.servers import build_server

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def test_each_breaker_transition_is_logged_once_naming_the_server(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there until the test starts the backend
    url = f"http://127.0.0.1:{port}/mcp"
    config = parse_config(
        f"""
[[servers]]
name = "flaky"
url = "{url}"
[aggregate]
enabled = false
[breaker]
consecutive_failures = 2
open_for = 3
[tracing]
access_log = false
"""
    )
    gateway = build_gateway(config)
    with serve_app(gateway.app) as served, caplog.at_level(logging.DEBUG, logger="mcp_middleware"):

        def post() -> int:
            return httpx2.post(f"{served.base}/mcp/flaky", json=INITIALIZE, headers=HEADERS, timeout=10).status_code

        assert [post() for _ in range(6)] == [502, 502, 503, 503, 503, 503]  # two failures open the circuit
        with serve_app(build_server().streamable_http_app(), port=port):
            time.sleep(3.4)  # the circuit's open time (3 s ± 10 % jitter: a loaded machine's posts fit in it) is over
            assert [post() for _ in range(4)] == [200] * 4  # the probe closes it, then calls flow
    breaker_lines = [r for r in caplog.records if r.name == "mcp_middleware.breaker"]
    assert [r.levelno for r in breaker_lines] == [logging.WARNING] * 3, [r.getMessage() for r in breaker_lines]
    opened, probing, closed = (r.getMessage() for r in breaker_lines)
    assert opened.startswith("circuit breaker 'flaky' open (consecutive_failures): calls refused for ")
    assert probing == "circuit breaker 'flaky' half-open (open_elapsed): probing"
    assert closed == "circuit breaker 'flaky' closed (probes_succeeded)"
    assert not any(f"{port}" in r.getMessage() for r in breaker_lines)  # the name, not the URL
