"""What one audit record says about one MCP operation, and how client input is bounded in it.

The request path captures an :class:`Operation` (references and scalars, no copying, no
hashing); the trail's writer thread turns it into the record's fields with :func:`operation_fields`:
the arguments' digest and, when configured, their values with secrets redacted at any depth.

>>> redactor = Redactor(("password", "*secret*"))
>>> redactor.redact({"user": "ann", "nested": [{"Password": "p", "api_secret_key": "s"}]})
{'user': 'ann', 'nested': [{'Password': '[REDACTED]', 'api_secret_key': '[REDACTED]'}]}
>>> arguments_fields({"b": 1, "a": [1, 2]}, b"", redactor, values=False)["digest"] == arguments_fields(
...     {"a": [1, 2], "b": 1}, b"", redactor, values=False)["digest"]
True
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson

from mcp_middleware.core import (
    Decision,
    ErrorCode,
    McpRequest,
    Outcome,
    Principal,
    ResponseOutcome,
    clip,
    session_digest,
)

from .chain import canonical, digest

__all__ = [
    "MAX_VALUE_BYTES",
    "REDACTED",
    "Operation",
    "Redactor",
    "arguments_fields",
    "outcome_fields",
    "operation_fields",
]

REDACTED: Final = "[REDACTED]"
MAX_VALUE_BYTES: Final = 4096
"""Largest JSON of (redacted) argument values written as they are; larger ones are written as clipped text."""
_ARGUMENT_METHODS: Final = frozenset({"tools/call", "prompts/get"})
_REFUSALS: Final = frozenset({Outcome.DENY, Outcome.REJECTED, Outcome.OPEN, Outcome.SESSION_REFUSED})
"""Decisions that answer the request themselves (whoever makes them: auth, rate limit, breaker, policy…)."""


class Operation(NamedTuple):
    """What the request path hands the writer: captured when the response has ended (immutable).

    The outcome is already reduced to its fields (see :func:`outcome_fields`): the response's
    result, which the tap parsed, is not kept waiting in the queue.
    """

    started: float
    """Wall-clock time (`time.time()`) the operation arrived."""
    request: McpRequest
    principal: Principal
    backend: str | None
    path: str
    decisions: tuple[Decision, ...]
    outcome: dict[str, Any]
    duration: float
    trace_id: int
    span_id: int

    @property
    def weight(self) -> int:
        """Bytes this operation keeps alive while it waits in the queue (its request body)."""
        return len(self.request.body)


class Redactor:
    """Replaces the value of every key matching one of `patterns` (globs, case-insensitive), at any depth."""

    __slots__ = ("_exact", "_pattern")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        chosen = [pattern.lower() for pattern in patterns]
        self._exact = frozenset(pattern for pattern in chosen if not any(char in pattern for char in "*?["))
        globs = [fnmatch.translate(pattern) for pattern in chosen if pattern not in self._exact]
        self._pattern = re.compile("|".join(globs)) if globs else None

    def matches(self, key: str) -> bool:
        folded = key.lower()
        return folded in self._exact or (self._pattern is not None and self._pattern.match(folded) is not None)

    def redact(self, value: Any) -> Any:
        """A copy of `value` with matching keys' values replaced (iterative: hostile nesting cannot recurse)."""
        if not isinstance(value, dict | list):
            return value
        root: Any = {} if isinstance(value, dict) else []
        pending: list[tuple[Any, Any]] = [(value, root)]
        while pending:
            source, target = pending.pop()
            items = source.items() if isinstance(source, dict) else enumerate(source)
            for key, item in items:
                if isinstance(source, dict) and isinstance(key, str) and self.matches(key):
                    copied: Any = REDACTED
                elif isinstance(item, dict | list):
                    copied = {} if isinstance(item, dict) else []
                    pending.append((item, copied))
                else:
                    copied = item
                if isinstance(target, dict):
                    target[key] = copied
                else:
                    target.append(copied)
        return root


