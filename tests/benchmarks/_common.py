"""What the benchmarks send, and how they summarise what they measure."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import orjson

MODERN_VERSION = "2026-07-28"
BODY_SIZE = 1024
"""Target size of a `tools/call` body in bytes (the issue's "1 KB tools/call")."""


def tools_call_body(request_id: int, *, era: str = "modern", size: int = BODY_SIZE) -> bytes:
    """A `tools/call` of the `echo` tool, its `text` padded so the body is exactly `size` bytes.

    Modern bodies carry the 2026-07-28 `_meta` envelope; legacy bodies carry none.
    """

    def build(text: str) -> bytes:
        params: dict[str, Any] = {"name": "echo", "arguments": {"text": text}}
        if era == "modern":
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})

    overhead = len(build(""))
    if overhead > size:
        raise ValueError(f"a {era} tools/call needs at least {overhead} bytes")
    body = build("x" * (size - overhead))
    assert len(body) == size
    return body


def modern_headers() -> list[tuple[str, str]]:
    """The headers of a 2026-07-28 `tools/call` of `echo` (besides Host and Content-Length)."""
    return [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", MODERN_VERSION),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ]


def legacy_headers() -> list[tuple[str, str]]:
    """A handshake-era POST: no version header (the server assumes 2025-03-26), no routing headers."""
    return [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ]


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0…100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


# --- reporting ----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None) -> str:
    """A plain-text table; `align` is one character per column, `l` or `r` (default: first left, rest right)."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for n, row in enumerate(cells):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def section(title: str) -> str:
    return f"\n== {title} " + "=" * max(0, 76 - len(title))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    versions = {}
    for dist in ("mcp", "starlette", "uvicorn", "h11", "orjson", "anyio"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "-"
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    cpu_model = "-"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
        "versions": versions,
    }
