"""Closing the stores the gateway opened (and the approval webhook's client), when it stops: their
connections end with it.

The assembly opens one bucket store, one quota storage, one cache store and one approval store
(each on first use, shared by every server's stack). A reload builds new stacks on the same stores
(their sections need a restart), so only the gateway's shutdown closes them: after the router's
lifespan ended, which is after uvicorn let the requests in flight finish. Each close is bounded and
its failure logged: one store that hangs or fails does not keep the others open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from mcp_middleware.ratelimit import aclose_quota_storage

from .assembly import Assembly

__all__ = ["CLOSE_PATIENCE", "close_stores"]

logger = logging.getLogger("mcp_middleware.gateway")

CLOSE_PATIENCE = 5.0
"""Seconds each store has to close (a Redis that stopped answering must not hold the shutdown)."""


async def close_stores(assembly: Assembly) -> None:
    """Close every store `assembly` opened (those it has now: a reload may have opened one since start),
    and the approval webhook's HTTP client."""
    closing: list[tuple[str, Callable[[], Awaitable[None]] | None]] = []
    if assembly.approval_store is not None:  # (a store of one's own may have no `aclose`: nothing to close)
        closing.append(("approval store", getattr(assembly.approval_store, "aclose", None)))
    if assembly.bucket_store is not None:
        closing.append(("rate-limit store", getattr(assembly.bucket_store, "aclose", None)))
    if (quotas := assembly.quota_storage) is not None:
        closing.append(("quota storage", lambda: aclose_quota_storage(quotas)))
    if assembly.cache_store is not None:
        closing.append(("cache store", getattr(assembly.cache_store, "aclose", None)))
    if assembly.approval_webhook is not None:  # its HTTP client's keep-alive connections to the approver
        closing.append(("approval webhook's client", assembly.approval_webhook.aclose))
    for what, close in closing:
        if close is None:
            continue
        try:
            with anyio.fail_after(CLOSE_PATIENCE):
                await close()
        except Exception as exc:  # a store's trouble at shutdown is logged, never raised
            logger.warning("closing the %s failed: %s: %s", what, type(exc).__name__, exc)
