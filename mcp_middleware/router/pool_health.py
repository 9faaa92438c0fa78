"""A pool's view of its replicas' health: passive (the breaker's verdicts on real traffic) and active
(an MCP request to each replica on an interval).

Each replica has its own :class:`~mcp_middleware.breaker.CircuitBreaker`: closed means in rotation.
Real traffic is classified by the breaker's own :class:`~mcp_middleware.breaker.FailureClassifier`
and trips it like any breaker; `probe_failures` failed probes in a row open it too. An open replica
is ejected; once its open time is up (half-open) only the pool's probe tests it, so no client
request is spent on a replica that may still be down: a probe that succeeds readmits it, one that
fails opens it again for longer (the breaker's backoff). Each ejection and readmission is one
WARNING naming the backend and the replica.

The probe is an MCP request, not a TCP connect: `server/discover` (2026-07-28), which a live MCP
server answers with a JSON-RPC result. It goes the way requests go (the same TLS context: a replica
that refuses the gateway's client certificate fails it as `tls: …`), as the gateway itself (with
token exchange, its client-credentials token). While no such token can be had (the identity provider
is down), the probe goes without one: a replica answering with its OAuth challenge (401,
`WWW-Authenticate: Bearer`) is alive and is readmitted, so callers are served as soon as tokens can be
had again; one that cannot be reached or answers 5xx is not; any other refusal says nothing.
The prober also reads the backend's `tools/list` (its tools' `readOnlyHint`/`idempotentHint`, which
decide whether a failed call may be sent to another replica).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import orjson

from mcp_middleware.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Classification, StateChange

from ._pool_credentials import ChallengedWithoutToken
from ._pool_forward import ReplicaTransport, transport_for
from ._pool_stdio import StdioReplica, stdio_transport
from .backends import HttpBackend, InProcessBackend
from .credentials import ExchangeError
from .tls import tls_refusal

__all__ = ["PROBE_HEADERS", "Prober", "Replica", "ToolHints", "shown"]

logger = logging.getLogger("mcp_middleware.router.pool")

_MODERN = b"2026-07-28"
_ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
PROBE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"accept", b"application/json, text/event-stream"),
    (b"mcp-protocol-version", _MODERN),
]
_MAX_PAGES = 20
"""`tools/list` pages the prober follows (a cursor that never ends stops here)."""


def shown(url: str) -> str:
    """`url` without user and password (for logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


class Replica:
    """One replica of a pool: its transport, breaker, requests in flight and probe record."""

    __slots__ = ("backend", "breaker", "in_flight", "index", "label", "last_error", "misses", "pool", "transport")

    def __init__(
        self,
        pool: str,
        index: int,
        backend: HttpBackend | InProcessBackend | StdioReplica,
        policy: BreakerPolicy,
        on_change: Callable[[Replica, StateChange], None],
    ) -> None:
        self.pool = pool
        self.index = index
        self.label = str(index)
        """The replica's metric label and log name: its place in the configured list (never client input)."""
        self.backend = backend
        self.transport: ReplicaTransport = (
            stdio_transport(backend) if isinstance(backend, StdioReplica) else transport_for(backend)
        )
        self.breaker = CircuitBreaker(f"{pool}#{index}", policy, listeners=[lambda change: on_change(self, change)])
        self.in_flight = 0
        self.misses = 0
        """Failed probes in a row while in rotation."""
        self.last_error = ""

    @property
    def up(self) -> bool:
        return self.breaker.state is BreakerState.CLOSED

    def describe(self) -> str:
        return shown(self.backend.describe())

    def eject(self, reason: str) -> None:
        """Take it out of rotation now (the breaker's open time, then probes)."""
        self.last_error = reason
        self.breaker.force_open()


class ToolHints:
    """The backend's tools that say they may be repeated (`readOnlyHint`/`idempotentHint` true), bounded."""

    def __init__(self, max_tools: int = 10_000) -> None:
        self.max_tools = max_tools
        self._tools: OrderedDict[str, Mapping[str, Any]] = OrderedDict()

    def learn(self, tools: object) -> int:
        """Remember each tool's annotations from a `tools/list` result's `tools`; how many were read."""
        if not isinstance(tools, list):
            return 0
        seen = 0
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                continue
            annotations = tool.get("annotations")
            name: str = tool["name"]
            self._tools[name] = annotations if isinstance(annotations, dict) else {}
            self._tools.move_to_end(name)
            seen += 1
        while len(self._tools) > self.max_tools:
            self._tools.popitem(last=False)
        return seen

    def annotations(self, tool: str | None) -> Mapping[str, Any] | None:
        return self._tools.get(tool) if tool is not None else None

    def __len__(self) -> int:
        return len(self._tools)


class Prober:
    """Probes every replica each `interval` seconds; readmits, ejects, and learns the tools' hints."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        hints: ToolHints,
        *,
        interval: float,
        timeout: float,
        failures: int,
        hints_every: float = 60.0,
    ) -> None:
        self.replicas = replicas
        self.hints = hints
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self.hints_every = hints_every
        self._hints_at = -hints_every

    async def run(self) -> None:
        while True:
            async with anyio.create_task_group() as group:
                for replica in self.replicas:
                    group.start_soon(self._check, replica)
            await anyio.sleep(self.interval)

    async def _check(self, replica: Replica) -> None:
        try:
            await self.check(replica)
        except Exception:  # a bug here must not stop the probing (nor the app whose lifespan runs it)
            logger.exception("pool %r: probing replica %s failed", replica.pool, replica.label)

    async def check(self, replica: Replica) -> None:
        """One probe of `replica`, and what it means for its place in rotation."""
        breaker = replica.breaker
        state = breaker.state
        if state is BreakerState.OPEN:
            return  # its open time is not up: it is probed once it is
        permit = breaker.acquire() if state is BreakerState.HALF_OPEN else None
        if state is BreakerState.HALF_OPEN and permit is None:
            return
        challenged = False
        try:
            error = await self.probe(replica)
        except ChallengedWithoutToken as exc:  # no token, and it asked for one: alive (and guarding itself)
            error, challenged = None, True
            logger.debug("pool %r replica %s alive, probed without a token (%s)", replica.pool, replica.label, exc)
        except ExchangeError as exc:  # no token, and no answer that says more: nothing learned of the replica
            if permit is not None:
                breaker.record(permit, Classification.NEUTRAL)
            logger.debug("pool %r replica %s not probed: no service token (%s)", replica.pool, replica.label, exc)
            return
        if permit is not None:  # half-open: this probe decides (the breaker logs, the pool's listener says why)
            replica.last_error = error or ""
            breaker.record(permit, _verdict(error))
            if error is None:
                replica.misses = 0
            return
        if error is None:
            replica.misses = 0
            if not challenged and anyio.current_time() - self._hints_at >= self.hints_every:
                self._hints_at = anyio.current_time()
                await self.learn_hints(replica)
            return
        replica.misses += 1
        logger.debug(
            "pool %r replica %s probe failed (%d in a row): %s", replica.pool, replica.label, replica.misses, error
        )
        if replica.misses >= self.failures and breaker.state is BreakerState.CLOSED:
            replica.eject(f"{replica.misses} probes failed, last: {error}")

    async def probe(self, replica: Replica) -> str | None:
        """None when the replica answers `server/discover` as a live MCP server, else why not."""
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": "mcp-pool-probe", "method": "server/discover", "params": {"_meta": _ENVELOPE}}
        )
        try:
            with anyio.fail_after(self.timeout):
                status, answer = await replica.transport.ask(
                    body, [*PROBE_HEADERS, (b"mcp-method", b"server/discover")]
                )
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except ExchangeError:
            raise
        except Exception as exc:  # unreachable, reset, a refused TLS handshake, garbage: not serving MCP
            return (tls_refusal(exc) or f"{type(exc).__name__}: {exc}")[:200]
        if status >= 500:
            return f"HTTP {status}"
        if answer is None:
            return f"HTTP {status} without a JSON-RPC answer"
        error = answer.get("error")
        if isinstance(error, dict) and error.get("code") == -32603:
            return "internal error"
        return None  # a result, or a refusal of a live server (a 2025-era server refusing this revision)

    async def learn_hints(self, replica: Replica) -> None:
        """Read the backend's `tools/list` (every page) from `replica` into the hints table."""
        cursor: str | None = None
        for page in range(_MAX_PAGES):
            params: dict[str, Any] = {"_meta": _ENVELOPE}
            if cursor is not None:
                params["cursor"] = cursor
            body = orjson.dumps(
                {"jsonrpc": "2.0", "id": f"mcp-pool-tools-{page}", "method": "tools/list", "params": params}
            )
            try:
                with anyio.fail_after(self.timeout):
                    _, answer = await replica.transport.ask(body, [*PROBE_HEADERS, (b"mcp-method", b"tools/list")])
            except Exception as exc:
                logger.debug("pool %r: tools/list from replica %s failed: %s", replica.pool, replica.label, exc)
                return
            result = answer.get("result") if answer is not None else None
            if not isinstance(result, dict):
                return
            self.hints.learn(result.get("tools"))
            following = result.get("nextCursor")
            if not isinstance(following, str) or following == cursor:
                return
            cursor = following


def _verdict(error: str | None) -> Classification:
    return Classification.SUCCESS if error is None else Classification.FAILURE
