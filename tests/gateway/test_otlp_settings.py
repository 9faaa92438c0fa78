"""`[tracing]` export settings and the `OTEL_*` variables: which wins, what is refused, what each builds."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mcp_middleware.core import record_decision
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.gateway.telemetry import (
    Telemetry,
    TelemetrySettings,
    backend_label,
    export_target,
    service_name,
)

SERVER = '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'


def test_the_config_endpoint_wins_and_a_base_url_gets_the_traces_path() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}
    assert export_target(TelemetrySettings(otlp_endpoint="http://cfg:4318/"), env) == (
        "http/protobuf",
        "http://cfg:4318/v1/traces",
    )
    assert export_target(TelemetrySettings(otlp_endpoint="http://cfg:4318/v1/traces"), env) == (
        "http/protobuf",
        "http://cfg:4318/v1/traces",
    )
    assert export_target(TelemetrySettings(), env) == ("http/protobuf", "http://env:4318/v1/traces")


def test_the_signal_specific_variable_is_used_as_it_is_and_wins_over_the_generic_one() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}
    assert export_target(TelemetrySettings(), env) == ("http/protobuf", "http://t/x")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:4318"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:4318"},
    ],
)
def test_no_endpoint_or_export_switched_off_exports_nothing(env: dict[str, str]) -> None:
    assert export_target(TelemetrySettings(), env) is None
    assert Telemetry(TelemetrySettings(), env).tracer_provider is None


def test_the_protocol_from_the_config_then_the_variables() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert export_target(TelemetrySettings(), env) == ("grpc", "http://e:4317")  # grpc takes the URL as it is
    assert export_target(TelemetrySettings(otlp_protocol="http/protobuf"), env) == (
        "http/protobuf",
        "http://e:4317/v1/traces",
    )


def test_service_name_config_then_otel_service_name_then_resource_attributes_then_default() -> None:
    env = {"OTEL_SERVICE_NAME": "from-env", "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,team=x"}
    assert service_name(TelemetrySettings(service_name="from-config"), env) == "from-config"
    assert service_name(TelemetrySettings(), env) == "from-env"
    assert service_name(TelemetrySettings(), {"OTEL_RESOURCE_ATTRIBUTES": "team=x, service.name=a"}) == "a"
    assert service_name(TelemetrySettings(), {}) == "mcp-gateway"


def test_the_resource_names_the_service_and_keeps_the_other_resource_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    resource = Telemetry(TelemetrySettings(service_name="gw-1")).resource
    assert resource.attributes["service.name"] == "gw-1"
    assert resource.attributes["deployment.environment.name"] == "prod"


def test_grpc_without_its_exporter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ImportError, match="opentelemetry-exporter-otlp-proto-grpc"):
        Telemetry(TelemetrySettings(otlp_endpoint="http://127.0.0.1:4317", otlp_protocol="grpc"), {})


def test_bad_values_are_config_problems_with_their_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            SERVER + '[tracing]\notlp_endpoint = "collector:4318"\notlp_protocol = "thrift"\nservice_name = 3\n'
        )
    assert [(p.path, p.line, p.message) for p in caught.value.problems] == [
        ("tracing.otlp_endpoint", 5, "must be an http:// or https:// URL, not 'collector:4318'"),
        ("tracing.otlp_protocol", 6, "must be one of 'http/protobuf', 'grpc', not 'thrift'"),
        ("tracing.service_name", 7, "must be a string, not an integer (3)"),
    ]


def test_the_gateway_exports_to_the_configured_endpoint_and_names_its_metrics_resource() -> None:
    config = parse_config(SERVER + '[tracing]\notlp_endpoint = "http://127.0.0.1:9"\nservice_name = "gw-test"\n')
    gateway = build_gateway(config)
    try:
        assert gateway.telemetry is not None and gateway.telemetry.tracer_provider is not None
        assert gateway.telemetry.tracer_provider.resource.attributes["service.name"] == "gw-test"
        assert gateway.telemetry.target == ("http/protobuf", "http://127.0.0.1:9/v1/traces")
    finally:
        assert gateway.telemetry is not None
        gateway.telemetry.shutdown()


def _scope(path: str, decisions: tuple[tuple[str, str, dict[str, Any]], ...] = ()) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "path": path}
    for component, outcome, attributes in decisions:
        record_decision(scope, component, outcome, **attributes)
    return scope


def test_the_backend_label_is_a_configured_name_or_nothing() -> None:
    label = backend_label("/mcp", ["search", "files"])
    assert label(_scope("/mcp/search")) == "search"
    assert label(_scope("/mcp/search/")) == "search"
    assert label(_scope("/mcp/evil")) is None  # a path a client chose is no label value
    assert label(_scope("/mcp/search/../files")) is None
    assert label(_scope("/mcp", (("router", "routed", {"server": "files"}),))) == "files"
    assert label(_scope("/mcp", (("router", "routed", {"server": "evil"}),))) is None
    assert label(_scope("/mcp")) is None


@pytest.mark.anyio
async def test_the_operation_duration_is_labelled_by_backend_for_mounts_and_the_aggregate() -> None:
    import httpx2
    from mcp import Client
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

    from tests.conftest import serve_app
    from tests.support.requests import modern_body, modern_headers

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    config = parse_config(SERVER + "[aggregate]\nenabled = true\n[tracing]\naccess_log = false\n")
    gateway = build_gateway(config, meter_provider=provider)
    with serve_app(gateway.app) as served:
        async with Client(f"{served.base}/mcp/demo", cache=None) as client:
            await client.call_tool("echo", {"text": "a"})
        async with Client(f"{served.base}/mcp", cache=None) as client:
            await client.call_tool("demo__echo", {"text": "b"})
        async with httpx2.AsyncClient() as http:  # a path no server is mounted at
            body, headers = modern_body("tools/list"), modern_headers("tools/list")
            assert (await http.post(f"{served.base}/mcp/evil", content=body, headers=headers)).status_code == 404
    data = reader.get_metrics_data()
    points = [
        point
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "mcp.server.operation.duration"
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    ]
    calls = sorted(
        ((p.attributes or {}).get("gen_ai.tool.name"), (p.attributes or {}).get("mcp_middleware.server"), p.count)
        for p in points
        if (p.attributes or {}).get("mcp.method.name") == "tools/call"
    )
    assert calls == [("demo__echo", "demo", 1), ("echo", "demo", 1)]  # the mount, and routed by the aggregate
    servers = {(p.attributes or {}).get("mcp_middleware.server") for p in points}
    assert "evil" not in servers and servers <= {"demo", None}
    provider.shutdown()


@pytest.mark.anyio
async def test_a_collector_that_is_down_neither_fails_requests_nor_holds_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import time

    from mcp import Client

    from tests.conftest import free_port, serve_app

    dead = free_port()  # nothing listens there
    config = parse_config(SERVER + f'[tracing]\notlp_endpoint = "http://127.0.0.1:{dead}"\n')
    gateway = build_gateway(config)
    with caplog.at_level(logging.INFO, logger="mcp_middleware.access"):
        with serve_app(gateway.app) as served:
            async with Client(f"{served.base}/mcp/demo", cache=None) as client:
                assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]
            stopping = time.monotonic()
        # The flush waits at most SHUTDOWN_PATIENCE (3 s); unbounded, the exporter's retries took 6.4 s here.
        assert time.monotonic() - stopping < 5.5
    lines = [r.getMessage() for r in caplog.records if r.name == "mcp_middleware.access"]
    assert lines and all('"trace_id":"' in line for line in lines)  # spans were made, whatever the collector
