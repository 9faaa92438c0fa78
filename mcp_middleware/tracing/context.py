"""W3C trace context from HTTP headers and from `params._meta`, and back into `_meta`.

**The rule: `params._meta` wins.** When the request's `params._meta` carries a valid
`traceparent`, the parent context (`traceparent`, `tracestate` and `baggage`, all three
from `_meta`, none from the headers) comes from there; otherwise it comes from the HTTP
headers. `_meta` is the MCP message's own carrier (SEP-414, the OTel MCP conventions):
it survives retries and proxies that start new HTTP requests, and it names the MCP
client span that sent this very message, while a `traceparent` header names whatever
HTTP client span carried it. When both are valid and differ, the header context is
kept as a span link. Extraction uses the configured OpenTelemetry propagators
(W3C trace context and baggage by default).

Going in, :func:`with_trace_context` writes the request span's context into the body's
`params._meta`, which is where the `mcp` SDK server takes the parent of its own span.

>>> carrier = meta_carrier({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"})
>>> sorted(carrier)
['traceparent']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

from mcp_middleware.core import McpRequest, RequestKind

__all__ = [
    "TRACE_KEYS",
    "context_from_headers",
    "headers_with_carrier",
    "meta_carrier",
    "valid_parent",
    "with_content_length",
    "with_trace_context",
]

TRACE_KEYS: Final = ("traceparent", "tracestate", "baggage")
"""The unprefixed `_meta` keys reserved for W3C context (SEP-414), also the header names."""
_TRACE_HEADER_KEYS: Final = frozenset(key.encode() for key in TRACE_KEYS)


def meta_carrier(meta: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The trace keys of `params._meta`, or `None` when it carries no `traceparent` string."""
    if not meta or not isinstance(meta.get("traceparent"), str):
        return None
    return {key: value for key in TRACE_KEYS if isinstance(value := meta.get(key), str)}


def valid_parent(carrier: Mapping[str, str]) -> SpanContext | None:
    """The span context a carrier names, if it is a valid one."""
    try:
        context = propagate.extract(carrier)
    except (ValueError, TypeError):  # a broken custom propagator must not fail the request
        return None
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


def context_from_headers(headers: list[tuple[bytes, bytes]]) -> SpanContext | None:
    """The span context the HTTP trace headers name, if valid (for the link when `_meta` wins)."""
    carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers if key in _TRACE_HEADER_KEYS}
    return valid_parent(carrier) if "traceparent" in carrier else None


def headers_with_carrier(headers: list[tuple[bytes, bytes]], carrier: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The request headers with their trace context replaced by `carrier`'s.

    The ASGI instrumentation extracts the parent from the headers it is handed; this is
    how the `_meta` context reaches it.
    """
    kept = [(key, value) for key, value in headers if key not in _TRACE_HEADER_KEYS]
    kept.extend((key.encode(), value.encode("latin-1", "replace")) for key, value in carrier.items())
    return kept


def with_content_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """The headers with `Content-Length` set to `length` (after the body was rewritten)."""
    value = str(length).encode()
    return [(key, value if key == b"content-length" else current) for key, current in headers]


def with_trace_context(request: McpRequest, context: Context) -> bytes | None:
    """The request body with `params._meta` carrying `context`, or `None` if it cannot carry one.

    Only requests and notifications with a method, whose `params` and `_meta` (when
    present) are objects, are rewritten; the rest of the message is kept as it was.
    """
    if request.method is None or request.kind not in (RequestKind.REQUEST, RequestKind.NOTIFICATION):
        return None
    params = request.params
    meta = params.get("_meta") if params is not None else None
    if meta is not None and not isinstance(meta, dict):
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    if "traceparent" not in carrier:
        return None
    new_meta = {key: value for key, value in (meta or {}).items() if key not in TRACE_KEYS}
    new_meta.update(carrier)
    message: dict[str, Any] = {"jsonrpc": "2.0"}
    if request.kind is RequestKind.REQUEST:
        message["id"] = request.id
    message["method"] = request.method
    message["params"] = {**(params or {}), "_meta": new_meta}
    return orjson.dumps(message)
