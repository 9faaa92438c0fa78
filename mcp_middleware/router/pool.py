"""`PoolBackend`: one backend served by several replicas, balanced, health-checked, failing over safely.

See docs/router.md, "Replica pools and failover". The pieces: the dispatcher
(:mod:`.pool_proxy`), the replicas' health (:mod:`.pool_health`), legacy sessions that stick to
their replica (:mod:`.pool_sessions`), and how a replica is reached (:mod:`._pool_forward`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import anyio
from mcp import Client
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from starlette.types import ASGIApp

from mcp_middleware.breaker import BreakerPolicy, BreakerState, Classification, StateChange
from mcp_middleware.core import Selector

from ._causes import causes
from ._links import BackendUnavailable
from ._pool_stdio import StdioReplica
from .backends import Backend, HttpBackend, InProcessBackend, StdioBackend
from .credentials import BackendCredentials, ExchangeError
from .pool_health import Prober, Replica
from .pool_proxy import PoolProxy

__all__ = ["POOL_HEALTH", "PoolBackend", "PoolState", "ReplicaState"]

logger = logging.getLogger("mcp_middleware.router.pool")

POOL_HEALTH = BreakerPolicy(
    consecutive_failures=3, failure_rate=0.5, minimum_calls=20, window=30.0, open_for=2.0, max_open_for=30.0
)
"""A replica's breaker: ejected after 3 failures in a row (or half failing), probed after 2 s, then 4, 8 … 30 s."""


class ReplicaState(NamedTuple):
    """One replica as `/readyz` and dashboards show it."""

    label: str
    target: str
    """Its URL (without credentials), or `in-process app at /mcp`."""
    state: str
    """`up`, or `ejected` (its breaker open or probing)."""
    in_flight: int
    last_error: str


class PoolState(NamedTuple):
    up: int
    replicas: tuple[ReplicaState, ...]


