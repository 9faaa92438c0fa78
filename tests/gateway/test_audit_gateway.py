"""The gateway's `[audit]`: one record per operation through path mounts and the aggregate, refusals included,
the file verified by `mcp-gateway audit verify`, and the records exported as OTLP logs to a real receiver.

The gateway is built from a config file and served under uvicorn; clients are the SDK's in both eras
and raw HTTP for the refusals. The OTLP receiver is a Starlette app on loopback decoding the
collector's protobuf (`ExportLogsServiceRequest`).
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.cli import main
from mcp_middleware.gateway.config import ConfigError, load_config, parse_config
from tests.conftest import ERAS, Era, Served, require, serve_app
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import until

logs_service = require(
    "opentelemetry.proto.collector.logs.v1.logs_service_pb2", "the OTLP receiver decodes the collector's protobuf"
)
require("opentelemetry.exporter.otlp.proto.http._log_exporter", "the gateway exports with the [otlp] extra")

pytestmark = pytest.mark.anyio

TOKENS = {"tok-ann": "ann", "tok-bob": "bob"}


@dataclass
class LogReceiver:
    """What the in-test collector received: the body and attributes of every log record."""

    records: list[dict[str, Any]] = field(default_factory=list)

    async def logs(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = logs_service.ExportLogsServiceRequest.FromString(body)
        for resource_logs in export.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    self.records.append(
                        {
                            "event_name": record.event_name,
                            "body": _value(record.body),
                            "attributes": {a.key: _value(a.value) for a in record.attributes},
                        }
                    )
        return Response(b"", media_type="application/x-protobuf")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/logs", self.logs, methods=["POST"])])


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind is not None else None


def config_text(audit: str) -> str:
    tokens = "\n".join(
        f'"{token}" = {{ subject = "{subject}", scopes = ["mcp"] }}' for token, subject in TOKENS.items()
    )
    return f"""
[[servers]]
name = "local"
app = "tests.servers:build_server"

[[servers]]
name = "other"
app = "tests.servers:build_server"

[[servers]]
name = "strict"
app = "tests.servers:build_server"
[[servers.ratelimit_policies]]
name = "tiny"
capacity = 1
rate = 0.001

[auth]
mode = "static"
[auth.tokens]
{tokens}

[tracing]
access_log = false

