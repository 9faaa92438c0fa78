"""`mcp-gateway health-check`: every configured server probed over MCP, concurrently, without serving.

The backends are built as `serve` builds them (`build_gateway`); each one is then probed on its
own, all at once, each bounded by its timeout: an in-process app's lifespan is run, a stdio
command started, a URL connected to, and two MCP requests are made: the handshake (`server/discover`
for a 2026-07-28 server, `initialize` for an older one: the SDK `Client` picks) and `tools/list`.
A TCP connect proves nothing an MCP client needs, so none is made on its own.

A server is **healthy** when both requests were answered; **unreachable** when nothing answered the
handshake (connection refused, the command exited, no answer in time); **unhealthy** when something
answered but not as a working MCP server (an HTML page, an error to the handshake or to `tools/list`,
a `tools/list` that never ends, an app whose startup failed, a TLS handshake refused: `tls: …`).
`check-config --probe` uses the same probe (:func:`probe_gateway`).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import anyio
import httpx2
import orjson
from mcp import Client, MCPError

from mcp_middleware.router import Backend, HttpBackend
from mcp_middleware.router.tls import tls_refusal

from .app import Gateway, build_gateway
from .config import ConfigError, GatewayConfig
from .readiness import tls_refused

__all__ = ["ServerHealth", "health_check", "probe_gateway"]

State = Literal["healthy", "unhealthy", "unreachable"]

_MAX_PAGES = 100
_AT_ONCE = 32
"""Probes run at once: a config of 200 stdio servers does not start 200 processes together."""
_CONNECTION_CLOSED = -32000
"""The SDK's code for a request whose connection went away (a stdio command that exited)."""
_MAX_REASON = 200
_CONTROL = re.compile(r"(?:\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x1f\x7f-\x9f])+")
"""Terminal escapes and control characters in a backend's own words (its error messages) never reach the
operator's terminal: each run of them becomes one space."""


@dataclass(frozen=True)
class ServerHealth:
    """What the probe of one server found. `latency_ms`: from the first MCP request to the last answer
    (or to the failure); a stdio command's start is included, an app's startup is not."""

    name: str
    kind: str
    state: State
    reason: str = ""
    latency_ms: float = 0.0
    tools: tuple[str, ...] = ()
    protocol: str | None = None
    """The protocol version the handshake agreed on."""
    optional: bool = False


async def probe_gateway(gateway: Gateway, *, patience: float | None = None) -> list[ServerHealth]:
    """Probe every backend of the built gateway at once (up to 32 together), each within `patience` s
    (default: its server's own `timeout`). In config order; servers `build_gateway` skipped are not included."""
    config = gateway.config
    found: dict[str, ServerHealth] = {}
    by_name = {server.name: server for server in config.servers}
    limiter = anyio.CapacityLimiter(_AT_ONCE)

    async def probe(name: str, backend: Backend) -> None:
        server = by_name[name]
        async with limiter:  # a server's time starts when its probe does
            found[name] = await _probe(
                ServerHealth(name=name, kind=server.kind, state="unreachable", optional=server.optional),
                backend,
                server.timeout if patience is None else patience,
            )

    async with anyio.create_task_group() as group:
        for name, mount in gateway.router.mounts.items():
            group.start_soon(probe, name, mount.backend)
    return [found[server.name] for server in config.servers if server.name in found]


async def _probe(blank: ServerHealth, backend: Backend, patience: float) -> ServerHealth:
    """`blank` filled in with what probing `backend` found (never raises but for cancellation)."""
    phase = "startup"
    started = time.perf_counter()
    listed: ServerHealth | None = None
    try:
        with anyio.fail_after(patience):
            async with backend.lifespan():  # an in-process app's (its session manager); a URL's pool
                phase, started = "handshake", time.perf_counter()
                async with backend.open_client() as client:
                    phase = "tools/list"
                    tools = await _tool_names(client)
                    listed = replace(
                        blank,
                        state="healthy",
                        latency_ms=_ms(started),
                        tools=tuple(tools),
                        protocol=client.protocol_version,
                    )
    except Exception as exc:
        if listed is not None:  # answered both; only closing it failed or overran (a slow stdio exit)
            return listed
        refused = await _refused_tls(backend, exc) if phase == "handshake" else None
        if refused is not None:  # a TLS server that will not talk to this gateway: it answered, not as MCP
            return replace(blank, state="unhealthy", reason=refused[:_MAX_REASON], latency_ms=_ms(started))
        reason = _reason(phase, exc, patience) + _tls_hint(backend, phase, exc)
        return replace(blank, state=_state(phase, exc), reason=reason[:_MAX_REASON], latency_ms=_ms(started))
    assert listed is not None
    return listed


async def _refused_tls(backend: Backend, exc: BaseException) -> str | None:
    """`tls: …` when the handshake failed on TLS: seen in the error, or (the SDK's HTTP client reports only
    "disconnected") by one TLS connection of the gateway's own, made as requests make it."""
    refused = tls_refusal(exc)
    if refused is not None or not isinstance(backend, HttpBackend) or not backend.url.startswith("https://"):
        return refused
    if not isinstance(_leaf(exc), httpx2.ReadError | httpx2.RemoteProtocolError):  # hung up after connecting
        return None
    return await tls_refused(backend)


