"""A live registry: the gateway's servers change without a restart, on SIGHUP or when the file changes.

A reload reads the config file again and runs every check `check-config` runs on it. A file with
problems changes nothing: the gateway logs them at ERROR, each with its key and line, and goes on
with the servers it has. A good file's `[[servers]]` are compared with the running ones, by name:

* a new name is added (built, started, then mounted at `{prefix}/{name}` and in the aggregate);
* a name that is gone is removed (404 at its mount, "Unknown tool" at the aggregate);
* a name whose entry changed is replaced (a new backend and stack; its breaker starts closed);
* an entry that did not change keeps its backend, its sessions and its breaker.

Everything else (`[gateway]`, `[front_door]`, `[aggregate]`, `[auth]`, `[ratelimit]`, `[breaker]`,
`[cache]`, `[tracing]`) is read at start only: a reload that changes any of it applies the servers
and logs a WARNING naming each key it did not apply. New servers get the running global sections.
In-process apps are imported once per process: a changed `app` module's code needs a restart.

Requests in flight finish on the backend they started on; a removed backend is closed once they
ended, or after `[gateway] shutdown_timeout` seconds (see :meth:`McpRouter.apply`). Connected
clients are told `notifications/tools/list_changed` (and the prompts and resources variants) for
what the changed servers offer. Reloads run one at a time; requests for a reload that arrive
while one runs (a burst of SIGHUPs, an editor writing twice) make exactly one more.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from mcp_middleware.cache.keys import invalidation_tag
from mcp_middleware.router import Applied, HttpBackend, MountChanges, MountSpec, StdioBackend

from .backend_gate import gate_layer
from .backends import BackendLoadError, load_backend
from .config import ConfigError, GatewayConfig, Problem, ServerSettings, load_config

if TYPE_CHECKING:
    from .app import Gateway
    from .assembly import Assembly

__all__ = ["RELOADABLE", "Reloader", "ignored_keys"]

logger = logging.getLogger("mcp_middleware.gateway")

RELOADABLE = frozenset({"servers"})
"""The parts of the config file a reload applies; every other section needs a restart."""
_STORE_PATIENCE = 2.0
"""Seconds a reload waits for the cache store to drop the changed servers' entries."""
_RESTART_SECTIONS = (
    "gateway",
    "front_door",
    "aggregate",
    "auth",
    "ratelimit",
    "breaker",
    "cache",
    "tracing",
    "policy",
    "audit",
    "routes",
    "virtual_servers",
)


def ignored_keys(running: GatewayConfig, loaded: GatewayConfig) -> list[str]:
    """The keys (`gateway.port`, `auth.mode`) whose values differ between the two configs outside `[[servers]]`."""
    keys: list[str] = []
    for section in _RESTART_SECTIONS:
        before, after = getattr(running, section), getattr(loaded, section)
        if before == after:
            continue
        if not dataclasses.is_dataclass(before):  # [[routes]], [[virtual_servers]]: the list as a whole
            keys.append(section)
            continue
        keys += [
            f"{section}.{field.name}"
            for field in dataclasses.fields(before)
            if getattr(before, field.name) != getattr(after, field.name)
        ]
    return keys


