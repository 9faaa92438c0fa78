"""What logging costs the gateway with an in-process backend, and what the SDK's Rich handler would.

    python -m tests.benchmarks --only logging [--quick]

The e2e method (`bench_e2e`, same-cpu): each round starts fresh uvicorn processes of the four stacks
of `stack_logging.py` at once, pinned to one CPU, each loaded by its own 16 keep-alive connections
with the modern 1 KB `tools/call` in the same window; ratios are medians of per-round ratios against
`logs_off` (the same gateway writing no line per request). Every server writes its stderr to a file,
as under a container runtime.

- `logs_json / logs_off`: the JSON access line, the only record per request once `configure_logging`
  has run (the SDK writes nothing per request at WARNING): what the gateway pays for logging.
- `logs_rich / logs_off`: the same gateway had the SDK's Rich handler been left on the root logger.
- `logs_json / logs_rich`: what `configure_logging` saves.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._common import section
from .bench_e2e import report, run_e2e

APPS = ("logs_off", "logs_json", "logs_text", "logs_rich")


def main(quick: bool) -> dict[str, Any]:
    repeats, warmup, duration = (2, 0.5, 2.0) if quick else (5, 1.0, 4.0)
    print(section("logging: the gateway (access log on) under four logging set-ups, in-process backend"))
    result = asyncio.run(
        run_e2e(repeats=repeats, warmup=warmup, duration=duration, connections=16, pin=False, apps=APPS)
    )
    print(report(result))
    json_ratio, rich_ratio = result.ratio("logs_json"), result.ratio("logs_rich")
    saved = json_ratio / rich_ratio
    print(f"\n  logs_json / logs_rich: {saved:.3f} (what configure_logging saves over the SDK's Rich handler)")
    return {
        "e2e": result.as_dict(),
        "targets": [
            ["gateway with JSON access log / without logging (same run)", json_ratio, "x", "reported", True],
            ["gateway with the SDK's Rich handler left on / without logging", rich_ratio, "x", "reported", True],
            ["JSON logging / the SDK's Rich handler", saved, "x", "> 1", saved > 1],
        ],
    }
