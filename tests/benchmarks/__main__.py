"""`python -m tests.benchmarks` (= `make bench`): run the benchmarks and print a report.

python -m tests.benchmarks                 # everything (about 1.5 minutes)
python -m tests.benchmarks --quick         # a smoke run: fewer samples, 2 short repeats
python -m tests.benchmarks --only micro    # in-process cost of the core only
python -m tests.benchmarks --only e2e --repeats 6 --json out.json
python -m tests.benchmarks --only instructions   # deterministic instruction counts (valgrind)
python -m tests.benchmarks --only bytecodes      # issue 17's targets in bytecodes a request (deterministic, seconds)
python -m tests.benchmarks --only cpu            # issue 17's targets in CPU a request, in process, pinned (the ruler)
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pkgutil
import signal
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from . import bench_bytecodes, bench_core, bench_e2e, bench_instructions
from ._common import machine, section, verdict
from .apps import APPS

_BUILT_IN = ("micro", "e2e", "instructions")


def components() -> dict[str, ModuleType]:
    """The benchmarks of each middleware: every `bench_<name>.py` beside this file other than the
    core's. Each defines `main(quick: bool) -> dict` that prints its own report and returns its
    figures, with `"targets": [[label, value, unit, target, met], ...]` for the summary."""
    found = {}
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        name = module.name.removeprefix("bench_")
        if module.name.startswith("bench_") and name not in ("core", "e2e", "instructions", "wire"):  # (wire: --wire's)
            found[name] = importlib.import_module(f"{__package__}.{module.name}")
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description="Benchmarks of mcp_middleware, with ratios against the bare app/server measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (fewer samples and repeats)")
    parser.add_argument("--only", choices=(*_BUILT_IN, *components()), help="run one benchmark only")
    micro = parser.add_argument_group("micro")
    micro.add_argument("--samples", type=int, help="samples per case (default 200, quick 40)")
    micro.add_argument("--sample-ms", type=float, help="target milliseconds per sample (default 4, quick 2)")
    micro.add_argument("--in-situ", type=int, help="requests timed in situ (default 2000, quick 300)")
    e2e = parser.add_argument_group("e2e")
    e2e.add_argument("--repeats", type=int, help="runs per app, alternating ABBA (default 5, quick 2)")
    e2e.add_argument("--duration", type=float, help="measured seconds per run (default 5, quick 2)")
    e2e.add_argument("--warmup", type=float, help="unmeasured seconds before each run (default 1, quick 0.5)")
    e2e.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections (default 16)")
    e2e.add_argument(
        "--gc-freeze",
        action="store_true",
        help="servers call gc.freeze() once the app is built (as production servers may), for less noise",
    )
    e2e.add_argument("--pin", action="store_true", help="pin the servers to CPU 1 and the load generator to CPU 0")
    e2e.add_argument(
        "--mode",
        choices=("same-cpu", "shared", "paired", "sequential"),
        default="same-cpu",
        help="same-cpu: each round a fresh process per app, all pinned to one CPU and loaded at once (default);"
        " shared: one server process hosts every app, loaded in turn; paired: a process per app,"
        " side by side in the same window; sequential: a process per app, one after another",
    )
    e2e.add_argument(
        "--apps",
        default="bare,core",
        help="comma-separated apps of tests/benchmarks/apps.py, the baseline first (default bare,core)",
    )
    parser.add_argument(
        "--wire",
        action="store_true",
        help="instructions: count a uvicorn server loaded on loopback instead of in-process calls",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = (
        {"samples": 40, "sample_ms": 2.0, "in_situ": 300, "repeats": 2, "duration": 2.0, "warmup": 0.5}
        if args.quick
        else {"samples": 200, "sample_ms": 4.0, "in_situ": 2000, "repeats": 5, "duration": 5.0, "warmup": 1.0}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeats < 1 or args.samples < 1 or args.duration <= 0 or args.connections < 1:
        parser.error("repeats, samples, duration and connections must be positive")
    args.apps = tuple(name.strip() for name in args.apps.split(",") if name.strip())
    if len(args.apps) < 2 or any(name not in APPS for name in args.apps):
        parser.error(f"--apps needs at least two of {', '.join(APPS)}, the baseline first")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind, so that every server subprocess is stopped by its handle


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # The SDK's MCPServer sets up INFO logging on the root logger; its lifespan messages would clutter the report.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    started = time.perf_counter()
    info = machine()
    print(
        "mcp_middleware benchmarks"
        f"{' (quick: a smoke run, not for quoting)' if args.quick else ''}\n"
        f"  {info['implementation']} {info['python']} on {info['platform']}\n"
        f"  {info['cpus']} CPUs ({info['cpu']}), load average {' '.join(map(str, info['loadavg']))}\n"
        f"  {', '.join(f'{k} {v}' for k, v in info['versions'].items())}"
    )
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    micro = e2e = instructions = None
    if args.only in (None, "micro"):
        micro = bench_core.main(samples=args.samples, sample_ms=args.sample_ms, in_situ_requests=args.in_situ)
        results["micro"] = micro.as_dict()
    if args.only in (None, "e2e"):
        if args.gc_freeze:
            os.environ["BENCH_GC_FREEZE"] = "1"  # inherited by every server subprocess
        e2e = bench_e2e.main(
            repeats=args.repeats,
            warmup=args.warmup,
            duration=args.duration,
            connections=args.connections,
            pin=args.pin,
            mode=args.mode,
            apps=args.apps,
        )
        results["e2e"] = e2e.as_dict()
    if args.only in (None, "instructions"):
        low, high = (20, 70) if args.quick else ((40, 200) if args.wire else (50, 250))
        instructions = bench_instructions.main(apps=args.apps, low=low, high=high, wire=args.wire)
        results["instructions"] = instructions
    extra: dict[str, dict[str, Any]] = {}
    for name, module in components().items():
        if args.only in (None, name):
            extra[name] = results[name] = module.main(quick=args.quick)
    total = time.perf_counter() - started
    results["seconds"] = total

    print(section("targets (issue: measured, not assumed)"))
    if micro is not None:
        cost = micro.core_cost_us(0)
        print(
            f"  in-process core cost, modern 1 KB tools/call: {cost:.2f} µs median"
            f"  (≤ {bench_core.TARGET_US:g} µs: {verdict(cost <= bench_core.TARGET_US)})"
        )
    if e2e is not None and "core" in e2e.apps[1:]:
        ratio, cpu_ratio = e2e.ratio("core"), e2e.cpu_ratio("core")
        print(
            f"  e2e throughput core/{e2e.base}: {ratio:.3f}"
            f" ({e2e.median_rps('core'):,.0f} / {e2e.median_rps(e2e.base):,.0f} req/s, medians of {args.repeats} runs;"
            f" {e2e.mode}, 95 % interval {'{:.3f}..{:.3f}'.format(*e2e.ratio_interval('core'))})"
            f"  (≥ {bench_e2e.TARGET_RATIO:g}: {verdict(ratio >= bench_e2e.TARGET_RATIO)})"
        )
        print(
            f"  e2e requests per server CPU-second core/{e2e.base}: {cpu_ratio:.3f}"
            f"  (≥ {bench_e2e.TARGET_RATIO:g}: {verdict(cpu_ratio >= bench_e2e.TARGET_RATIO)})"
        )
    if instructions is not None and "core" in instructions["ratio"]:
        ratio = instructions["ratio"]["core"]
        print(
            f"  instructions per request {args.apps[0]}/core: {ratio:.4f}"
            f"  (≥ {bench_e2e.TARGET_RATIO:g}: {verdict(ratio >= bench_e2e.TARGET_RATIO)})"
        )
    if e2e is not None:
        for app, target in bench_bytecodes.TARGETS.items():  # issue 17's two, when the run loaded them
            if app in e2e.apps[1:]:
                ratio, (low, high), cpu = e2e.ratio(app), e2e.ratio_interval(app), e2e.cpu_ratio(app)
                print(
                    f"  e2e throughput {app}/{e2e.base}: {ratio:.3f} (95 % interval {low:.3f}..{high:.3f};"
                    f" requests per server CPU-second {cpu:.3f})  (≥ {target:g}: {verdict(ratio >= target)})"
                )
                if "bare_token" in e2e.apps and app != "bare_token":  # like for like: the same load, a credential
                    like = e2e.median_rps(app) / e2e.median_rps("bare_token")
                    print(f"  e2e throughput {app}/bare_token (like for like, not the target's ruler): {like:.3f}")
    for figures in extra.values():
        for label, value, unit, target, met in figures.get("targets", []):
            print(f"  {label}: {value:.3f} {unit}  ({target}: {verdict(met)})")
    print("  one run on a noisy machine is one sample: repeat, and quote medians and ratios")
    print(f"\n  total {total:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"  figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