class Reloader:
    """Reload a running gateway's servers from its config file.

    `request()` asks for a reload (a signal handler may call it); `run()`, inside the gateway's
    lifespan, performs them one at a time and watches the file when `watch_config` is on;
    `reload()` performs one now and returns what it applied (None when the file was refused).
    """

    def __init__(self, gateway: Gateway, assembly: Assembly, path: Path) -> None:
        self.gateway = gateway
        self.assembly = assembly
        self.path = path
        self._lock: anyio.Lock | None = None  # made in the event loop (check-config builds gateways in a thread)
        self._wake: anyio.Event | None = None
        self._pending = False
        self._digest = _digest(path)
        self.reloads = 0
        """Reloads applied so far (refused ones are not counted)."""
        self.refused = 0

    def request(self) -> None:
        """Ask for a reload (from the event loop's thread: `loop.add_signal_handler` calls it there)."""
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Perform requested reloads until cancelled; watch the file too when `[gateway] watch_config` is on."""
        async with anyio.create_task_group() as group:
            if self.gateway.config.gateway.watch_config:
                from .watch import watch_file

                group.start_soon(watch_file, self.path, self._file_changed)
            while True:
                self._wake = anyio.Event()
                if not self._pending:
                    await self._wake.wait()
                self._pending = False
                try:
                    await self.reload()
                except Exception:  # a reload must never take the gateway down
                    logger.exception("config reload failed")

    def _file_changed(self) -> None:
        if _digest(self.path) != self._digest:  # editors and ConfigMaps touch files without changing them
            self.request()

    async def reload(self) -> Applied | None:
        """Reload now: the applied change, or None when the file has problems (logged, nothing changed)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            self._digest = _digest(self.path)
            loaded = await anyio.to_thread.run_sync(self._checked)
            if loaded is None:
                self.refused += 1
                return None
            return await self._apply(loaded)

    def _checked(self) -> GatewayConfig | None:
        """The file, loaded and through every check `check-config` runs (in a worker thread: it imports)."""
        from .config_check import check_config

        try:
            loaded = load_config(self.path)
        except ConfigError as exc:
            logger.error("config reload refused, nothing changed: %s", exc)
            return None
        problems, warnings = check_config(loaded)
        if problems:
            logger.error("config reload refused, nothing changed: %s", ConfigError(problems, str(self.path)))
            return None
        for warning in warnings:
            logger.warning("%s: %s", self.path, warning)
        return loaded

    async def _apply(self, loaded: GatewayConfig) -> Applied | None:
        gateway, assembly = self.gateway, self.assembly
        router = gateway.router
        running = gateway.config
        ignored = ignored_keys(running, loaded)
        if ignored:
            logger.warning("config reload: %s need a restart, not applied", ", ".join(ignored))
        effective = dataclasses.replace(
            running, servers=loaded.servers, warnings=loaded.warnings, lines=loaded.lines, source=loaded.source
        )
        before = {server.name: server for server in running.servers}
        wanted = {server.name: server for server in effective.servers}
        removed = [name for name in router.mounts if name not in wanted]
        changes = [
            server for server in effective.servers if server.name not in router.mounts or before[server.name] != server
        ]
        retired = {*removed, *(server.name for server in changes if server.name in router.mounts)}
        breakers = list(assembly.breakers)
        assembly.config = effective  # new stacks read the servers' own settings; the globals are the running ones
        try:
            specs, skipped = self._specs(effective, changes)
            removed += [name for name in skipped if name in router.mounts]
            specs = [spec for spec in specs if spec.name not in skipped]
            applied = await router.apply(
                MountChanges(mount=specs, unmount=removed), drain_timeout=running.gateway.shutdown_timeout
            )
        except Exception as exc:  # a backend that cannot start: the running set stays as it was
            assembly.config = running
            assembly.breakers[:] = breakers
            self.refused += 1
            logger.error("config reload refused, nothing changed: %s", _reason(exc))
            return None
        assembly.breakers[:] = [
            entry for entry in assembly.breakers if entry not in breakers or entry[0] not in retired
        ]  # the retired servers' breakers leave /readyz; the new ones joined it
        gateway.config = effective
        touched = {*removed, *(server.name for server in changes)}
        gateway.skipped = [entry for entry in gateway.skipped if entry.partition(":")[0] in set(wanted) - touched] + [
            f"{name}: {why}" for name, why in skipped.items()
        ]
        for name in (*applied.added, *applied.replaced):
            if router.mounts[name].backend.supervised:  # a stdio command starts now, as at start
                await router.session_failure(name, 0)
        if applied.added or applied.removed or applied.replaced:
            await self._forget_cached(["aggregate", *applied.added, *applied.removed, *applied.replaced])
        assembly.reload_policies()  # `[policy] files` are read again (a bad file keeps the rules it replaced)
        self.reloads += 1
        logger.info("config reloaded from %s: %s", self.path, _summary(applied))
        return applied

    async def _forget_cached(self, mounts: list[str]) -> None:
        """Drop the cache's entries of the aggregate and of every changed server: they describe the old set."""
        store = self.assembly.cache_store
        if store is None:
            return
        try:
            with anyio.fail_after(_STORE_PATIENCE):
                await store.invalidate([invalidation_tag(mount) for mount in mounts])
        except Exception as exc:  # a store that is down: its entries expire with their TTL
            logger.warning("config reload: cached answers of %s not dropped: %s", ", ".join(mounts), _reason(exc))

    def _specs(self, config: GatewayConfig, servers: list[ServerSettings]) -> tuple[list[MountSpec], dict[str, str]]:
        """The mounts for `servers` (new or changed), and the optional ones that cannot load (name → why)."""
        router = self.gateway.router
        folder = config.source.parent if config.source else Path.cwd()
        aggregate = config.aggregate.enabled
        specs: list[MountSpec] = []
        skipped: dict[str, str] = {}
        problems: list[Problem] = []
        for server in servers:
            try:
                backend = load_backend(server, folder)
            except BackendLoadError as exc:
                if server.optional:
                    skipped[server.name] = exc.message
                    logger.warning("optional server %s skipped: %s", server.name, exc.message)
                else:
                    problems.append(config.problem(f"servers[{server.index}].{exc.key}", exc.message))
                continue
            if not server.mount and not (server.aggregate and aggregate):
                continue
            layers = self.assembly.for_mount(server)
            if isinstance(backend, StdioBackend | HttpBackend):
                layers.append(gate_layer(server.name, lambda: router, server.timeout))
            specs.append(
                MountSpec(
                    server.name,
                    backend,
                    middleware=layers,
                    aggregate=server.aggregate and aggregate,
                    path_mount=server.mount,
                    curation=server.curation,
                )
            )
        if problems:
            raise ConfigError(problems, str(config.source or "config"))
        return specs, skipped


def _summary(applied: Applied) -> str:
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (("added", applied.added), ("removed", applied.removed), ("changed", applied.replaced))
        if names
    ]
    return "; ".join(parts) or "no server changed"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    return str(exc)[:500] or type(exc).__name__


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None
