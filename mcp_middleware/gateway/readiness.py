"""The gateway's readiness checks: backends, breakers and stores, as `/readyz` reports them.

Each check answers whether the gateway should receive traffic, not whether everything is
perfect: a backend that served once and died, or one open breaker, leaves it ready while others
serve; but a backend that is not `optional` and has not started yet (its command exits at once,
its URL refuses connections or, over https, the gateway's TLS: `tls: …`) keeps it not ready
(503): a pod whose config names a backend that never comes up stays out of rotation, and the
rollout stops there. A store that fails open (rate limits admit, the cache misses) leaves it serving every request,
so its outage is `degraded` (200, named in the detail), never a reason to take every pod out
of rotation. A rate-limit store that fails closed refuses requests: then the gateway is not
ready (503).
"""

from __future__ import annotations

from functools import partial
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2

from mcp_middleware.cache import CacheStore
from mcp_middleware.ratelimit import BucketStore
from mcp_middleware.router import Backend, HttpBackend, McpRouter, PoolBackend
from mcp_middleware.router.proxy import StreamingProxy
from mcp_middleware.router.tls import tls_refusal

from .assembly import Assembly
from .operations import DEGRADED, ReadinessCheck

__all__ = ["readiness_checks", "shown_url", "tls_refused"]

_PATIENCE = 1.5
"""Seconds a probe of one backend may take (a readiness probe must answer quickly)."""


