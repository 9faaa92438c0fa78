"""The ids the aggregate gives a backend's requests to a legacy client: routable by any instance.

A backend asks a 2025-11-25 client something (`elicitation/create`, `sampling/createMessage`, an
approval) on a stream the aggregate relays; the aggregate renames the request's id so that ids of
different backends cannot collide, and routes the client's answer back by it. The client's answer is a
POST of its own, which may reach another worker or instance than the one that relayed the question
(its session continued there through a sealed session handle). So the id says where it goes:

    mcp-router-<n>.<base64url of orjson [backend name, the backend's own id]>

`<n>` keeps ids unique in the process that minted them (a backend may reuse its ids); the rest names
the backend and its id, so any instance continuing the session delivers the answer into the client's
own session at that backend. Nothing secret is in it: the backend's name is public in the aggregate's
tool names, and its id is only a handle on a question the backend put to this very client; an answer
with a made-up id still reaches only the client's own session (where the backend ignores an id it did
not ask with, and the approval layer keys its questions by 128 random bits and the principal).

>>> public = answer_id(7, "jira", 3)
>>> public
'mcp-router-7.WyJqaXJhIiwzXQ'
>>> answer_target(public), answer_target("mcp-router-7"), answer_target("mcp-router-7.!!")
(('jira', 3), None, None)
"""

from __future__ import annotations

import base64
import binascii

import orjson

from mcp_middleware.core.errors import RequestId

__all__ = ["answer_id", "answer_target"]

_PREFIX = "mcp-router-"
_MAX_ID = 512
"""Longest public id: a backend's id too long to carry (it chose it) keeps a process-local id only."""


def answer_id(serial: int, server: str, backend_id: RequestId) -> str:
    """The public id of `server`'s request `backend_id`, the `serial`-th of this client's in this process."""
    carried = base64.urlsafe_b64encode(orjson.dumps([server, backend_id])).rstrip(b"=").decode("ascii")
    public = f"{_PREFIX}{serial}.{carried}"
    return public if len(public) <= _MAX_ID else f"{_PREFIX}{serial}"


def answer_target(public: str) -> tuple[str, RequestId] | None:
    """(backend name, the backend's own id) an :func:`answer_id` names, or None (another id, or garbled)."""
    if not public.startswith(_PREFIX) or len(public) > _MAX_ID:
        return None
    _, dot, carried = public.partition(".")
    if not dot:
        return None
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(carried + "=" * (-len(carried) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(decoded, list) or len(decoded) != 2:
        return None
    server, backend_id = decoded
    if not isinstance(server, str) or isinstance(backend_id, bool) or not isinstance(backend_id, str | int):
        return None
    return server, backend_id
