"""An MCP request measured with no span and no access line: the metrics `TracingMiddleware` records, and no more.

The gateway's `[tracing]` with no exporter configured records no spans (the global provider is
the API's stand-in) and, with `access_log = false`, writes no line: what is left of a request is
its `mcp.server.operation.duration` and the decision counters. This is that path without the
`Exchange` the span and the access line share, and with no frame of its own between the
middleware and the app: the same instruments, the same labels, the same values.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, CoreConfig, ResponseTap, observe_decisions, read_request

from .decision_counters import BATCH
from .metrics import McpMetrics
from .semconv import response_error

__all__ = ["measure"]

ServerName = Callable[[Scope], "str | None"]


async def measure(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    metrics: McpMetrics,
    config: CoreConfig,
    server_name: ServerName | None,
    marker: str,
) -> None:
    """Serve one request through `app`, recording what `TracingMiddleware` records when it only measures.

    `marker` is the scope key that tells an inner `TracingMiddleware` this request is taken care of.
    A refusal by the core goes to the client at once (with no span to hold it for, nothing differs)
    and, like every request that never reached the app, is recorded by the decisions counter only.
    """
    if len(metrics.pending) >= BATCH:  # the decisions are counted in batches (see `.decision_counters`)
        metrics.counters.drain()
    observe_decisions(scope, metrics.pending_decision)  # a list's `append`: no call of ours a decision
    request, receive = await read_request(scope, receive, send, config)
    if receive is ANSWERED:
        return
    if request is None:
        await app(scope, receive, send)
        return
    tap, forward = ResponseTap.attach(scope, send, request, max_bytes=config.max_inspect_bytes)
    scope[marker] = tap
    exception: str | None = None
    try:
        await app(scope, receive, forward)
    except Exception as exc:
        exception = type(exc).__qualname__
        raise
    finally:
        del scope[marker]
        status, result, error, duration = tap.found()  # what `tap.outcome()` would say, without building it
        error_type, error_code = response_error(status, result, error)
        server = server_name(scope) if server_name is not None else None
        metrics.record_measured(request, result, error_type, error_code, duration, server, exception)
