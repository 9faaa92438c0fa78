"""The gateway exports its spans over OTLP/HTTP to a collector: here a real receiver on loopback.

The receiver is a Starlette app under uvicorn on 127.0.0.1 that decodes each
`ExportTraceServiceRequest` protobuf (the collector's protocol, `opentelemetry-proto`) and answers
as a collector does. The gateway is the real `mcp-gateway serve` process, pointed at the receiver
by `[tracing] otlp_endpoint` in one test and by `OTEL_EXPORTER_OTLP_ENDPOINT` in the other. The
spans are checked for their names, the service's resource, the stable HTTP attributes, and the
trace id the access log printed for the same request.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import Served, free_port, require, serve_app
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
trace_service = require(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2", "the OTLP receiver decodes the collector's protobuf"
)
require("opentelemetry.exporter.otlp.proto.http.trace_exporter", "the gateway exports with the [otlp] extra")

pytestmark = pytest.mark.anyio


@dataclass
class ExportedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    scope: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


@dataclass
class OtlpReceiver:
    """What the in-test collector received: every span of every export request, decoded."""

    spans: list[ExportedSpan] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    async def traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.content_types.append(request.headers.get("content-type", ""))
        export = trace_service.ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ExportedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            scope=scope_spans.scope.name,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            resource=resource,
                        )
                    )
        answer = trace_service.ExportTraceServiceResponse().SerializeToString()
        return Response(answer, media_type="application/x-protobuf")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])

    def named(self, name: str, scope: str = "mcp_middleware.tracing") -> list[ExportedSpan]:
        return [s for s in self.spans if s.name == name and s.scope == scope]


@pytest.fixture
def receiver() -> Iterator[tuple[OtlpReceiver, Served]]:
    collector = OtlpReceiver()
    with serve_app(collector.app()) as served:
        yield collector, served


def _start(config: Path, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return processes.start_gateway(config, port, log, env=env)


def _environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


_CONFIG = """
[gateway]
log_level = "info"
[[servers]]
name = "demo"
app = "tests.servers:build_server"
[aggregate]
enabled = true
[tracing]
access_log = true
"""


def _access_trace_ids(log: str, method: str) -> list[str]:
    """Trace ids of the access lines for `method` (whatever the log format wraps the JSON object in)."""
    found = []
    for line in log.splitlines():
        if '"mcp.request"' in line and f'"mcp.method":"{method}"' in line.replace(" ", ""):
            match = re.search(r'"trace_id":\s*"([0-9a-f]{32})"', line)
            if match:
                found.append(match.group(1))
    return found


async def _wait_for(condition: Any, patience: float = 15.0) -> None:
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the receiver did not get the spans in time")
        await anyio.sleep(0.05)


async def test_otlp_endpoint_in_the_config_exports_spans_and_the_shutdown_flushes_them(
    tmp_path: Path, receiver: tuple[OtlpReceiver, Served]
) -> None:
    collector, served = receiver
    config = tmp_path / "gateway.toml"
    config.write_text(
        _CONFIG + f'otlp_endpoint = "{served.base}"\nservice_name = "otlp-test-gateway"\n', encoding="utf-8"
    )
    port = free_port()
    log = tmp_path / "gateway.log"
    # The batch processor's timer would wait a minute: only the shutdown's flush can deliver in time.
    env = _environment(OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_SERVICE_NAME="overridden-by-the-config")
    process = await anyio.to_thread.run_sync(_start, config, port, log, env)
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp/demo", cache=None) as client:
            result = await client.call_tool("echo", {"text": "hi"})
            assert result.content[0].text == "hi"  # type: ignore[union-attr]
        async with Client(f"http://127.0.0.1:{port}/mcp", cache=None) as client:
            await client.call_tool("demo__echo", {"text": "via the aggregate"})
        await anyio.sleep(0.5)
        assert not collector.spans, "exported before the shutdown: the batch delay was not honoured"
        os.kill(process.pid, signal.SIGTERM)
        await anyio.to_thread.run_sync(process.wait, 20)
    finally:
        processes.stop(process)
    text = log.read_text()
    await _wait_for(lambda: collector.named("tools/call echo"))
    assert set(collector.content_types) == {"application/x-protobuf"}

    mount_span = next(s for s in collector.named("tools/call echo") if s.attributes["url.path"] == "/mcp/demo")
    assert mount_span.resource["service.name"] == "otlp-test-gateway"
    assert mount_span.kind == 2  # SPAN_KIND_SERVER
    attributes = mount_span.attributes
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.scheme"] == "http"
    assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == port
    assert attributes["mcp.method.name"] == "tools/call" and attributes["gen_ai.tool.name"] == "echo"
    assert not {"http.method", "http.status_code", "http.target", "net.host.name"} & set(attributes)

    aggregate_span = collector.named("tools/call demo__echo")
    assert [s.attributes["url.path"] for s in aggregate_span] == ["/mcp"]

    # The access line of the call names the exported span's trace.
    call_traces = _access_trace_ids(text, "tools/call")
    assert mount_span.trace_id in call_traces, (call_traces, text[-3000:])
    assert f'"span_id":"{mount_span.span_id}"' in text.replace(" ", "")
    assert all(trace_id in {s.trace_id for s in collector.spans} for trace_id in call_traces)

    # The mcp SDK's own span (the global provider the gateway installs) is the child of ours.
    sdk_children = [s for s in collector.spans if s.scope == "mcp-python-sdk" and s.trace_id == mount_span.trace_id]
    assert any(s.parent_span_id == mount_span.span_id for s in sdk_children), [
        (s.name, s.scope) for s in collector.spans
    ]


async def test_the_standard_otel_variables_alone_turn_export_on(
    tmp_path: Path, receiver: tuple[OtlpReceiver, Served]
) -> None:
    collector, served = receiver
    config = tmp_path / "gateway.toml"
    config.write_text(_CONFIG, encoding="utf-8")
    port = free_port()
    log = tmp_path / "gateway.log"
    env = _environment(
        OTEL_EXPORTER_OTLP_ENDPOINT=served.base,  # a base URL: `/v1/traces` is appended
        OTEL_SERVICE_NAME="from-the-environment",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    process = await anyio.to_thread.run_sync(_start, config, port, log, env)
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp/demo", cache=None) as client:
            await client.call_tool("echo", {"text": "hi"})
        await _wait_for(lambda: collector.named("tools/call echo"))  # while the gateway runs: the timer exported
        metrics = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/metrics")
    finally:
        processes.stop(process)
    [span] = collector.named("tools/call echo")
    assert span.resource["service.name"] == "from-the-environment"
    assert span.resource["deployment.environment.name"] == "test"
    assert span.trace_id in _access_trace_ids(log.read_text(), "tools/call")
    # `/metrics` carries the same service name, and the backend's name on the operation duration.
    assert 'service_name="from-the-environment"' in metrics
    assert "unknown_service" not in metrics
    assert re.search(r'mcp_server_operation_duration_seconds_count\{[^}]*mcp_middleware_server="demo"', metrics)


def _get(url: str) -> str:
    import httpx2

    return httpx2.get(url, timeout=10).text
