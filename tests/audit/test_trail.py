"""The trail's writer: a full queue drops and says so (counter, one warning, a record), OpenTelemetry logs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from mcp_middleware.audit import AuditTrail, JsonlFileSink, OtelLogSink, Redactor, verify_files
from tests.audit.support import call_echo, read_records, served_trail, settled
from tests.conftest import ERAS, Era, connect
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


class StalledDisk(JsonlFileSink):
    """A file sink whose writes wait for `resume`: a disk that stalls, which cannot be made on demand here."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.resume = threading.Event()

    def write(self, record: Mapping[str, Any]) -> None:
        assert self.resume.wait(30), "the test never resumed the disk"
        super().write(record)


def dropped_counter(reader: InMemoryMetricReader) -> float:
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "mcp.middleware.audit.dropped":
                    points = metric.data.data_points
                    return sum(p.value for p in points if isinstance(p, NumberDataPoint))
    raise AssertionError("mcp.middleware.audit.dropped was not reported")


async def test_a_full_queue_drops_counts_warns_once_and_never_blocks_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    disk = StalledDisk(path)
    reader = InMemoryMetricReader()
    trail = AuditTrail([disk], queue_size=3, meter_provider=MeterProvider(metric_readers=[reader]))
    caplog.set_level(logging.WARNING, logger="mcp_middleware.audit")
    with served_trail(trail) as served:
        await call_echo(served, 12)  # every request answered while the disk is stalled
        await until(lambda: trail.offered == 12)
        assert trail.dropped >= 12 - 3 - 1  # the queue holds 3; the writer holds at most one more
        assert dropped_counter(reader) == trail.dropped
        full = [r for r in caplog.records if "audit queue full" in r.getMessage()]
        assert len(full) == 1, [r.getMessage() for r in caplog.records]  # one warning for the burst
        disk.resume.set()
        await settled(trail, 12)
        await call_echo(served, 1)  # the queue accepts again
        await settled(trail, 13)
        assert any("accepting operations again" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
    records = read_records(path)
    drops = [r for r in records if r["event"] == "audit.dropped"]
    assert sum(r["count"] for r in drops) == trail.dropped  # the chain itself says what is missing
    operations = [r for r in records if r["event"] == "mcp.operation"]
    assert len(operations) + trail.dropped == 13
    verified = verify_files([path])
    assert verified.ok and verified.dropped == trail.dropped, verified.summary()


async def test_waiting_request_bodies_are_bounded_in_bytes(tmp_path: Path) -> None:
    disk = StalledDisk(tmp_path / "audit.jsonl")
    trail = AuditTrail([disk], queue_size=10_000, max_pending_bytes=2_000)
    with served_trail(trail) as served:
        await call_echo(served, 20, text="x" * 500)  # each body > 500 bytes: at most 3 wait
        await until(lambda: trail.offered == 20)
        assert trail.dropped >= 16
        disk.resume.set()
        await settled(trail, 20)


@pytest.mark.parametrize("era", ERAS)
async def test_records_reach_opentelemetry_logs(tmp_path: Path, era: Era) -> None:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlFileSink(path), OtelLogSink(provider)])
    with served_trail(trail) as served:
        async with connect(served.mcp_url, era) as client:
            await client.call_tool("echo", {"text": "to the collector"})
        await settled(trail, 2)
    in_file = {r["hash"]: r for r in read_records(path)}
    logs = exporter.get_finished_logs()
    assert len(logs) == len(in_file)
    call = next(log.log_record for log in logs if log.log_record.attributes.get("mcp.method.name") == "tools/call")
    assert call.event_name == "mcp.operation"
    assert call.attributes["mcp_middleware.audit.outcome"] == "ok"
    body = call.body
    assert isinstance(body, dict) and body["target"] == "echo"
    assert in_file[body["hash"]]["arguments"]["digest"] == body["arguments"]["digest"]
    assert call.attributes["mcp_middleware.audit.hash"] == body["hash"]


def test_redaction_patterns_are_globs_any_case_at_any_depth() -> None:
    redactor = Redactor(["password", "token", "*secret*"])
    deep: Any = {"password": "p"}
    for _ in range(2000):  # deeper than Python's recursion limit: redaction does not recurse
        deep = {"next": [deep], "Token": "t"}
    redacted = redactor.redact(deep)
    node = redacted
    for _ in range(2000):
        assert node["Token"] == "[REDACTED]"
        node = node["next"][0]
    assert node == {"password": "[REDACTED]"}
    assert redactor.redact({"my_SECRET_key": 1, "tokens": 2, "list": [{"x": {"password": 3}}]}) == {
        "my_SECRET_key": "[REDACTED]",
        "tokens": 2,
        "list": [{"x": {"password": "[REDACTED]"}}],
    }


async def test_a_second_writer_of_the_same_file_is_refused_not_interleaved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditTrail([JsonlFileSink(path)])
    second = AuditTrail([JsonlFileSink(path)])
    caplog.set_level(logging.WARNING, logger="mcp_middleware.audit")
    with served_trail(first) as one, served_trail(second) as two:
        await call_echo(one, 2)
        await settled(first, 2)
        await call_echo(two, 3)
        await settled(second, 3)
        assert second.failures >= 3 and first.failures == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "being written by another audit trail" in said
    assert said.count("failed to write") == 1  # once per outage, not once per record
    verified = verify_files([path])
    assert verified.ok and verified.records == 3, verified.summary()  # the first trail's start and 2 operations
