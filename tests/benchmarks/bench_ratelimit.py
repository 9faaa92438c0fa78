"""Cost of a rate-limit decision: in process on the memory store, and over loopback to Redis.

    python -m tests.benchmarks --only ratelimit [--quick]

In-process figures use the core benchmark's method (bench_core): each case runs `n` times in a
plain loop inside one task (the memory store never suspends), cases interleave sample by sample,
and the figure is the median per decision. The buckets never run dry (the limiter is on but
never trips), which is the cost every admitted request pays.

The Redis figure is the latency of one decision (one EVALSHA round trip) against a real
`redis-server` on 127.0.0.1, started here on a free port when the binary exists (skipped otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from mcp_middleware.core import McpCoreMiddleware
from mcp_middleware.core.headers import RequestHeaders
from mcp_middleware.core.parsing import parse_post
from mcp_middleware.ratelimit import (
    BucketPolicy,
    BucketTake,
    MemoryBucketStore,
    QuotaPolicy,
    RateLimiter,
    RateLimitMiddleware,
    RedisBucketStore,
    TokenBucket,
)

from ._common import median, modern_headers, percentile, section, table, tools_call_body, verdict
from .bench_core import Case, asgi_case, async_case, calibrate, http_scope, json_app, measure, raw_headers, sync_case

TARGET_US = 5.0
"""The issue's target: a memory-bucket decision costs at most 5 µs in process."""

NEVER = 1e9
"""Rate and capacity of a bucket that never runs dry."""


def _request_fixture() -> tuple[dict[str, Any], Any]:
    body = tools_call_body(1)
    headers = raw_headers(modern_headers(), body)
    request = parse_post(body, RequestHeaders(headers))
    assert not isinstance(request, Exception)
    return http_scope(headers), request


def in_process_cases() -> tuple[list[Case], list[tuple[str, Case, Case]]]:
    scope, request = _request_fixture()
    store = MemoryBucketStore()
    take = [BucketTake("caller", TokenBucket(capacity=1e9, rate=1e9))]
    one = RateLimiter([BucketPolicy("per-caller", rate=NEVER, capacity=NEVER)])
    layered = RateLimiter(
        [
            BucketPolicy("per-caller", rate=NEVER, capacity=NEVER),
            BucketPolicy("echo", selector="tools/call:echo", per_target=True, rate=NEVER, capacity=NEVER),
            BucketPolicy(
                "search", selector="tools/call:search_*", rate=NEVER, capacity=NEVER
            ),  # does not match: costs a selector test
        ]
    )
    quota = RateLimiter(
        [BucketPolicy("per-caller", rate=NEVER, capacity=NEVER), QuotaPolicy("daily", limit="1000000000/day")]
    )
    lone_quota = RateLimiter([QuotaPolicy("daily", limit="1000000000/day")])
    callers = [{**scope, "client": (f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 4000)} for n in range(10_000)]
    rotation = iter(range(1 << 62))

    async def many_callers() -> object:
        return await one.check(callers[next(rotation) % 10_000], request)

    cases = [
        sync_case("store.decide: 1 bucket (memory)", lambda: store.decide(take)),
        async_case("limiter.check: 1 bucket policy", lambda: one.check(scope, request)),
        async_case("limiter.check: 1 bucket policy, 10 000 callers", many_callers),
        async_case("limiter.check: 3 bucket policies (2 match)", lambda: layered.check(scope, request)),
        async_case("limiter.check: bucket + limits quota (memory)", lambda: quota.check(scope, request)),
        async_case("limiter.check: limits quota alone (memory)", lambda: lone_quota.check(scope, request)),
    ]
    body = tools_call_body(1)
    headers = raw_headers(modern_headers(), body)
    pairs = [
        (
            "middleware over the core, 1 KB tools/call",
            asgi_case("core", McpCoreMiddleware(json_app), headers, body),
            asgi_case(
                "core + ratelimit",
                RateLimitMiddleware(json_app, policies=[BucketPolicy("p", rate=NEVER, capacity=NEVER)]),
                headers,
                body,
            ),
        )
    ]
    return cases, pairs


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


async def redis_latency(url: str, decisions: int) -> dict[str, float]:
    store = RedisBucketStore.from_url(url)
    scope, request = _request_fixture()
    limiter = RateLimiter([BucketPolicy("per-caller", rate=NEVER, capacity=NEVER)], store=store)
    take = [BucketTake("caller", TokenBucket(capacity=1e9, rate=1e9))]
    try:
        for _ in range(200):  # connect, load the script
            await store.take(take)
        store_ns, check_ns = [], []
        for _ in range(decisions):
            started = time.perf_counter_ns()
            await store.take(take)
            store_ns.append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            await limiter.check(scope, request)
            check_ns.append(time.perf_counter_ns() - started)
    finally:
        await store.aclose()
    return {
        "store_median_us": median(store_ns) / 1000,
        "store_p90_us": percentile(store_ns, 90) / 1000,
        "store_p99_us": percentile(store_ns, 99) / 1000,
        "check_median_us": median(check_ns) / 1000,
        "check_p90_us": percentile(check_ns, 90) / 1000,
        "check_p99_us": percentile(check_ns, 99) / 1000,
    }


async def run(quick: bool) -> dict[str, Any]:
    cases, pairs = in_process_cases()
    flat = cases + [c for _, core, limited in pairs for c in (core, limited)]
    await calibrate(flat, (2.0 if quick else 4.0) * 1e6)
    await measure(flat, 40 if quick else 200)
    result: dict[str, Any] = {
        "cases": {c.name: {"median_us": c.median_us, "p90_us": c.p90_us, "min_us": c.min_us, "n": c.n} for c in cases},
        "middleware_cost_us": {label: lim.median_us - core.median_us for label, core, lim in pairs},
    }
    with redis_server() as url:
        result["redis"] = await redis_latency(url, 500 if quick else 3000) if url else None
    print(section("ratelimit: decision cost"))
    print(table(["case", "median µs", "p90 µs", "min µs"], [[c.name, c.median_us, c.p90_us, c.min_us] for c in cases]))
    for label, core, limited in pairs:
        print(
            f"\n  {label}: core {core.median_us:.2f} µs, core + ratelimit {limited.median_us:.2f} µs"
            f" -> the limiter adds {limited.median_us - core.median_us:.2f} µs"
        )
    redis = result["redis"]
    if redis is None:
        print("\n  Redis: redis-server not installed, figure skipped")
    else:
        print("\n  Redis on loopback, one decision (one EVALSHA):")
        print(
            table(
                ["path", "median µs", "p90 µs", "p99 µs"],
                [
                    ["store.take", redis["store_median_us"], redis["store_p90_us"], redis["store_p99_us"]],
                    ["limiter.check", redis["check_median_us"], redis["check_p90_us"], redis["check_p99_us"]],
                ],
            )
        )
    decision = cases[1].median_us
    targets: list[list[Any]] = [
        [
            "memory-bucket decision (limiter.check, 1 policy)",
            decision,
            "µs",
            f"≤ {TARGET_US:g} µs",
            decision <= TARGET_US,
        ]
    ]
    if redis is not None:
        targets.append(["Redis bucket decision on loopback (median)", redis["check_median_us"], "µs", "measured", True])
    result["targets"] = targets
    print(
        f"\n  memory-bucket decision: {decision:.2f} µs median (≤ {TARGET_US:g} µs: {verdict(decision <= TARGET_US)})"
    )
    return result


def main(quick: bool) -> dict[str, Any]:
    return asyncio.run(run(quick))