def _tls_hint(backend: Backend, phase: str, exc: BaseException) -> str:
    """An https backend that wants a client certificate may just close the connection after the TLS
    handshake (TLS 1.3 checks it late; some servers send no alert): say what to look at."""
    if phase != "handshake" or not isinstance(backend, HttpBackend) or not backend.url.startswith("https://"):
        return ""
    if not isinstance(_leaf(exc), httpx2.ReadError | httpx2.RemoteProtocolError):  # hung up after connecting
        return ""
    return " (if it requires a client certificate: set tls.client_cert and tls.client_key)"


async def _tool_names(client: Client) -> list[str]:
    names: list[str] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        names += [tool.name for tool in page.tools]
        cursor = page.next_cursor
        if not cursor:
            break
    return names


def _state(phase: str, exc: BaseException) -> State:
    """Nothing answered the handshake: unreachable. Anything else that failed: unhealthy."""
    if phase != "handshake":
        return "unhealthy"
    leaf = _leaf(exc)
    gone = isinstance(leaf, MCPError) and leaf.code == _CONNECTION_CLOSED
    silent = isinstance(leaf, TimeoutError | OSError | httpx2.ConnectError | httpx2.ConnectTimeout)
    return "unreachable" if gone or silent else "unhealthy"


def _reason(phase: str, exc: BaseException, timeout: float) -> str:
    leaf = _leaf(exc)
    if isinstance(leaf, TimeoutError):
        why = f"no answer within {timeout:g} s"
    elif isinstance(leaf, httpx2.ConnectError | httpx2.ConnectTimeout):
        why = f"cannot connect: {leaf}"
    elif isinstance(leaf, MCPError) and leaf.code == _CONNECTION_CLOSED and phase == "handshake":
        why = "connection closed before the handshake (a command that exited?)"
    else:
        why = _CONTROL.sub(" ", _last_words(str(leaf))).strip() or type(leaf).__name__
    if (phase != "handshake" or _state(phase, exc) == "unhealthy") and not why.startswith(phase):
        why = f"{phase}: {why}"
    return why[:_MAX_REASON]


def _last_words(text: str) -> str:
    """A message that carries a whole traceback (Starlette's failed startup does) says what failed last."""
    if "Traceback (most recent call last)" not in text:
        return text
    *_, last = [line for line in text.splitlines() if line.strip()] or [""]
    return last


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside the task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


# --- the command ----------------------------------------------------------------------------------


def health_check(config: GatewayConfig, source: Path, *, timeout: float | None = None, as_json: bool = False) -> int:
    """Run `mcp-gateway health-check`: 0 when every required server is healthy, 1 when one is not,
    2 when the config cannot be built (its problems printed with key and line)."""
    for warning in config.warnings:
        print(f"{source}: warning: {warning}", file=sys.stderr)
    try:
        gateway = build_gateway(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        found = anyio.run(lambda: probe_gateway(gateway, patience=timeout))
    finally:
        for close in gateway._closers:
            close()
    found += [_skipped(config, entry) for entry in gateway.skipped]
    order = {server.name: server.index for server in config.servers}
    found.sort(key=lambda health: order[health.name])
    ok = all(health.state == "healthy" for health in found if not health.optional)
    if as_json:
        document = {"ok": ok, "config": str(source), "servers": [asdict(health) for health in found]}
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_table(found))
        print(_summary(found, source))
    return 0 if ok else 1


def _skipped(config: GatewayConfig, entry: str) -> ServerHealth:
    """An optional server `build_gateway` left out (`"name: why"`): unreachable, and why."""
    name, _, why = entry.partition(": ")
    server = next(server for server in config.servers if server.name == name)
    return ServerHealth(name=name, kind=server.kind, state="unreachable", reason=f"skipped: {why}", optional=True)


def _table(found: list[ServerHealth]) -> str:
    width = max([4, *(len(health.name) for health in found)])
    lines = [f"{'name':<{width}}  {'kind':<7}  {'state':<11}  {'latency':>9}  {'tools':>5}  detail"]
    for health in found:
        latency = f"{health.latency_ms:.0f} ms" if health.latency_ms else "-"
        tools = str(len(health.tools)) if health.state == "healthy" else "-"
        detail = " ".join(filter(None, [health.reason, "(optional)" if health.optional else ""]))
        row = f"{health.name:<{width}}  {health.kind:<7}  {health.state:<11}  {latency:>9}  {tools:>5}  {detail}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def _summary(found: list[ServerHealth], source: Path) -> str:
    healthy = sum(health.state == "healthy" for health in found)
    failing = [health.name for health in found if health.state != "healthy" and not health.optional]
    verdict = f"required and not healthy: {', '.join(failing)}" if failing else "every required server is healthy"
    return f"{source}: {healthy} of {len(found)} servers healthy; {verdict}"
