"""`AuditTrail`: a bounded queue of operations, drained by one writer thread that seals and writes records.

The request path only appends to the queue (`submit`: no I/O, no hashing, no serialising). The
writer thread builds each record, seals it into the chain and hands it to every sink. When the
queue is full (or the bodies waiting in it pass `max_pending_bytes`), the operation is dropped and
counted (`dropped`, the `mcp.middleware.audit.dropped` counter), one WARNING is logged per burst,
and the chain itself says so: the next record written is an `audit.dropped` record with the count.

On start the writer resumes the chain from the file sink's last record and writes an
`audit.start` record (`resumed: true`, or `false` with the reason when a new chain begins).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from .chain import AuditKeys, Chain, Tail
from .record import Operation, Redactor, operation_fields, timestamp
from .sinks import AuditSink

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["AuditTrail"]

logger = logging.getLogger("mcp_middleware.audit")

_STOP: Final = object()
CLOSE_PATIENCE: Final = 5.0
"""Seconds `close()` waits for the writer to drain what is queued."""


class AuditTrail:
    """The audit records of one process, hash-chained, written off the request path.

    `values`: write the argument values (redacted by `redact`, bounded) besides their digest.
    `queue_size` and `max_pending_bytes` bound what waits to be written. `keys`
    (:class:`AuditKeys`) sign the chain, so that rewriting it needs the key as well as the file.

    >>> from mcp_middleware.audit import AuditMiddleware, JsonlFileSink
    >>> trail = AuditTrail([JsonlFileSink("audit.jsonl", max_bytes=50 * 2**20, backups=10)],
    ...                    redact=["password", "token", "*secret*"])
    >>> # app = AuditMiddleware(mcp_app, trail=trail); at shutdown: trail.close()
    """

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        *,
        values: bool = False,
        redact: Iterable[str] = (),
        queue_size: int = 10_000,
        max_pending_bytes: int = 64 * 2**20,
        meter_provider: MeterProvider | None = None,
        keys: AuditKeys | None = None,
    ) -> None:
        if not sinks:
            raise ValueError("AuditTrail needs at least one sink")
        if queue_size <= 0 or max_pending_bytes <= 0:
            raise ValueError("AuditTrail needs queue_size > 0 and max_pending_bytes > 0")
        self.sinks = tuple(sinks)
        self.keys = keys
        """Sign the chain (HMAC-SHA256) under these keys: rewriting it then needs the key."""
        self.values = values
        self.redactor = Redactor(redact)
        self.queue_size = queue_size
        self.max_pending_bytes = max_pending_bytes
        self.offered = 0
        """Operations handed to `submit` (written, waiting, or dropped)."""
        self.dropped = 0
        """Operations not recorded because the queue was full (a running total)."""
        self.written = 0
        self.failures = 0
        """Records a sink failed to write (each one logged)."""
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._pending_bytes = 0
        self._bytes_lock = threading.Lock()
        self._dropping = False
        self._reported_drops = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._ready = threading.Event()
        self._failing: set[int] = set()
        """Sinks (by index) whose last write failed."""
        if meter_provider is not None:
            self.measure(meter_provider)

    def measure(self, meter_provider: MeterProvider) -> None:
        """Report `dropped` as the counter `mcp.middleware.audit.dropped` (read when the reader collects)."""
        from opentelemetry.metrics import CallbackOptions, Observation

        from mcp_middleware import __version__

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(self.dropped)

        meter = meter_provider.get_meter("mcp_middleware.audit", __version__)
        meter.create_observable_counter(
            "mcp.middleware.audit.dropped",
            callbacks=[observe],
            unit="{operation}",
            description="MCP operations not audited because the audit queue was full",
        )

    # --- the request path ---------------------------------------------------------------------

    def submit(self, operation: Operation) -> bool:
        """Queue one operation for the writer; never blocks. False (and counted) when it had to be dropped."""
        self.offered += 1
        if self._thread is None:
            self.start()
        weight = operation.weight
        with self._bytes_lock:
            over = self._closed or self._pending_bytes + weight > self.max_pending_bytes
            if not over:
                self._pending_bytes += weight
        if not over:
            try:
                self._queue.put_nowait(operation)
            except queue.Full:
                with self._bytes_lock:
                    self._pending_bytes -= weight
                over = True
        if over:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                logger.warning(
                    "audit queue full (%d operations or %d bytes waiting)%s: operations are being dropped "
                    "and counted in mcp.middleware.audit.dropped (%d so far)",
                    self.queue_size,
                    self.max_pending_bytes,
                    " or the trail closed" if self._closed else "",
                    self.dropped,
                )
            return False
        if self._dropping:
            self._dropping = False
            logger.warning("audit queue accepting operations again; %d dropped in all", self.dropped)
        return True

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the writer thread (once; `submit` starts it on first use)."""
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="mcp-audit-writer", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the writer has opened the sinks and written its `audit.start` record."""
        return self._ready.wait(timeout)

    @property
    def pending(self) -> int:
        """Operations queued or being written."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (blocking: not on the event loop) until every queued operation is written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self, patience: float = CLOSE_PATIENCE) -> None:
        """Write what is queued (waiting at most `patience` seconds), then close the sinks."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=patience)
        thread.join(patience)
        if thread.is_alive():
            logger.warning("audit writer still busy after %.1f s at shutdown: unwritten records are lost", patience)

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        chain = self._open()
        self._ready.set()
        try:
            while True:
                item = self._queue.get()
                try:
                    if item is _STOP:
                        self._report_drops(chain)
                        return
                    with self._bytes_lock:
                        self._pending_bytes -= item.weight
                    self._report_drops(chain)
                    try:
                        self._write(chain, operation_fields(item, self.redactor, values=self.values))
                    except Exception:  # a record that cannot be built must not stop the writer
                        logger.exception("audit record could not be built for %s", item.request.method)
                        self.failures += 1
                finally:
                    self._queue.task_done()
        finally:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:
                    logger.exception("audit sink %s failed to close", type(sink).__name__)

    def _open(self) -> Chain:
        """Open every sink; resume the chain from the first one that has a tail, and say so in the chain."""
        tail: Tail | None = None
        for sink in self.sinks:
            try:
                found = sink.open()
            except Exception as exc:  # its writes fail too, and say so (counted in `failures`)
                logger.error("audit sink %s cannot open: %s", type(sink).__name__, exc, exc_info=exc)
                continue
            if tail is None and found is not None:
                tail = found.checked(self.keys)
        start: dict[str, Any] = {"event": "audit.start", "ts": timestamp(time.time()), "pid": os.getpid()}
        if tail is not None and tail.seq is not None and tail.hash is not None:
            chain = Chain(tail.seq + 1, tail.hash, keys=self.keys)
            start["resumed"] = True
        else:
            chain = Chain(keys=self.keys)
            start["resumed"] = False
            if tail is not None and tail.problem is not None:
                start["reason"] = f"the previous chain cannot be resumed: {tail.problem}"
                logger.warning("audit: %s; a new chain starts", start["reason"])
        self._write(chain, start)
        return chain

    def _report_drops(self, chain: Chain) -> None:
        dropped = self.dropped
        if dropped != self._reported_drops:
            count, self._reported_drops = dropped - self._reported_drops, dropped
            self._write(chain, {"event": "audit.dropped", "ts": timestamp(time.time()), "count": count})

    def _write(self, chain: Chain, fields: dict[str, Any]) -> None:
        record = chain.seal(fields)
        for index, sink in enumerate(self.sinks):
            try:
                sink.write(record)
            except Exception as exc:
                self.failures += 1
                if index not in self._failing:  # once per outage, not once per record
                    self._failing.add(index)
                    logger.error(
                        "audit sink %s failed to write record %d (its records are lost until it recovers): %s",
                        type(sink).__name__,
                        record["seq"],
                        exc,
                    )
            else:
                if index in self._failing:
                    self._failing.discard(index)
                    logger.warning("audit sink %s writes again (from record %d)", type(sink).__name__, record["seq"])
        self.written += 1