[audit]
{audit}
"""


@contextlib.contextmanager
def running(tmp_path: Path, audit: str) -> Iterator[tuple[Gateway, Served, Path]]:
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(audit), encoding="utf-8")
    gateway = build_gateway(load_config(path))
    with serve_app(gateway.app) as served:
        yield gateway, served, tmp_path / "audit.jsonl"


@contextlib.asynccontextmanager
async def client(
    url: str, era: Era, token: str = "tok-ann", sent: list[tuple[str, str]] | None = None
) -> AsyncIterator[Client]:
    """An SDK client; `sent` collects (path, method) of every JSON-RPC request (with an id) it posts."""
    mode = "legacy" if era == "legacy" else "auto"

    async def note(request: httpx2.Request) -> None:
        if sent is not None and request.method == "POST":
            message = orjson.loads(request.content)
            if "id" in message and "method" in message:
                sent.append((request.url.path, message["method"]))

    hooks = {"request": [note]}
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30, event_hooks=hooks) as http:
        session = Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)
        async with session:
            yield session


def operations(path: Path) -> list[dict[str, Any]]:
    return [r for r in (orjson.loads(line) for line in path.read_bytes().splitlines()) if r["event"] == "mcp.operation"]


def count_operations(path: Path) -> int:
    return len(operations(path)) if path.exists() else 0


@pytest.mark.parametrize("era", ERAS)
async def test_mount_and_aggregate_calls_are_one_record_each(
    tmp_path: Path, era: Era, capsys: pytest.CaptureFixture[str]
) -> None:
    sent: list[tuple[str, str]] = []
    with running(tmp_path, 'file = "audit.jsonl"') as (_, served, audit):
        async with client(f"{served.base}/mcp/local", era, sent=sent) as session:
            assert (await session.call_tool("echo", {"text": "by mount"})).content
        async with client(f"{served.base}/mcp", era, sent=sent) as session:
            names = [tool.name for tool in (await session.list_tools()).tools]
            assert "local__echo" in names
            assert (await session.call_tool("local__echo", {"text": "by aggregate"})).content
        await until(lambda: count_operations(audit) >= len(sent), 20)
    ops = operations(audit)
    # Exactly one record per request the clients sent, through the mount and the aggregate alike: the
    # aggregate's call into the backend's stack (which has auth, rate limit… of its own) adds none.
    assert sorted((op["path"], op["method"]) for op in ops) == sorted(sent), sent
    calls = [op for op in ops if op["method"] == "tools/call"]
    assert len(calls) == 2
    by_mount, by_aggregate = sorted(calls, key=lambda op: op["path"], reverse=True)
    assert by_mount["target"] == "echo" and by_aggregate["target"] == "local__echo"
    assert by_mount["backend"] == by_aggregate["backend"] == "local"
    assert by_mount["principal"]["subject"] == by_aggregate["principal"]["subject"] == "ann"
    assert by_mount["outcome"]["class"] == by_aggregate["outcome"]["class"] == "ok"
    # The aggregate's call went through the backend's stack: its decisions are in the one record.
    components = [d["component"] for d in by_aggregate["decisions"]]
    assert components.count("auth") >= 2 and "router" in components, by_aggregate["decisions"]  # the door, the backend
    lists = [op for op in ops if op["path"] == "/mcp" and op["method"] == "tools/list"]
    assert lists and all(op["backend"] is None for op in lists)  # lists the aggregate answered from every backend
    assert main(["audit", "verify", str(audit)]) == 0
    assert capsys.readouterr().out.startswith("OK:")


async def test_refusals_are_recorded_and_an_altered_record_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running(tmp_path, 'file = "audit.jsonl"\nvalues = true\nredact = ["text"]') as (_, served, audit):
        async with httpx2.AsyncClient(timeout=10) as http:

            async def call(path: str, token: str | None, name: str = "echo", **extra: str) -> int:
                headers = modern_headers("tools/call", name, **extra)
                if token is not None:
                    headers["authorization"] = f"Bearer {token}"
                body = modern_body("tools/call", {"name": name, "arguments": {"text": "secret words"}})
                return (await http.post(f"{served.base}{path}", content=body, headers=headers)).status_code

            assert await call("/mcp", None, "local__echo") == 401  # no token at the aggregate's door
            assert await call("/mcp/strict", "tok-bob") == 200
            assert await call("/mcp/strict", "tok-bob") == 429  # the backend's own policy
            assert await call("/mcp", "tok-bob", "strict__echo") == 429  # the same budget through the aggregate
            assert await call("/mcp/local", "tok-ann", host="evil.example:80") == 421  # the front door
        await until(lambda: count_operations(audit) >= 5, 20)
    ops = operations(audit)
    assert [(op["outcome"]["class"], op["outcome"].get("by")) for op in ops] == [
        ("refused", "auth"),
        ("ok", None),
        ("refused", "ratelimit"),
        ("refused", "ratelimit"),
        ("refused", "frontdoor"),
    ]
    assert ops[0]["principal"] is None and ops[3]["principal"]["subject"] == "bob"
    assert ops[3]["backend"] == "strict"
    assert all(op["arguments"]["values"]["text"] == "[REDACTED]" for op in ops)
    assert "secret words" not in audit.read_text()

    assert main(["audit", "verify", str(audit)]) == 0
    lines = audit.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"subject":"bob"', b'"subject":"eve"')
    audit.write_bytes(b"".join(lines))
    capsys.readouterr()
    assert main(["audit", "verify", str(audit)]) == 1
    assert f"{audit}:4: record seq 3 was altered" in capsys.readouterr().err


async def test_records_are_exported_as_otlp_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = LogReceiver()
    with serve_app(receiver.app()) as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{collector.base}/v1/logs")
        with running(tmp_path, "otel = true") as (_, served, audit):
            async with client(f"{served.base}/mcp/local", "modern") as session:
                await session.call_tool("echo", {"text": "exported"})
        # The gateway's shutdown closed the trail, which flushed its provider.
        await until(lambda: any(r["event_name"] == "mcp.operation" for r in receiver.records), 20)
    assert not audit.exists()  # otel only: no file
    calls = [r for r in receiver.records if r["attributes"].get("mcp.method.name") == "tools/call"]
    assert len(calls) == 1
    body = calls[0]["body"]
    assert body["target"] == "echo" and body["backend"] == "local" and body["principal"]["subject"] == "ann"
    assert calls[0]["attributes"]["mcp_middleware.server"] == "local"
    assert body["hash"].startswith("sha256:")


def test_the_section_is_validated_with_key_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text('file = ""\nqueue = 0\nredact = ["ok", " "]\nbackups = 0'))
    said = str(caught.value)
    for expected in ("audit.file", "audit.queue", "audit.redact[1]", "audit.backups", "writes nowhere"):
        assert expected in said, said
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    config = parse_config(config_text(f'file = "{in_the_way}/audit.jsonl"'), source=tmp_path / "g.toml")
    with pytest.raises(ConfigError, match="cannot be written") as refused:
        build_gateway(config)
    assert "audit.file" in str(refused.value)
