"""The reference gateway as an attacker meets it: every middleware on, real backends, one valid token.

Tracing (with Prometheus at `/metrics` and the access log) is outermost, outside auth, as the
gateway builds it; the rate limit is generous so that it never hides what the layers behind it say.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import Served, serve_app
from tests.servers import build_server

TOKEN = "sec-test-token-9f2c"
BODY_LIMIT = 64 * 1024


@dataclass
class HostileGateway:
    gateway: Gateway
    served: Served
    bare: Served
    """The bare SDK server (same tools, same body bound), for comparison; also the proxied backend."""

    @property
    def metrics_url(self) -> str:
        return f"{self.served.base}/metrics"

    def url(self, target: str) -> str:
        """`local` (in-process mount), `remote` (proxied mount) or `aggregate`."""
        return f"{self.served.base}/mcp" if target == "aggregate" else f"{self.served.base}/mcp/{target}"


@contextlib.contextmanager
def hostile_gateway(folder: Path) -> Iterator[HostileGateway]:
    """Run the gateway (and the bare server it proxies to) on loopback until the block ends."""
    config = folder / "gateway.toml"
    with serve_app(build_server().streamable_http_app(max_request_body_size=BODY_LIMIT)) as bare:
        config.write_text(
            f"""
[gateway]
prefix = "/mcp"

[front_door]
max_body_size = "{BODY_LIMIT // 1024}KiB"

[[servers]]
name = "local"
app = "tests.servers:build_server"

[[servers]]
name = "remote"
url = "{bare.mcp_url}"

[auth]
mode = "static"
[auth.tokens]
"${{env:MCP_SECURITY_TEST_TOKEN}}" = ["mcp"]

[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 100000
rate = 100000

[breaker]
consecutive_failures = 100000

[cache]
ttl = 30

[tracing]
metrics_path = "/metrics"
access_log = true
""",
            encoding="utf-8",
        )
        previous = os.environ.get("MCP_SECURITY_TEST_TOKEN")
        os.environ["MCP_SECURITY_TEST_TOKEN"] = TOKEN
        try:
            gateway = build_gateway(load_config(config))
        finally:
            if previous is None:
                del os.environ["MCP_SECURITY_TEST_TOKEN"]
            else:
                os.environ["MCP_SECURITY_TEST_TOKEN"] = previous
        with serve_app(gateway.app) as served:
            yield HostileGateway(gateway, served, bare)
