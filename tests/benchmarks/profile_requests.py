"""Where an app's instructions go, and what a request leaves to the garbage collector (in process).

The instruction benchmark says how much a stack costs; this says where. It drives an app of
`tests.benchmarks.apps` as `bench_instructions.drive` does (a real ASGI call per request, the SDK
app, its session manager), warms it up, then for a few requests:

- `bytecodes`: counts the bytecodes each function executes on the event loop's thread
  (`sys.settrace` with opcode events), per function and per package, a request;
- `garbage`: counts the objects the cyclic collector frees a request (collections disabled while
  the requests run, then one `gc.collect()`), and the objects allocated a request that outlive it
  (`gc.get_objects()` before and after);
- `memory`: the bytes a request holds at its peak above what was alive before it (`tracemalloc`,
  the median over the requests): the working set a request adds, which instruction counts do not see;
- `cpu`: the process's CPU time a request (`time.process_time`), after `gc.freeze()`, each app in a
  subprocess of its own pinned to one CPU (`taskset`, when there is one), the apps in turn, `--rounds`
  times: the cost of a request without the wire, and without other servers sharing the CPU's caches.

    python -m tests.benchmarks.profile_requests bytecodes gateway --top 40
    python -m tests.benchmarks.profile_requests garbage bare,full_stack,gateway
    python -m tests.benchmarks.profile_requests memory bare,full_stack,gateway
    python -m tests.benchmarks.profile_requests cpu bare,full_stack,gateway --rounds 3

Compare two apps by running both: the difference is the second one's own share.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from .bench_instructions import Request, serve_requests

_ROOT = Path(__file__).resolve().parents[2]


def _where(frame: FrameType) -> str:
    code = frame.f_code
    name = code.co_filename
    for marker in ("site-packages/", f"{_ROOT}/", "lib/python3.11/"):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{code.co_firstlineno} {code.co_qualname}"


def _package(where: str) -> str:
    path = where.split(":", 1)[0]
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 1 else path


async def _bytecodes(one: Request, warm: int, measured: int) -> Counter[str]:
    for i in range(warm):
        await one(100_000 + i)
    counts: Counter[str] = Counter()

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            counts[_where(frame)] += 1
        return local

    def global_(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        return local

    sys.settrace(global_)
    try:
        for i in range(measured):
            await one(200_000 + i)
    finally:
        sys.settrace(None)
    return counts


def bytecodes(app_name: str, *, warm: int = 30, measured: int = 20, top: int = 40) -> Counter[str]:
    """Bytecodes a request by function (the `top` largest printed) and by package."""
    box: list[Counter[str]] = []

    async def body(one: Request) -> None:
        box.append(await _bytecodes(one, warm, measured))

    asyncio.run(serve_requests(app_name, body))
    counts = box[0]
    total = sum(counts.values())
    print(f"{app_name}: {total / measured:,.0f} bytecodes a request (event loop thread)")
    packages: Counter[str] = Counter()
    for where, n in counts.items():
        packages[_package(where)] += n
    for package, n in packages.most_common(25):
        print(f"  {n / measured:8,.0f}  {package}")
    print("  functions:")
    for where, n in counts.most_common(top):
        print(f"  {n / measured:8,.0f}  {where}")
    return counts


def garbage(app_name: str, *, warm: int = 50, measured: int = 200) -> tuple[float, float]:
    """(objects the cyclic collector frees, objects that outlive the requests) a request."""
    box: list[tuple[float, float]] = []

    async def body(one: Request) -> None:
        for i in range(warm):
            await one(100_000 + i)
        gc.collect()
        gc.disable()
        before = len(gc.get_objects())
        try:
            for i in range(measured):
                await one(200_000 + i)
            freed = gc.collect()
        finally:
            gc.enable()
        kept = len(gc.get_objects()) - before
        box.append((freed / measured, kept / measured))

    asyncio.run(serve_requests(app_name, body))
    return box[0]


def memory(app_name: str, *, warm: int = 50, measured: int = 200) -> tuple[float, float]:
    """(median peak bytes above the start of a request, median bytes still traced after it) a request."""
    box: list[tuple[float, float]] = []

    async def body(one: Request) -> None:
        for i in range(warm):
            await one(100_000 + i)
        peaks: list[int] = []
        kept: list[int] = []
        tracemalloc.start()
        try:
            for i in range(measured):
                before, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                await one(200_000 + i)
                after, peak = tracemalloc.get_traced_memory()
                peaks.append(peak - before)
                kept.append(after - before)
        finally:
            tracemalloc.stop()
        box.append((statistics.median(peaks), statistics.median(kept)))

    asyncio.run(serve_requests(app_name, body))
    return box[0]


def cpu_once(app_name: str, *, warm: int = 300, measured: int = 3000) -> float:
    """CPU µs a request of this process, after `warm` requests and `gc.freeze()` (see `cpu`)."""
    box: list[float] = []

    async def body(one: Request) -> None:
        for i in range(warm):
            await one(100_000 + i)
        gc.collect()
        gc.freeze()
        started = time.process_time()
        for i in range(measured):
            await one(200_000 + i)
        box.append((time.process_time() - started) / measured * 1e6)

    asyncio.run(serve_requests(app_name, body))
    return box[0]


def cpu(app_names: list[str], *, rounds: int, measured: int) -> dict[str, list[float]]:
    """CPU µs a request of each app, each run in a subprocess pinned to one CPU, the apps in turn, `rounds` times."""
    pin = ["taskset", "-c", str(max(os.sched_getaffinity(0)))] if shutil.which("taskset") else []
    found: dict[str, list[float]] = {name: [] for name in app_names}
    for _ in range(rounds):
        for name in app_names:
            command = [*pin, sys.executable, "-m", __spec__.name, "cpu-once", name, "--measured", str(measured)]
            done = subprocess.run(
                command,
                cwd=_ROOT,
                env={**os.environ, "PYTHONHASHSEED": "0"},
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
            found[name].append(float(done.stdout.split()[-1]))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.profile_requests")
    parser.add_argument("what", choices=("bytecodes", "garbage", "memory", "cpu", "cpu-once"))
    parser.add_argument("apps", help="comma-separated app names of tests.benchmarks.apps")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--measured", type=int)
    parser.add_argument("--rounds", type=int, default=3, help="cpu: runs of each app, in turn")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    if args.what == "cpu-once":  # one app in this process (what `cpu` runs in each subprocess)
        print(f"{cpu_once(args.apps, measured=args.measured or 3000):.2f}")
        return
    if args.what == "cpu":
        names = args.apps.split(",")
        found = cpu(names, rounds=args.rounds, measured=args.measured or 3000)
        base = statistics.median(found[names[0]])
        for name in names:
            runs = found[name]
            middle = statistics.median(runs)
            spread = " ".join(f"{run:.1f}" for run in runs)
            print(f"{name}: {middle:.1f} µs CPU a request (runs {spread}), {names[0]}/{name} {base / middle:.3f}")
        return
    for app_name in args.apps.split(","):
        if args.what == "bytecodes":
            bytecodes(app_name, top=args.top, measured=args.measured or 20)
        elif args.what == "memory":
            peak, left = memory(app_name, measured=args.measured or 200)
            print(f"{app_name}: {peak:,.0f} bytes at a request's peak above its start, {left:+,.0f} left after it")
        else:
            freed, kept = garbage(app_name, measured=args.measured or 200)
            print(f"{app_name}: {freed:,.1f} objects freed by the collector a request, {kept:+,.2f} kept")


if __name__ == "__main__":
    main()
