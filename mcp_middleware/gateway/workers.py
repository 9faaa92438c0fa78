"""`mcp-gateway serve --workers N`: N gateway processes on one port, under uvicorn's supervisor.

Why uvicorn's `Multiprocess` and not SO_REUSEPORT per worker: `serve` already binds one socket before
anything starts (a port in use is one error line); the supervisor hands that socket to each worker,
so the port is the same on every platform and no worker can bind a stale one. The supervisor also
already does what we would write again: SIGTERM/SIGINT stop every worker gracefully (each drains
within `shutdown_timeout`), a worker that dies or stops answering its health ping is replaced, and
a worker that fails during start-up (a bad config, a backend that cannot load) stops the whole
gateway instead of being restarted forever. The kernel spreads connections over the workers that
accept on the shared socket.

What this module adds to it:

* each worker builds its gateway itself (:class:`WorkerApp`, a factory uvicorn calls in the child):
  it reads the config file again, as a SIGHUP reload does, so nothing unpicklable crosses processes;
* SIGHUP is forwarded to every worker, whose own reloader applies the servers (uvicorn would
  restart every worker: sessions, breakers and stdio children lost for a config change);
* the banner is printed once, by the supervisor, when every worker has started;
* every worker's `/metrics` shows every worker's series, each with a `worker` label
  (:mod:`.worker_metrics`: the workers read each other's over Unix sockets in a private directory);
* a worker ends with its supervisor (Linux `PR_SET_PDEATHSIG`): a supervisor killed with SIGKILL leaves
  no worker holding the port.

State the workers cannot share is checked before any starts (`config_workers.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from mcp_middleware.logs import configure_logging

from . import worker_metrics
from .config import ConfigError, GatewayConfig, load_config
from .config_workers import worker_problems

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .app import Gateway

__all__ = ["WorkerApp", "serve_workers", "workers_accepted"]

logger = logging.getLogger("mcp_middleware.gateway")

HEALTH_PING_TIMEOUT = 10
"""Seconds a worker has to answer the supervisor's ping before it counts as hung and is replaced
(uvicorn's default is 5; a worker busy importing its backends on a loaded machine may need more)."""
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerApp:
    """The app factory a worker calls (in the worker): the gateway of the config file at `source`.

    `host` is the `--host` override, `port` the port the supervisor bound (URLs name it).
    """

    source: Path
    host: str | None
    port: int
    supervisor: int

    def __call__(self) -> ASGIApp:
        from .app import build_gateway

        _end_with_supervisor(self.supervisor)
        built: list[Gateway] = []
        if hasattr(signal, "SIGHUP"):  # first: a SIGHUP from here on is a reload once the loop runs again
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, built)
        try:
            config = load_config(self.source)
        except ConfigError as exc:  # the file changed since the supervisor checked it
            print(exc, file=sys.stderr, flush=True)
            sys.exit(STARTUP_FAILURE)
        settings = config.gateway
        configure_logging(settings.log_format, settings.log_level, levels=settings.log_levels)
        # uvicorn silenced its access log before this took its loggers over; the tracing middleware
        # writes the access lines (as in one process, where uvicorn's settings come after ours).
        access = logging.getLogger("uvicorn.access")
        access.handlers, access.propagate = [], False
        try:
            gateway = build_gateway(config, host=self.host, port=self.port)
        except (ConfigError, ImportError, ValueError) as exc:
            print(f"cannot build the gateway: {exc}", file=sys.stderr, flush=True)
            sys.exit(STARTUP_FAILURE)
        if gateway.telemetry is not None:
            gateway.telemetry.install_global()
        built.append(gateway)
        return gateway.app


def _end_with_supervisor(supervisor: int) -> None:
    """Have the kernel send SIGTERM (a graceful stop) when the supervisor ends; exit if it already did."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:
        sys.exit(STARTUP_FAILURE)


def _reload(built: list[Gateway]) -> None:
    """SIGHUP in a worker. uvicorn calls the factory inside the worker's event loop, and the loop runs
    signal handlers only between callbacks: one that arrived while the factory ran is handled after
    it, when the gateway exists (its reload then runs once the lifespan started it)."""
    for gateway in built:
        if gateway.reloader is not None:
            gateway.reloader.request()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, announcing once every worker serves and forwarding SIGHUP to them."""

    def __init__(self, config: Any, sockets: list[socket.socket], announce: Callable[[], None]) -> None:
        super().__init__(config, sockets)
        self.announce = announce
        self.announced = False

    def run(self) -> None:  # uvicorn's loop, with the announcement
        self.init_processes()
        logger.info("supervising %d workers: %s", len(self.processes), ", ".join(str(p.pid) for p in self.processes))
        while not self.should_exit.wait(0.5):
            self.handle_signals()
            self.keep_subprocess_alive()
            if not self.announced and not self.should_exit.is_set() and self._all_ready():
                self.announced = True
                self.announce()
        self.terminate_all()
        self.join_all()

    def _all_ready(self) -> bool:
        return all(process.is_ready(timeout=1) for process in self.processes)

    def handle_hup(self) -> None:
        """Reload in every worker, also those still starting: one that has not read the file yet
        reads it as it is now; one that has reloads once started. One so young it has no handler yet
        (still importing) ends by the signal and is replaced, reading the file as it is now."""
        logger.info("SIGHUP: reloading the servers in every worker")
        for process in self.processes:
            if process.pid is not None and process.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    @property
    def failed(self) -> bool:
        """A worker failed during start-up (uvicorn stops the supervisor then)."""
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)


def workers_accepted(config: GatewayConfig, workers: int, source: Path) -> bool:
    """Whether `workers` processes may serve `config` (its problems printed, its warnings logged)."""
    problems, warnings = worker_problems(config, workers)
    for warning in warnings:
        logger.warning("%s: %s", source, warning)
    if problems:
        print(ConfigError(problems, str(source)), file=sys.stderr)
    return not problems


def serve_workers(
    gateway: Gateway,
    sock: socket.socket,
    *,
    workers: int,
    source: Path,
    host: str | None,
    banner: Callable[..., None],
) -> bool:
    """Serve with `workers` processes on the bound `sock` until SIGTERM/SIGINT; whether all started.

    `gateway` is this process's own build of the config (checked, never started): the workers'
    uvicorn settings come from it, and `banner(gateway, source, workers=workers)` prints where it
    serves once every worker does. `host` is `--host`.
    """
    config = gateway.uvicorn_config()
    config.app = WorkerApp(gateway.config.source or source, host, gateway.port, os.getpid())
    config.factory = True
    config.workers = workers
    config.timeout_worker_healthcheck = HEALTH_PING_TIMEOUT
    # The workers' metrics sockets (each scrape shows every worker): a directory only this user opens.
    os.environ[worker_metrics.ENV] = sockets = tempfile.mkdtemp(prefix="mcp-gateway-metrics-")
    try:
        supervisor = _Supervisor(config, [sock], lambda: banner(gateway, source, workers=workers))
        supervisor.run()
    except Exception:
        logger.exception("the gateway stopped on an error")
        return False
    finally:
        del os.environ[worker_metrics.ENV]
        shutil.rmtree(sockets, ignore_errors=True)
        for close in gateway._closers:  # what building it opened (it never served)
            close()
    return supervisor.announced and not supervisor.failed