def arguments_fields(arguments: Any, body: bytes, redactor: Redactor, *, values: bool) -> dict[str, Any]:
    """The `arguments` object of a record: the digest of their canonical JSON, their size, their values if asked.

    Arguments nested deeper than canonical JSON can write (orjson: 254 levels) are named by the digest
    of the whole request body instead (`digest_of: "body"`): the record still pins what was sent.
    """
    try:
        text = canonical(arguments)
    except orjson.JSONEncodeError:
        return {"digest": digest(body), "digest_of": "body", "bytes": len(body)}
    found: dict[str, Any] = {"digest": digest(text), "bytes": len(text)}
    if values:
        shown = redactor.redact(arguments)
        shown_text = canonical(shown)
        if len(shown_text) <= MAX_VALUE_BYTES:
            found["values"] = shown
        else:  # bounded: a clipped JSON text (redacted first, so a secret never shows in the clipped part)
            found["values"] = clip(shown_text[: MAX_VALUE_BYTES + 4].decode("utf-8", "ignore"), MAX_VALUE_BYTES)
            found["values_truncated"] = True
    return found


def outcome_fields(outcome: ResponseOutcome, decisions: Sequence[Decision], exception: str | None) -> dict[str, Any]:
    """`ok`, `error` (with its code), `refused` (by which component) or `timeout`, and the HTTP status."""
    code = outcome.error_code
    found: dict[str, Any] = {"class": "ok", "status": outcome.status, "code": code}
    refusal = next((d for d in reversed(decisions) if d.outcome in _REFUSALS), None)
    # A breaker's or the router's own time limit, or a backend's answer that says so.
    timed_out = code == ErrorCode.TIMEOUT or any(d.outcome == Outcome.TIMEOUT for d in decisions)
    if outcome.succeeded:
        pass
    elif timed_out:
        found["class"] = "timeout"
    elif refusal is not None:
        found["class"] = "refused"
        found["by"] = str(refusal.component)
    else:
        found["class"] = "error"
        if outcome.is_tool_error:
            found["tool_error"] = True
        if exception is not None:
            found["exception"] = exception
        if not outcome.complete:
            found["complete"] = False  # the client left, or the app stopped mid-answer
    return found


def _clipped(value: Any) -> Any:
    return clip(value) if type(value) is str else value


def _principal(principal: Principal) -> dict[str, Any] | None:
    # Who, never how: no token, no claims.
    if not principal.authenticated:
        return None
    return {
        "subject": _clipped(principal.subject),
        "client_id": _clipped(principal.client_id),
        "issuer": _clipped(principal.issuer),
    }


def _decisions(decisions: Sequence[Decision]) -> list[dict[str, Any]]:
    return [
        {"component": str(d.component), "outcome": str(d.outcome), **{k: _clipped(v) for k, v in d.attributes.items()}}
        for d in decisions
    ]


def operation_fields(operation: Operation, redactor: Redactor, *, values: bool) -> dict[str, Any]:
    """The fields of one `mcp.operation` record (the chain adds `seq`, `prev` and `hash`)."""
    request = operation.request
    method, target, request_id = request.method, request.target, request.id
    fields: dict[str, Any] = {
        "event": "mcp.operation",
        "ts": timestamp(operation.started),
        "principal": _principal(operation.principal),
        "backend": operation.backend,
        "path": clip(operation.path),
        "era": request.era.value,
        "method": clip(method) if method is not None else None,
        "target": clip(target) if target is not None else None,
        "request_id": _clipped(request_id),
    }
    if request.session_id is not None:
        fields["session"] = session_digest(request.session_id)
    params: Mapping[str, Any] | None = request.params
    if method in _ARGUMENT_METHODS and params is not None and "arguments" in params:
        fields["arguments"] = arguments_fields(params["arguments"], request.body, redactor, values=values)
    fields["decisions"] = _decisions(operation.decisions)
    fields["outcome"] = operation.outcome
    fields["duration_ms"] = round(operation.duration * 1000, 3)
    if operation.trace_id:
        fields["trace_id"] = f"{operation.trace_id:032x}"
        fields["span_id"] = f"{operation.span_id:016x}"
    return fields


def timestamp(seconds: float) -> str:
    """UTC, ISO 8601, microseconds: `2026-12-04T23:40:01.123456Z`."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
