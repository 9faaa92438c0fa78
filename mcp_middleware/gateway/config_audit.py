"""`[audit]`: the gateway's audit trail, read from the file and built into an `AuditTrail`.

```toml
[audit]
file = "audit.jsonl"          # relative to the config file's folder
max_bytes = "100MiB"          # rotate at this size ...
backups = 10                  # ... keeping this many older files (audit.jsonl.1 … .10)
values = false                # argument values besides their digest
redact = ["password", "token", "*secret*"]
otel = true                   # also as OpenTelemetry log records (OTLP when an endpoint is configured)
queue = 10000                 # operations waiting to be written; beyond: dropped, counted, warned
key = "${env:AUDIT_KEY}"      # sign the chain (HMAC-SHA256); a list rotates (newest first)
```

Verify a signed chain with `AUDIT_KEY=… mcp-gateway audit verify --key-env AUDIT_KEY audit.jsonl`.

OpenTelemetry logs go to the OTLP endpoint of `[tracing]` (its `/v1/logs`), else to
`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` (as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/logs`), else
through the global logger provider (which records nothing unless the host set one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .toml_reader import Reader

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider

    from mcp_middleware.audit import AuditSink, AuditTrail

    from .config_types import GatewayConfig, TracingSettings

__all__ = ["AuditSettings", "audit", "audit_trail", "logs_endpoint"]

logger = logging.getLogger("mcp_middleware.gateway")

_LOGS_PATH: Final = "/v1/logs"
_TRACES_PATH: Final = "/v1/traces"


@dataclass(frozen=True)
class AuditSettings:
    """`[audit]`: on when the section names a `file` or `otel = true`."""

    file: str | None = None
    max_bytes: int = 100 * 2**20
    backups: int = 10
    values: bool = False
    redact: tuple[str, ...] = ()
    otel: bool = False
    queue: int = 10_000
    keys: tuple[str, ...] = field(default=(), repr=False)
    """Secrets signing the chain, newest first (resolved from `${env:…}`; never printed)."""

    @property
    def enabled(self) -> bool:
        return self.file is not None or self.otel


def audit(reader: Reader) -> AuditSettings:
    """Read `[audit]`; a section that writes nowhere is a problem (an audit trail must not be silently off)."""
    d = AuditSettings()
    file = reader.string("file", None)
    redact = reader.strings("redact", ())
    keys = _keys(reader)
    for index, pattern in enumerate(redact):
        if not pattern.strip():
            reader.problem(f"redact[{index}]", "must be a key name or a glob such as '*secret*', not empty")
    settings = AuditSettings(
        file=file or None,
        max_bytes=reader.size("max_bytes", d.max_bytes),
        backups=reader.integer("backups", d.backups, minimum=1, maximum=10_000),
        values=reader.boolean("values", d.values),
        redact=redact,
        otel=reader.boolean("otel", d.otel),
        queue=reader.integer("queue", d.queue, minimum=1, maximum=10_000_000),
        keys=keys,
    )
    if file == "":
        reader.problem("file", "must name a file, not be empty")
    if not settings.enabled:
        reader.problem(None, 'writes nowhere: set file = "audit.jsonl" or otel = true (or remove the section)')
    if settings.max_bytes < 1024:
        reader.problem("max_bytes", f"must be at least 1KiB (a file per record helps no one), not {settings.max_bytes}")
    reader.done()
    return settings


def _keys(reader: Reader) -> tuple[str, ...]:
    """`key`: one secret or a list (newest first), each long enough to sign with."""
    from mcp_middleware.core.sealing import MIN_SECRET_LENGTH

    raw = reader.raw("key", None)
    if raw is None:
        return ()
    keys = (reader.string("key"),) if isinstance(raw, str) else reader.strings("key", ())
    if isinstance(raw, list) and not raw:
        reader.problem("key", "must name at least one key (or remove it)")
    for index, key in enumerate(keys):
        if key and len(key.encode()) < MIN_SECRET_LENGTH:  # an unset ${env:…} is reported already
            where = "key" if isinstance(raw, str) else f"key[{index}]"
            reader.problem(
                where, f"must be at least {MIN_SECRET_LENGTH} characters long (a guessable key signs nothing)"
            )
    return tuple(key for key in keys if key)


def audit_trail(config: GatewayConfig, *, resource_attributes: Mapping[str, str] | None = None) -> AuditTrail:
    """The trail `[audit]` describes (nothing is opened yet: its writer thread opens the file on first use).

    Raises ValueError when the file's folder cannot be written (found at build time: `check-config` says so).
    """
    from mcp_middleware.audit import AuditKeys, AuditTrail, JsonlFileSink, OtelLogSink

    settings = config.audit
    sinks: list[AuditSink] = []
    if settings.file is not None:
        path = Path(settings.file)
        if not path.is_absolute():
            path = (config.source.parent if config.source else Path.cwd()) / path
        _check_writable(path)
        sinks.append(JsonlFileSink(path, max_bytes=settings.max_bytes, backups=settings.backups))
    if settings.otel:
        provider, own = _logger_provider(config.tracing, resource_attributes or {})
        sinks.append(OtelLogSink(provider, shutdown=own))
    keys = AuditKeys(settings.keys) if settings.keys else None
    return AuditTrail(sinks, values=settings.values, redact=settings.redact, queue_size=settings.queue, keys=keys)


def _check_writable(path: Path) -> None:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the writer creates the missing folders: the first existing one must be writable
    if not folder.is_dir():
        raise ValueError(f"[audit] file {path} cannot be written ({folder} is not a folder)")
    target = path if path.exists() else folder
    if path.is_dir() or not os.access(target, os.W_OK):
        raise ValueError(f"[audit] file {path} cannot be written ({target} is not writable)")


def logs_endpoint(tracing: TracingSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """Where OTLP/HTTP log records go: `[tracing] otlp_endpoint`'s `/v1/logs`, else the standard variables.

    >>> from mcp_middleware.gateway.config_types import TracingSettings
    >>> logs_endpoint(TracingSettings(otlp_endpoint="http://127.0.0.1:4318/v1/traces"), environ={})
    'http://127.0.0.1:4318/v1/logs'
    """
    env = os.environ if environ is None else environ
    endpoint = tracing.otlp_endpoint
    if endpoint:
        base = endpoint.rstrip("/")
        base = base[: -len(_TRACES_PATH)] if base.endswith(_TRACES_PATH) else base
        return base + _LOGS_PATH
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_LOGS_EXPORTER", "otlp").strip().lower() == "none":
        return None
    if specific := env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "").strip():
        return specific
    if generic := env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return generic.rstrip("/") + _LOGS_PATH
    return None


def _logger_provider(tracing: TracingSettings, resource_attributes: Mapping[str, str]) -> tuple[LoggerProvider, bool]:
    """An exporting provider of the gateway's own (True: the trail shuts it down), else the global one."""
    from opentelemetry import _logs

    endpoint = logs_endpoint(tracing)
    if endpoint is None:
        logger.warning(
            "[audit] otel = true but no OTLP endpoint is configured ([tracing] otlp_endpoint or "
            "OTEL_EXPORTER_OTLP_ENDPOINT): audit records go to the global logger provider"
        )
        return _logs.get_logger_provider(), False
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
    except ImportError as exc:
        raise ImportError(
            "[audit] otel = true needs the OpenTelemetry SDK and OTLP exporter: pip install 'mcp-middleware[otlp]'"
        ) from exc
    from .telemetry import TelemetrySettings, service_name

    name = service_name(TelemetrySettings(service_name=tracing.service_name))
    provider = SdkLoggerProvider(resource=Resource.create({"service.name": name, **resource_attributes}))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint)))
    return provider, True