@dataclass(eq=False)
class PoolBackend(Backend):
    """Replicas of one MCP server behind one name: a path mount and the aggregate see one backend.

    Requests go to the replica with the fewest in flight (`balance="round_robin"`: in turn);
    a legacy session stays on the replica that created it. A replica is ejected when its breaker
    (`health`, the breaker's own policy and classification) trips on real traffic, or when
    `probe_failures` probes in a row fail (an MCP `server/discover` every `probe_interval` s,
    each within `probe_timeout` s); it is probed and readmitted when a probe succeeds. A request
    that fails before any byte reached the client goes to another replica when it was never
    sent or may run twice (reads, lists, tools the backend annotates `readOnlyHint`/`idempotentHint`,
    tools matching `retry_tools` selectors); otherwise the client is told whether it may have run.
    A legacy session whose replica is lost is answered 404 (`on_replica_loss="not_found"`: the
    client starts a new one) or re-created on another replica with the client's own `initialize`
    (`"reinitialize"`). Stdio replicas (`StdioBackend`) are each a supervised process (restarted
    when it dies, as any stdio backend) behind its own one-backend aggregate; the pool treats
    its process being down as a replica failure (see :mod:`._pool_stdio`).

    >>> pool = PoolBackend([HttpBackend("http://10.0.0.1:8000/mcp"), HttpBackend("http://10.0.0.2:8000/mcp")],
    ...                    retry_tools=["tools/call:search_*"])
    >>> # router.mount("search", pool)
    """

    replicas: Sequence[HttpBackend | InProcessBackend | StdioBackend]
    """The replicas: URLs, in-process apps, or stdio commands (each its own supervised process)."""
    balance: Literal["least_in_flight", "round_robin"] = "least_in_flight"
    health: BreakerPolicy = POOL_HEALTH
    probe_interval: float = 5.0
    probe_timeout: float = 2.0
    probe_failures: int = 2
    retry_tools: Sequence[str] = ()
    on_replica_loss: Literal["not_found", "reinitialize"] = "not_found"
    max_sessions: int = 100_000
    """Legacy sessions remembered (least recently used forgotten: that client starts a new one)."""
    max_tools: int = 10_000
    """Tools whose annotations are remembered."""
    timeout: float = 30.0
    mode: Literal["auto", "legacy"] = "auto"
    name: str | None = None
    """How logs, metrics and errors name it (the router sets the mount's name when left unset)."""
    credentials: BackendCredentials | None = field(default=None, repr=False)
    """RFC 8693 token exchange for the pool as one backend (one audience, one cache): each caller's requests
    carry the caller's exchanged token to whichever replica serves them; probes and the aggregate's sessions
    a client-credentials token. URL replicas only."""
    _proxy: PoolProxy | None = field(default=None, init=False, repr=False)
    _replicas: tuple[Replica, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        self.replicas = tuple(self.replicas)
        if not self.replicas:
            raise ValueError("a pool needs at least one replica")
        for replica in self.replicas:
            if not isinstance(replica, HttpBackend | InProcessBackend | StdioBackend):
                raise TypeError(
                    f"a pool's replicas are HttpBackend, InProcessBackend or StdioBackend, not {type(replica).__name__}"
                )
        if self.balance not in ("least_in_flight", "round_robin"):
            raise ValueError(f"balance must be 'least_in_flight' or 'round_robin', not {self.balance!r}")
        if self.on_replica_loss not in ("not_found", "reinitialize"):
            raise ValueError(f"on_replica_loss must be 'not_found' or 'reinitialize', not {self.on_replica_loss!r}")
        if self.probe_interval <= 0 or self.probe_timeout <= 0 or self.probe_failures < 1:
            raise ValueError("probe_interval and probe_timeout must be positive, probe_failures at least 1")
        for selector in self.retry_tools:
            Selector.parse(selector)  # a typo fails here, not silently at the first failover
        self._share_credentials()

    def _share_credentials(self) -> None:
        """One `BackendCredentials` for every replica (given to the pool, or the one all replicas carry)."""
        held = {id(r.credentials): r.credentials for r in self.replicas if isinstance(r, HttpBackend) and r.credentials}
        if self.credentials is None and held:
            if len(held) > 1 or not all(isinstance(r, HttpBackend) and r.credentials for r in self.replicas):
                raise ValueError("a pool's replicas share one BackendCredentials: give it to PoolBackend(credentials=)")
            self.credentials = next(iter(held.values()))
        if self.credentials is None:
            return
        for replica in self.replicas:
            if not isinstance(replica, HttpBackend):
                raise TypeError("token exchange (credentials) is for URL replicas: an app or a command has no HTTP")
            if replica.credentials is None:
                replica.credentials = self.credentials
            elif replica.credentials is not self.credentials:
                raise ValueError("a pool's replicas share the pool's BackendCredentials (one audience, one cache)")

    # --- what the router uses ------------------------------------------------------------------

    @property
    def proxy(self) -> PoolProxy:
        if self._proxy is None:
            name = self.name or "pool"
            for index, backend in enumerate(self.replicas):
                if isinstance(backend, HttpBackend) and backend.name is None:
                    backend.name = f"{name}#{index}"
            self._replicas = tuple(
                Replica(
                    name,
                    index,
                    StdioReplica(name, index, backend) if isinstance(backend, StdioBackend) else backend,
                    self.health,
                    self._changed,
                )
                for index, backend in enumerate(self.replicas)
            )
            self._proxy = PoolProxy(self, self._replicas)
        return self._proxy

    def path_app(self) -> ASGIApp:
        return self.proxy

    @contextlib.asynccontextmanager
    async def open_client(self, **options: Any) -> AsyncIterator[Client]:
        """The aggregate's session: to a replica in rotation, the next one if it cannot be opened (when the
        session breaks later, the aggregate opens a new one, on a replica then in rotation)."""
        proxy = self.proxy
        tried: list[Replica] = []
        failed: Exception | None = None
        while (replica := proxy.pick(tried)) is not None:
            tried.append(replica)
            permit = replica.breaker.acquire()
            stack = contextlib.AsyncExitStack()
            try:
                client = await stack.enter_async_context(replica.backend.open_client(**dict(options)))
            except Exception as exc:  # that replica cannot be reached: the next one
                if any(isinstance(cause, ExchangeError) for cause in causes(exc)):
                    replica.breaker.record(permit, Classification.NEUTRAL)  # no token for the gateway: not the
                    raise  # replica's fault, and every replica would say the same
                replica.last_error = f"{type(exc).__name__}: {exc}"[:200]
                replica.breaker.record(permit, Classification.FAILURE)
                failed = exc
                continue
            replica.breaker.record(permit, Classification.SUCCESS)
            async with stack:
                yield client
            return
        raise failed if failed is not None else BackendUnavailable(self.name or "pool", "no replica in rotation")

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        proxy = self.proxy
        async with contextlib.AsyncExitStack() as stack:
            for replica in self._replicas:  # a stdio replica's process starts here
                await stack.enter_async_context(replica.backend.lifespan())
            prober = Prober(
                self._replicas,
                proxy.hints,
                interval=self.probe_interval,
                timeout=self.probe_timeout,
                failures=self.probe_failures,
            )
            async with anyio.create_task_group() as group:
                group.start_soon(prober.run)
                try:
                    yield
                finally:
                    group.cancel_scope.cancel()

    def describe(self) -> str:
        return f"pool of {len(self.replicas)}: " + ", ".join(replica.describe() for replica in self._all())

    # --- state ------------------------------------------------------------------------------------

    def state(self) -> PoolState:
        """Each replica's state now (for `/readyz`)."""
        replicas = tuple(
            ReplicaState(
                replica.label,
                replica.describe(),
                "up" if replica.up else "ejected",
                replica.in_flight,
                replica.last_error if not replica.up else "",
            )
            for replica in self._all()
        )
        return PoolState(sum(1 for replica in replicas if replica.state == "up"), replicas)

    def instrument(self, meter_provider: MeterProvider | None = None) -> None:
        """Report the pool in metrics: `mcp.middleware.pool.replica.up` (1/0) and `.in_flight` per replica,
        `mcp.middleware.pool.failovers` per backend. The replica label is its index in the configured list."""
        meter = get_meter("mcp_middleware.router", meter_provider=meter_provider)
        meter.create_observable_gauge(
            "mcp.middleware.pool.replica.up",
            callbacks=[self._observe_up],
            description="Whether a pool's replica is in rotation (1) or ejected (0).",
        )
        meter.create_observable_gauge(
            "mcp.middleware.pool.replica.in_flight",
            callbacks=[self._observe_in_flight],
            description="Requests in flight at a pool's replica.",
        )
        meter.create_observable_counter(
            "mcp.middleware.pool.failovers",
            callbacks=[self._observe_failovers],
            description="Requests sent to another replica after one failed.",
        )

    def _observe_up(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(replica.up), self._labels(replica)) for replica in self._all()]

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(replica.in_flight, self._labels(replica)) for replica in self._all()]

    def _observe_failovers(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.proxy.failovers, {"mcp_middleware.backend": self.name or "pool"})]

    def _labels(self, replica: Replica) -> dict[str, str]:
        return {"mcp_middleware.backend": replica.pool, "mcp_middleware.replica": replica.label}

    def _all(self) -> tuple[Replica, ...]:
        return self.proxy.replicas

    def _changed(self, replica: Replica, change: StateChange) -> None:
        """One WARNING when a replica leaves rotation and one when it returns; the probing in between at DEBUG."""
        if change.previous is BreakerState.CLOSED and change.state is BreakerState.OPEN:
            up = sum(1 for other in self._replicas if other is not replica and other.up)
            logger.warning(
                "backend %r replica %s (%s) ejected (%s): %d of %d replicas up",
                replica.pool,
                replica.label,
                replica.describe(),
                replica.last_error or change.reason,
                up,
                len(self._replicas),
            )
        elif change.state is BreakerState.CLOSED and change.previous is not BreakerState.CLOSED:
            up = sum(1 for other in self._replicas if other is not replica and other.up) + 1
            logger.warning(
                "backend %r replica %s (%s) readmitted: %d of %d replicas up",
                replica.pool,
                replica.label,
                replica.describe(),
                up,
                len(self._replicas),
            )
        else:
            logger.debug(
                "backend %r replica %s: %s (%s)", replica.pool, replica.label, change.state.value, change.reason
            )
