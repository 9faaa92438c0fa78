"""Without the OpenTelemetry SDK (the API alone, as `mcp` itself depends on), everything still works.

The SDK is installed here, so a subprocess hides it: an import hook refuses `opentelemetry.sdk` and
the exporters before anything is imported, the way a deployment without them would fail.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import orjson

from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class WithoutSdk(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
                raise ImportError(f"{name} is not installed")
            return None

    sys.meta_path.insert(0, WithoutSdk())

    import asyncio, logging
    import httpx2, orjson
    from mcp_middleware.tracing import ACCESS_LOGGER, TracingMiddleware
    from tests.conftest import ERAS, connect, serve_app
    from tests.servers import build_server

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(orjson.loads(record.getMessage()))

    lines = Lines()
    logging.getLogger(ACCESS_LOGGER).addHandler(lines)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)

    async def main():
        report = {}
        for access_log in (False, True):
            app = TracingMiddleware(build_server().streamable_http_app(), access_log=access_log)
            report[f"tracing/{access_log}"] = app.tracing
            report[f"metrics/{access_log}"] = app.metrics.active
            with serve_app(app) as served:
                for era in ERAS:
                    async with connect(served.mcp_url, era) as client:
                        result = await client.call_tool("echo", {"text": "api only"})
                        report[f"{era}/{access_log}"] = result.content[0].text
                async with httpx2.AsyncClient() as http:
                    bad = await http.post(served.mcp_url, content=b"{}", headers={"content-type": "text/plain"})
                report[f"bad/{access_log}"] = [bad.status_code, bad.json()["error"]["code"]]
        report["log_lines"] = len(lines.lines)
        report["log_echo"] = [l for l in lines.lines if l.get("mcp.target") == "echo"][:1]
        report["sdk_loaded"] = sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))
        print("REPORT " + orjson.dumps(report).decode())

    asyncio.run(main())
    """
)


def test_everything_works_with_the_api_alone() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    done = processes.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    report = orjson.loads(line.removeprefix("REPORT "))
    assert report["sdk_loaded"] == []
    for access_log in ("False", "True"):
        assert report[f"tracing/{access_log}"] is False and report[f"metrics/{access_log}"] is False
        assert report[f"modern/{access_log}"] == report[f"legacy/{access_log}"] == "api only"
        assert report[f"bad/{access_log}"] == [415, -32011]  # the core still answers bad input
    # Only the second server logged (the first had no access log); ids are absent without a tracer.
    assert report["log_lines"] >= 5
    [echo] = report["log_echo"]
    assert echo["mcp.method"] == "tools/call" and echo["http.status"] == 200 and echo["trace_id"] is None
