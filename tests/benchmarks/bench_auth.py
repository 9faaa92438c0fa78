"""In-process cost of `AuthMiddleware` and of verifying a JWT.

Three figures, as the auth issue asks:

- **cached token**: the per-request cost of `AuthMiddleware` when the bearer token was
  verified before (the common case): `McpCoreMiddleware(AuthMiddleware(app))` minus
  `McpCoreMiddleware(app)` in the same run, so the core's one parse is not counted
  twice (auth reuses the view the core stored). Scope/receive/send are the same
  fake-but-valid ones `bench_core` uses; a 2026-07-28 `tools/call` of ~1 KB.
- **first verification**, RS256 (RSA-2048) and ES256 (P-256): `JwksTokenVerifier.check`
  of a token (header peek, key lookup, signature, claims), keys already fetched.
- **cache miss through the middleware** (RS256), for reference: the middleware with its
  cache cleared before every request.

Samples interleave the cases; figures are medians of per-operation time. Each sample is
timed on two clocks: wall time (`perf_counter`, what the targets are judged on, as in
`bench_core`) and the thread's CPU time (`thread_time`), which other processes on a
shared machine do not inflate (a quiet machine shows the two close together).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from mcp_middleware.auth import AuthMiddleware, JwksTokenVerifier
from mcp_middleware.core import McpCoreMiddleware

from ._common import median, modern_headers, percentile, section, table, tools_call_body
from .bench_core import body_receive, drop, http_scope, json_app, raw_headers

CACHED_TARGET_US = 10.0
VERIFY_TARGET_US = 100.0
RESOURCE = "http://127.0.0.1:8000/mcp"
ISSUER = "https://issuer.example"


def signed(key: RSAKey | ECKey, alg: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": RESOURCE,
        "sub": "alice",
        "client_id": "bench",
        "scope": "mcp:read mcp:write",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


Timed = Callable[[int], Awaitable[tuple[int, int]]]


def asgi_timer(
    app: Any, headers: list[tuple[bytes, bytes]], body: bytes, before: Callable[[], None] | None = None
) -> Timed:
    base = http_scope(headers)
    receive = body_receive(body)

    async def run(n: int) -> int:
        copy = base.copy
        started, cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(n):
            if before is not None:
                before()
            await app(copy(), receive, drop)
        return time.perf_counter_ns() - started, time.thread_time_ns() - cpu

    return run


def call_timer(fn: Callable[[], Awaitable[object]]) -> Timed:
    async def run(n: int) -> int:
        started, cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(n):
            await fn()
        return time.perf_counter_ns() - started, time.thread_time_ns() - cpu

    return run


async def measure(
    cases: dict[str, Timed], *, samples: int, sample_ms: float
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Calibrate `n` per case so a sample takes ~`sample_ms`, then take interleaved samples.

    Returns (wall, cpu): nanoseconds per operation, one value per sample.
    """
    sizes: dict[str, int] = {}
    for name, run in cases.items():
        await run(20)  # warm up
        n = 1
        while True:
            elapsed, _ = await run(n)
            if elapsed >= sample_ms * 1e6 or n >= 1 << 20:
                break
            n *= 2
        sizes[name] = n
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for sample in range(samples):
        order = names[sample % len(names) :] + names[: sample % len(names)]
        for name in order:
            elapsed, used = await cases[name](sizes[name])
            wall[name].append(elapsed / sizes[name])
            cpu[name].append(used / sizes[name])
    return wall, cpu