def shown_url(url: str) -> str:
    """`url` without its user and password, for logs and `/readyz` (a Redis URL may carry a password)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def readiness_checks(router: McpRouter, assembly: Assembly) -> dict[str, ReadinessCheck]:
    """The checks `/readyz` runs for this gateway."""
    checks: dict[str, ReadinessCheck] = {
        "backends": partial(_backends, router, assembly, set()),
        "breakers": partial(_breakers, assembly),
        "stores": partial(_stores, assembly),
    }
    if any(isinstance(mount.backend, PoolBackend) for mount in router.mounts.values()):
        checks["pools"] = partial(_pools, router, assembly)
    return checks


async def _pools(router: McpRouter, assembly: Assembly) -> tuple[bool | Literal["degraded"], str]:
    """Each replica pool: all replicas up (ready), some ejected (degraded: it still serves), none (not ready,
    unless the server is `optional`). The detail names every ejected replica and why. The pools and the
    optional servers are the running ones (a reload changes them)."""
    pools = {name: mount.backend for name, mount in router.mounts.items() if isinstance(mount.backend, PoolBackend)}
    optional = {server.name for server in assembly.config.servers if server.optional}
    details: list[str] = []
    failed = degraded = False
    for name, pool in sorted(pools.items()):
        state = pool.state()
        total = len(state.replicas)
        details.append(f"{name}: {state.up}/{total} replicas up")
        for replica in state.replicas:
            if replica.state != "up":
                details.append(f"{name} replica {replica.label} ({replica.target}) ejected: {replica.last_error}")
        if state.up == 0 and name not in optional:
            failed = True
        elif state.up < total:
            degraded = True
    return (False if failed else DEGRADED if degraded else True), "; ".join(details)


async def _breakers(assembly: Assembly) -> tuple[bool, str]:
    open_ = []
    for name, registry in assembly.breakers:
        for snapshot in registry.snapshot().values():
            if snapshot.state.value != "closed":
                open_.append(f"{name}: {snapshot.state.value}")
    total = len(assembly.breakers)
    # One open breaker is a backend's trouble, not the gateway's: ready while any mount can serve.
    ok = total == 0 or len({entry.split(":")[0] for entry in open_}) < total
    return ok, "; ".join(open_) or "all closed"


async def _stores(assembly: Assembly) -> tuple[bool | Literal["degraded"], str]:
    config = assembly.config
    fail_open = config.ratelimit.failure == "open"
    found: list[tuple[str, str, BucketStore | CacheStore, bool]] = []  # (role, url, store, serves while down)
    if assembly.bucket_store is not None:
        found.append(("ratelimit", config.ratelimit.store, assembly.bucket_store, fail_open))
    if assembly.cache_store is not None:
        found.append(("cache", config.cache.store, assembly.cache_store, True))  # a cache outage is a miss
    details: list[str] = []
    failed = degraded = False
    for role, url, store, serves in found:
        if url.startswith("memory://"):
            continue  # in this process: nothing to reach
        try:
            await store.check()
            details.append(f"{role} {shown_url(url)}: ok")
        except Exception as raised:
            exc = raised.__cause__ or raised  # the store's own error names the cause (ConnectionError, …)
            if serves:
                degraded = True
                consequence = "requests admitted (fail-open)" if role == "ratelimit" else "lookups miss"
            else:
                failed = True
                consequence = "requests refused (fail-closed)"
            details.append(f"{role} {shown_url(url)}: down ({type(exc).__name__}), {consequence}")
    state: bool | Literal["degraded"] = False if failed else DEGRADED if degraded else True
    return state, "; ".join(details) or "memory"


async def _backends(router: McpRouter, assembly: Assembly, started: set[str]) -> tuple[bool, str]:
    """Every required backend must have started once; after that, ready while any backend can serve.

    `started` remembers (across calls) the backends seen up: a remote that accepts a connection,
    a stdio command whose session opened; in-process apps start with the gateway. The servers are
    the running ones (a reload changes them: `assembly.config` is the config in force).
    """
    optional = {server.name for server in assembly.config.servers if server.optional}
    started.intersection_update(router.mounts)  # a server removed and added again must start again
    found: dict[str, str | None] = {}
    async with anyio.create_task_group() as group:
        for name, mount in router.mounts.items():
            group.start_soon(_probe, router, name, mount.backend, found)
    problems = [f"{name}: {reason}" for name, reason in found.items() if reason is not None]
    started.update(name for name, reason in found.items() if reason is None)
    waiting = sorted(name for name in router.mounts if name not in started and name not in optional)
    states = router.aggregate.backend_states() if router.aggregate_path is not None else {}
    failing = sorted(name for name, (state, _) in states.items() if state == "failing" and name not in found)
    problems += [f"{name}: failing ({states[name][1]})" for name in failing]
    serving = len(router.mounts) > 0 and len(problems) < len(router.mounts)
    detail = "; ".join(sorted(problems)) or f"{len(router.mounts)} backends ok"
    if waiting:
        detail = f"not started: {', '.join(waiting)}; {detail}"
    return serving and not waiting, detail


async def _probe(router: McpRouter, name: str, backend: Backend, found: dict[str, str | None]) -> None:
    """`found[name]`: None when `backend` is up, else why not."""
    if isinstance(backend, HttpBackend):
        found[name] = await _reachable(backend)
    elif backend.supervised:
        reason = await router.session_failure(name, _PATIENCE)
        found[name] = None if reason is None else f"unavailable ({reason})"
    else:
        found[name] = None  # in process: it started with the gateway


async def _reachable(backend: HttpBackend) -> str | None:
    """None when `backend` accepts a TCP connection within its connect timeout (≤ 1.5 s), else why not.

    An `https` backend must also accept the gateway's TLS (its CA, its client certificate): a TCP connect
    would call ready a backend that refuses every request, so the handshake is made as requests make it
    and one request is sent (a refused client certificate shows only at the first read)."""
    url = httpx2.URL(backend.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with anyio.fail_after(min(backend.connect_timeout, _PATIENCE)):
            if url.scheme == "https":
                await _tls_accepted(backend)
            else:
                stream = await anyio.connect_tcp(url.host, port)
                await stream.aclose()
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        return tls_refusal(exc) or f"unreachable ({type(exc).__name__})"
    return None


async def tls_refused(backend: HttpBackend, patience: float = _PATIENCE) -> str | None:
    """`tls: …` when the `https` backend refuses the gateway's TLS (its certificate, our CA), else None: what
    a failed request cannot tell (an HTTP client reports "disconnected" and loses the TLS error)."""
    try:
        with anyio.fail_after(min(backend.connect_timeout, patience)):
            await _tls_accepted(backend)
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        return tls_refusal(exc)
    return None


async def _tls_accepted(backend: HttpBackend) -> None:
    """A TLS connection with the data path's own context, and an answer to `OPTIONS` (any status will do)."""
    proxy = backend.path_app()
    assert isinstance(proxy, StreamingProxy)
    pool = proxy.pool
    stream = await anyio.connect_tcp(
        pool.host, pool.port, tls=True, ssl_context=pool.ssl_context, tls_standard_compatible=False
    )
    try:
        await stream.send(
            b"OPTIONS " + proxy.path + b" HTTP/1.1\r\nhost: " + pool.host_header + b"\r\n"
            b"connection: close\r\ncontent-length: 0\r\n\r\n"
        )
        await stream.receive()  # the first bytes of an answer: the certificate was accepted
    finally:
        await stream.aclose()
