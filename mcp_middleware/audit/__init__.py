"""An audit trail of MCP operations: one hash-chained record per operation, written off the request path.

- :class:`AuditMiddleware` captures each operation (principal, backend, method, target, argument
  digest, every middleware's decision, outcome, duration) without delaying it;
- :class:`AuditTrail` queues operations (bounded, never blocking) for one writer thread that
  seals them into a hash chain and hands them to its sinks;
- sinks: :class:`JsonlFileSink` (JSONL, size-based rotation) and :class:`OtelLogSink`
  (OpenTelemetry logs);
- :func:`verify_files` (and `mcp-gateway audit verify FILE…`) finds the first edited, deleted,
  inserted or reordered record.

>>> from mcp.server.mcpserver import MCPServer
>>> trail = AuditTrail([JsonlFileSink("audit.jsonl", max_bytes=50 * 2**20, backups=10)], redact=["*secret*"])
>>> app = AuditMiddleware(MCPServer("demo").streamable_http_app(), trail=trail)
"""

from .chain import AuditKeys, Chain, canonical, record_digest
from .middleware import AUDITED_SCOPE_KEY, AuditMiddleware
from .record import REDACTED, Operation, Redactor
from .sinks import AuditSink, JsonlFileSink, OtelLogSink
from .trail import AuditTrail
from .verify import Break, Verification, backup_files, verify_files

__all__ = [
    "AUDITED_SCOPE_KEY",
    "REDACTED",
    "AuditKeys",
    "AuditMiddleware",
    "AuditSink",
    "AuditTrail",
    "Break",
    "Chain",
    "JsonlFileSink",
    "Operation",
    "OtelLogSink",
    "Redactor",
    "Verification",
    "backup_files",
    "canonical",
    "record_digest",
    "verify_files",
]