async def run_bench(samples: int, sample_ms: float) -> dict[str, Any]:
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa", "use": "sig"})
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec", "use": "sig"})
    jwks = {"keys": [rsa.as_dict(private=False), ec.as_dict(private=False)]}
    verifier = JwksTokenVerifier(jwks=jwks, issuer=ISSUER, audience=RESOURCE, algorithms=["RS256", "ES256"])
    rs_token, es_token = signed(rsa, "RS256"), signed(ec, "ES256")
    assert (await verifier.check(rs_token)).subject == (await verifier.check(es_token)).subject == "alice"

    body = tools_call_body(1)
    pairs = [*modern_headers(), ("authorization", f"Bearer {rs_token}")]
    headers = raw_headers(pairs, body)
    auth = AuthMiddleware(json_app, verifier=verifier, resource=RESOURCE, required_scopes=["mcp:read"])
    bare = McpCoreMiddleware(json_app)
    with_auth = McpCoreMiddleware(auth)

    cases: dict[str, Timed] = {
        "core": asgi_timer(bare, headers, body),
        "core + auth (cached token)": asgi_timer(with_auth, headers, body),
        "core + auth (cache miss, RS256)": asgi_timer(with_auth, headers, body, before=auth.cache.clear),
        "verify RS256 (JwksTokenVerifier.check)": call_timer(lambda: verifier.check(rs_token)),
        "verify ES256 (JwksTokenVerifier.check)": call_timer(lambda: verifier.check(es_token)),
    }
    gc.collect()
    raw, raw_cpu = await measure(cases, samples=samples, sample_ms=sample_ms)
    us = {name: median(values) / 1000 for name, values in raw.items()}
    p90 = {name: percentile(values, 90) / 1000 for name, values in raw.items()}
    cpu = {name: median(values) / 1000 for name, values in raw_cpu.items()}
    cached = us["core + auth (cached token)"] - us["core"]
    miss = us["core + auth (cache miss, RS256)"] - us["core"]
    rs, es = us["verify RS256 (JwksTokenVerifier.check)"], us["verify ES256 (JwksTokenVerifier.check)"]
    return {
        "cases": {name: {"median_us": us[name], "p90_us": p90[name], "cpu_median_us": cpu[name]} for name in cases},
        "cpu": {
            "cached_token_us": cpu["core + auth (cached token)"] - cpu["core"],
            "verify_rs256_us": cpu["verify RS256 (JwksTokenVerifier.check)"],
            "verify_es256_us": cpu["verify ES256 (JwksTokenVerifier.check)"],
        },
        "cached_token_us": cached,
        "cache_miss_rs256_us": miss,
        "verify_rs256_us": rs,
        "verify_es256_us": es,
        "targets": [
            [
                "auth per request, cached token",
                round(cached, 2),
                "µs",
                f"≤ {CACHED_TARGET_US:g}",
                cached <= CACHED_TARGET_US,
            ],
            ["first verification RS256", round(rs, 2), "µs", f"≤ {VERIFY_TARGET_US:g}", rs <= VERIFY_TARGET_US],
            ["first verification ES256", round(es, 2), "µs", f"≤ {VERIFY_TARGET_US:g}", es <= VERIFY_TARGET_US],
        ],
    }


def report(result: dict[str, Any]) -> str:
    lines = [section("auth: per-request cost and JWT verification (in process)")]
    rows = [[name, c["median_us"], c["p90_us"], c["cpu_median_us"]] for name, c in result["cases"].items()]
    lines.append(table(["case", "median µs", "p90 µs", "CPU median µs"], rows))
    lines.append("")
    lines.append(
        table(
            ["figure", "value", "unit", "target", "met"],
            [[*t[:4], "PASS" if t[4] else "MISS"] for t in result["targets"]],
        )
    )
    lines.append(f"  cache miss through the middleware (RS256), auth's share: {result['cache_miss_rs256_us']:.2f} µs")
    cpu = result["cpu"]
    lines.append(
        f"  on CPU time: cached token {cpu['cached_token_us']:.2f} µs, RS256 {cpu['verify_rs256_us']:.2f} µs,"
        f" ES256 {cpu['verify_es256_us']:.2f} µs"
    )
    return "\n".join(lines)


def main(quick: bool = False) -> dict[str, Any]:
    result = asyncio.run(run_bench(samples=40 if quick else 200, sample_ms=2.0 if quick else 4.0))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
