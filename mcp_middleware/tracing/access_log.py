"""One structured JSON access line per MCP request.

Each line is a JSON object on the `mcp_middleware.access` logger (at INFO by default):
method, target, HTTP status, JSON-RPC error code, `error.type`, duration, principal,
trace and span ids, and what each middleware decided. The same object is attached to the
log record as `record.mcp` for handlers that ship structured fields themselves.

Never logged: tokens, headers, the principal's claims, result bodies, session ids (a session
is named by its digest, `sha256:` and 16 hex digits). Argument values (`params.arguments` of
`tools/call`/`prompts/get`) only with `log_arguments=True`, and then at most
`MAX_LOGGED_ARGUMENTS` bytes of their JSON. Every other text the client chose (method, target,
protocol version, id, path, decision details) is clipped to 256 characters, the last one `…`.

>>> import logging
>>> log = AccessLog(logger=logging.getLogger("demo.access"))
>>> log.enabled
False
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from mcp_middleware.core import Decision, McpRequest, Principal, clip, session_digest

__all__ = ["ACCESS_LOGGER", "MAX_LOGGED_ARGUMENTS", "AccessLog"]

ACCESS_LOGGER = "mcp_middleware.access"
MAX_LOGGED_ARGUMENTS = 4096
"""Largest JSON of `params.arguments` logged as it is; a larger one is logged as its clipped JSON text."""


class AccessLog:
    """Writes the access line; give it to `TracingMiddleware(access_log=...)`.

    >>> import logging
    >>> logging.basicConfig(level=logging.INFO)
    >>> log = AccessLog(log_arguments=False)   # TracingMiddleware(app, access_log=log)
    """

    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        log_arguments: bool = False,
    ) -> None:
        self.logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)
        self.level = level
        self.log_arguments = log_arguments

    @property
    def enabled(self) -> bool:
        """Whether a line would be written (checked per request: logging can be configured late)."""
        return self.logger.isEnabledFor(self.level)

    def entry(
        self,
        *,
        request: McpRequest | None,
        http_method: str,
        path: str,
        status: int | None,
        error_code: int | None,
        error_type: str | None,
        duration: float,
        principal: Principal,
        trace_id: int,
        span_id: int,
        decisions: Sequence[Decision],
    ) -> dict[str, Any]:
        """The fields of one line (a plain dict, JSON-serialisable)."""
        entry: dict[str, Any] = {"event": "mcp.request", "http.method": http_method, "http.path": clip(path)}
        if request is not None:
            method = request.method
            target = request.target
            entry["mcp.method"] = clip(method) if method is not None else None
            entry["mcp.target"] = clip(target) if target is not None else None
            entry["mcp.kind"] = request.kind.value
            entry["mcp.era"] = request.era.value
            entry["mcp.protocol_version"] = clip(request.protocol_version)
            request_id = request.id
            if request_id is not None:
                entry["jsonrpc.id"] = clip(request_id) if type(request_id) is str else request_id
            if request.session_id is not None:
                entry["mcp.session_id"] = session_digest(request.session_id)
            if self.log_arguments and method in ("tools/call", "prompts/get") and request.params:
                entry["mcp.arguments"] = _bounded_arguments(request.params.get("arguments"))
        entry["http.status"] = status
        entry["jsonrpc.error_code"] = error_code
        entry["error.type"] = error_type
        entry["duration_ms"] = round(duration * 1000, 3)
        # Who, never how: the subject and client, not the token or the claims.
        entry["principal"] = (
            {
                "subject": _clipped(principal.subject),
                "client_id": _clipped(principal.client_id),
                "tenant": _clipped(principal.tenant),
            }
            if principal.authenticated
            else None
        )
        entry["trace_id"] = f"{trace_id:032x}" if trace_id else None
        entry["span_id"] = f"{span_id:016x}" if span_id else None
        entry["decisions"] = [
            {"component": d.component, "outcome": d.outcome, **{k: _clipped(v) for k, v in d.attributes.items()}}
            for d in decisions
        ]
        return entry

    def write(self, entry: dict[str, Any]) -> None:
        """Write one line; a value JSON cannot carry is written as its `str`.

        The message is the entry's JSON text, made only when a handler asks for it: the JSON
        formatter of `mcp_middleware.logs` writes the fields (`record.mcp`) as the object itself.
        """
        self.logger.log(self.level, _AccessLine(entry), extra={"mcp": entry})


class _AccessLine:
    """The message of an access record: the entry as JSON text, serialised once, on first use."""

    __slots__ = ("_text", "entry")

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = orjson.dumps(self.entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._text


def _clipped(value: Any) -> Any:
    return clip(value) if type(value) is str else value


def _bounded_arguments(arguments: Any) -> Any:
    """The arguments as they are if their JSON is small, else that JSON as clipped text."""
    try:
        text = orjson.dumps(arguments)
    except TypeError:  # orjson.JSONEncodeError: not JSON-shaped (a view built by hand)
        return clip(str(arguments), MAX_LOGGED_ARGUMENTS)
    if len(text) <= MAX_LOGGED_ARGUMENTS:
        return arguments
    return clip(text[: MAX_LOGGED_ARGUMENTS + 4].decode("utf-8", "ignore"), MAX_LOGGED_ARGUMENTS)
