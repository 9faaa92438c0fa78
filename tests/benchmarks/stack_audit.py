"""End-to-end stacks with the audit trail (`--apps core,audit`).

`audit`: `AuditMiddleware` with a JSONL file sink in a temporary folder (values off: the argument
digest only); `audit_values`: the same with values and redaction. The writer thread's work is
counted too by the instruction benchmark (callgrind counts every thread).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from starlette.types import ASGIApp

from mcp_middleware.audit import AuditMiddleware, AuditTrail, JsonlFileSink

from .apps import Stack


def _audited(values: bool) -> Stack:
    def wrap(app: ASGIApp) -> ASGIApp:
        folder = Path(tempfile.mkdtemp(prefix="mcp-audit-bench-"))
        atexit.register(shutil.rmtree, folder, True)
        trail = AuditTrail([JsonlFileSink(folder / "audit.jsonl")], values=values, redact=["*secret*"])
        return AuditMiddleware(app, trail=trail)

    return Stack(wrap)


STACKS = {"audit": _audited(False), "audit_values": _audited(True)}
