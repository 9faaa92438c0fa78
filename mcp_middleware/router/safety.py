"""When a request may be sent again elsewhere: the one rule failover and fallback routes share.

A request that failed on one replica (or on a route's primary) **before any byte reached the
client** may be retried on another only when running it twice cannot hurt:

* reads and lists: `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`,
  `resources/read`, `prompts/get`, `completion/complete`, `ping`, `server/discover`;
* a `tools/call` of a tool its backend marks `readOnlyHint: true` or `idempotentHint: true`
  in its `tools/list` annotations;
* a `tools/call` the operator allows explicitly (a selector such as `tools/call:search_*`).

Anything else fails fast, and the answer says whether the call may have run
(:func:`failure_data`): a client can then decide for itself whether to call again.

>>> retry_safe("tools/list")
True
>>> retry_safe("tools/call", annotations={"readOnlyHint": True})
True
>>> retry_safe("tools/call", annotations={"destructiveHint": True})
False
>>> retry_safe("tools/call", annotations={"readOnlyHint": "yes"})  # not a boolean: not a promise
False
>>> failure_data("search", may_have_run=True)
{'backend': 'search', 'mayHaveRun': True}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAY_HAVE_RUN", "SAFE_METHODS", "failure_data", "retry_safe"]

SAFE_METHODS: Final = frozenset(
    {
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/get",
        "completion/complete",
        "ping",
        "server/discover",
    }
)
"""Methods that read: sending one twice changes nothing on the server."""

MAY_HAVE_RUN: Final = "mayHaveRun"
"""The key in a failure's JSON-RPC `data` that says whether the request may have run on the backend."""

_SAFE_HINTS: Final = ("readOnlyHint", "idempotentHint")


def retry_safe(method: str, *, annotations: Mapping[str, Any] | None = None, allowed: bool = False) -> bool:
    """Whether a request that failed before any byte reached the client may be sent to another backend.

    `annotations` are the tool's annotations as its backend lists them (only for `tools/call`);
    `allowed` is the operator's explicit permission for this call (a configured selector matched).
    Hints count only when they are the JSON boolean `true`: annotations are the backend's claims,
    and anything else is no promise.
    """
    if method in SAFE_METHODS:
        return True
    if method != "tools/call":
        return False
    if allowed:
        return True
    if annotations is None:
        return False
    return any(annotations.get(hint) is True for hint in _SAFE_HINTS)


def failure_data(backend: str, *, may_have_run: bool) -> dict[str, Any]:
    """The JSON-RPC error `data` of a request that no backend could serve.

    It names the backend (never a URL or an OS error: those are the operator's, in the log) and
    says whether the request may have run, so a client knows whether calling again is safe.
    """
    return {"backend": backend, MAY_HAVE_RUN: may_have_run}
