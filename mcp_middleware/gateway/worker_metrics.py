"""`/metrics` under `--workers N`: every worker's series in every scrape, each labelled with its worker.

A scrape reaches one worker (the kernel hands the connection to whichever accepts it). Alone, that
worker could only show its own counters: a Prometheus series would jump between the workers' values
on each scrape. So each worker also serves its own exposition on a Unix socket in a directory only the
gateway's user can open (made by the supervisor, removed when it ends), and the worker answering a
scrape asks every other worker there and answers with all of them, each series with a `worker` label
(the worker's pid). Sum them in PromQL: `sum without (worker) (rate(mcp_server_operation_duration_seconds_count[5m]))`.

A worker that does not answer within :data:`PEER_TIMEOUT` (or has just been replaced) is left out of
that scrape, and `mcp_gateway_metrics_workers{state="missing"}` counts it: a scrape never fails for it.
The peers are asked in the thread the exposition renders in: no request waits for them.

>>> import tempfile
>>> from prometheus_client import CollectorRegistry, Counter, generate_latest
>>> own = CollectorRegistry()
>>> Counter("calls", "Calls.", registry=own).inc()
>>> shared = WorkerMetrics(own, Path(tempfile.mkdtemp()), worker="41")
>>> print(generate_latest(shared.registry).decode().splitlines()[2])
calls_total{worker="41"} 1.0
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["ENV", "PEER_TIMEOUT", "WorkerMetrics", "from_environment"]

logger = logging.getLogger("mcp_middleware.gateway")

ENV = "MCP_GATEWAY_WORKER_METRICS"
"""The supervisor's directory of the workers' sockets, as the workers inherit it."""
PEER_TIMEOUT = 1.0
"""Seconds a scrape waits for all the other workers together."""
_MAX_EXPOSITION = 64 * 1024 * 1024
"""Largest exposition read from one worker (a bound, not an expected size)."""
_LABEL = "worker"
_SUFFIX = ".sock"
_POLL = 0.5
"""Seconds between looks at whether the worker is closing."""


class WorkerMetrics:
    """One worker's share: its own registry served on a socket, and `registry`, what its `/metrics` renders."""

    def __init__(self, own: CollectorRegistry, directory: Path, *, worker: str | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.own = own
        self.directory = directory
        self.worker = worker if worker is not None else str(os.getpid())
        self.path = directory / f"{self.worker}{_SUFFIX}"
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AllWorkers(self))
        self._closed = threading.Event()

    def start(self) -> None:
        """Serve this worker's own exposition on its socket (the others read it when they are scraped), from a
        thread of its own: rendering is blocking work, and the event loop is the requests'."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a pid reused after a worker died without removing its socket
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listening.bind(str(self.path))
        listening.listen(16)
        listening.settimeout(_POLL)
        self._listening = listening
        threading.Thread(target=self._serve, args=(listening,), name="worker-metrics", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self, listening: socket.socket) -> None:
        from prometheus_client import generate_latest

        with listening:
            while not self._closed.is_set():
                try:
                    connection, _ = listening.accept()
                except TimeoutError:
                    continue
                except OSError as exc:  # the socket is unusable: this worker's series are left out of scrapes
                    logger.warning("worker metrics: stopped serving %s: %s", self.path, exc)
                    return
                with connection:
                    try:
                        connection.settimeout(PEER_TIMEOUT)
                        connection.sendall(generate_latest(self.own))
                    except OSError as exc:  # the asking worker gave up: nothing to do
                        logger.debug("worker metrics: the peer left: %s", exc)

    def peers(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.endswith(_SUFFIX) and p != self.path)
        except OSError:
            return []


class _AllWorkers:
    """A collector: this worker's families and every peer's, merged by name, each sample with its worker."""

    def __init__(self, shared: WorkerMetrics) -> None:
        self.shared = shared

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        _merge(families, self.shared.own.collect(), self.shared.worker)
        answered = missing = 0
        deadline = time.monotonic() + PEER_TIMEOUT
        for peer in self.shared.peers():
            text = _ask(peer, deadline)
            if text is None:
                if _stale(peer):  # a worker that died without removing its socket (SIGKILL): not missing
                    continue
                missing += 1
                continue
            answered += 1
            _merge(families, text_string_to_metric_families(text), peer.name.removesuffix(_SUFFIX))
        yield from families.values()
        workers = GaugeMetricFamily(
            "mcp_gateway_metrics_workers", "Workers whose series this scrape carries (or could not).", labels=["state"]
        )
        workers.add_metric(["answered"], answered + 1)
        workers.add_metric(["missing"], missing)
        yield workers


def _merge(families: dict[str, Metric], found: Iterable[Metric], worker: str) -> None:
    from prometheus_client.metrics_core import Metric

    for family in found:
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        elif merged.type != family.type:
            continue  # two workers disagreeing on a family (mid-upgrade): the first one's kind stays
        merged.samples.extend(s._replace(labels={**s.labels, _LABEL: worker}) for s in family.samples)


def _ask(peer: Path, deadline: float) -> str | None:
    """A peer's exposition, or None when it did not answer whole before `deadline`."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(left)
            connection.connect(str(peer))
            while chunk := connection.recv(65536):
                size += len(chunk)
                if size > _MAX_EXPOSITION or time.monotonic() > deadline:
                    return None
                chunks.append(chunk)
                connection.settimeout(max(deadline - time.monotonic(), 0.001))
        return b"".join(chunks).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # gone (replaced, stopping), or too slow
        logger.debug("worker metrics: %s did not answer: %s", peer.name, exc)
        return None


def _stale(peer: Path) -> bool:
    """Whether `peer` is the socket of a worker that no longer exists (then removed)."""
    try:
        os.kill(int(peer.name.removesuffix(_SUFFIX)), 0)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            peer.unlink()
        return True
    except (ValueError, PermissionError):
        return False
    return False


def from_environment(own: CollectorRegistry) -> WorkerMetrics | None:
    """The worker's share, serving, when the supervisor set up a socket directory (`--workers N`), else None."""
    directory = os.environ.pop(ENV, None)  # not inherited by what the worker starts (stdio servers)
    if not directory:
        return None
    shared = WorkerMetrics(own, Path(directory))
    try:
        shared.start()
    except OSError as exc:  # a scrape of this worker still shows its own series, and the others' answer
        logger.warning("worker metrics: cannot serve this worker's series to the others (%s): %s", shared.path, exc)
    return shared
