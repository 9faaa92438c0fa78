"""With no provider passed, the middleware uses the global ones, even when they are set after it was built.

The global providers can be set once per process, so this runs in a subprocess. It is also the
setup most deployments have, with nothing redirected: the `mcp` SDK's own spans go to the global
provider by themselves, and they still land under the request span in both eras.
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
    import asyncio
    import orjson
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from mcp_middleware.tracing import TracingMiddleware
    from tests.conftest import ERAS, connect, serve_app
    from tests.servers import build_server

    app = TracingMiddleware(build_server().streamable_http_app())  # built before any provider is set
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    async def main():
        report = {"tracing": app.tracing, "metrics": app.metrics.active}
        with serve_app(app) as served:
            for era in ERAS:
                async with connect(served.mcp_url, era) as client:
                    await client.call_tool("echo", {"text": "hi"})
                for _ in range(500):  # the server ends its spans just after the last byte left
                    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("tools/call echo")]
                    if len(spans) >= 3:
                        break
                    await asyncio.sleep(0.01)
                exporter.clear()
                report[era] = [
                    {
                        "scope": s.instrumentation_scope.name,
                        "kind": s.kind.name,
                        "trace": f"{s.context.trace_id:032x}",
                        "span": s.context.span_id,
                        "parent": s.parent.span_id if s.parent else None,
                    }
                    for s in spans
                ]
        data = reader.get_metrics_data()
        report["metrics_names"] = sorted(
            {m.name for r in data.resource_metrics for sm in r.scope_metrics for m in sm.metrics}
        )
        print("REPORT " + orjson.dumps(report).decode())

    asyncio.run(main())
    """
)


def test_global_providers_set_late_are_used_and_the_sdk_span_nests_under_ours() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = processes.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    report = orjson.loads(line.removeprefix("REPORT "))
    assert report["tracing"] is True and report["metrics"] is True
    for era in ("modern", "legacy"):
        spans = report[era]
        [ours] = [s for s in spans if s["scope"] == "mcp_middleware.tracing"]
        [server] = [s for s in spans if s["scope"] == "mcp-python-sdk" and s["kind"] == "SERVER"]
        [client] = [s for s in spans if s["kind"] == "CLIENT"]  # the SDK client's "MCP send tools/call echo"
        assert server["trace"] == ours["trace"] == client["trace"]
        assert server["parent"] == ours["span"] and ours["parent"] == client["span"]
    assert "mcp.server.operation.duration" in report["metrics_names"]
