"""A sealed aggregate session's backend sessions: opened at `initialize`, sealed, continued on any instance.

With the gateway's sealed session handles (`[gateway] session_key`) the aggregate's legacy
`initialize` opens the client's sessions at its **remote** members (URL backends, pools of URLs)
at once, concurrently, before the answer leaves: each backend's session id (and a pool's replica)
then goes into the handle the client receives. Another instance (or this one after a restart)
re-opens the aggregate session from that handle and *continues* those backend sessions: the
backend sees the same `Mcp-Session-Id`, with no new `initialize`, and keeps its per-session state.

Bounds and choices:

* at most :data:`MAX_SEALED_BACKENDS` backends are opened eagerly and sealed (the first remote
  members in configuration order): a handle stays under 512 bytes; the others open lazily on
  first use, as they always did, on each instance that serves the session;
* each eager opening waits its backend's `timeout`, at most :data:`EAGER_PATIENCE` seconds; a
  backend that is down, slow or refuses is left out of the handle and opened lazily (the
  `initialize` itself never fails for it);
* in-process and stdio members stay lazy: they are per process, and re-opened anyway;
* a backend that answers 404 for a session it lost (restarted) gets a new session for this client
  on this instance, from the session's `initialize` params, and the request is sent once more: a
  404 comes before the backend ran anything, so the request never ran twice
  (:mod:`.safety`'s question is whether it *may have run*: it did not). If the new session cannot
  be opened the client is told so with a 502 saying it did not run. The handle cannot change
  (a client keeps the id `initialize` gave it), so every other instance does the same on its
  first request there;
* sealed backend sessions are never ended when this instance forgets the client session (least
  recently used): other instances may still be serving it. The client's DELETE ends them.
* a session opened ahead of use, or continued, asks for the backend's standalone stream on its first
  use here (an unused backend holds no connection; the backend gives its one stream to the first
  instance that asks).

A handle's backend ids reach only the backend they were sealed with: each request to a backend
carries a ticket (:class:`~.sessions.SealedSession`) vouching for that backend's id and replica only,
and each sealed id is bound to the server that issued it (:mod:`.origins`): after a reload (or on an
instance with a newer config) that points a name at another server, that member's session is opened
anew and the old id is never sent to the new server; the others are continued. A pool's session follows
its replica to wherever a reordered list now has it, and is opened anew when that replica is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import Component, ErrorCode, McpRequest, Outcome, RequestId, record_decision, send_error

from .backends import Backend, HttpBackend
from .origins import identity_of, place_of
from .rewrite import AnswerRewriter
from .safety import failure_data
from .sessions import SEALED_SESSION_SCOPE_KEY, BackendSession, ClientSession, SealedSession, sealed_session

if TYPE_CHECKING:
    from .relay import Relay
    from .relay_sessions import BackendSessions

__all__ = [
    "EAGER_PATIENCE",
    "MAX_SEALED_BACKENDS",
    "LostSession",
    "carry_ticket",
    "continuable",
    "resend_in_new_session",
    "seal_backends",
    "watch_lost",
]

logger = logging.getLogger("mcp_middleware.router")

MAX_SEALED_BACKENDS = 10
"""Backend sessions a handle carries at most (ten 16-byte ids keep a handle under 512 bytes)."""
EAGER_PATIENCE = 5.0
"""Seconds an `initialize` waits at most for one backend's session (less when the backend's timeout is)."""


def continuable(backend: Backend) -> bool:
    """Whether another instance can continue a session opened at `backend`: it lives outside this process."""
    if isinstance(backend, HttpBackend):
        return True
    replicas: Sequence[Backend] = getattr(backend, "replicas", ())  # a pool's (not imported: it imports us)
    return bool(replicas) and all(isinstance(replica, HttpBackend) for replica in replicas)


def carry_ticket(scope: Scope, child: Scope, backend: BackendSession | None) -> None:
    """Give `child` (a request into one backend's stack) a sealed-session ticket for that backend's session
    only (never the aggregate's id): a handle's word reaches the backend it was sealed for and no other."""
    outer = sealed_session(scope)
    if outer is None:
        return
    if backend is None:  # opening a session: the stack notes on the ticket which server (replica) took it
        child[SEALED_SESSION_SCOPE_KEY] = SealedSession(fingerprints=outer.fingerprints)
        return
    owner = outer.owner if outer.owner is not None else outer.caller
    child[SEALED_SESSION_SCOPE_KEY] = SealedSession(
        backend.id, owner, backend.replica, origin=backend.origin, fingerprints=outer.fingerprints
    )


async def seal_backends(
    relay: BackendSessions, scope: Scope, session: ClientSession, members: Mapping[str, Backend]
) -> None:
    """At the aggregate's `initialize` with a sealed handle: continue the sessions the handle carries, or
    open the remote members' sessions now and leave their ids on the ticket, to be sealed."""
    ticket = sealed_session(scope)
    if ticket is None:
        return
    if ticket.backends:
        _adopt(relay, session, ticket, members)
    elif ticket.session_id is None and ticket.owner is None:  # a new session (a re-opened one keeps its handle)
        await _open_eagerly(relay, scope, session, ticket, members)


async def _open_eagerly(
    relay: BackendSessions,
    scope: Scope,
    session: ClientSession,
    ticket: SealedSession,
    members: Mapping[str, Backend],
) -> None:
    remote = [name for name, backend in members.items() if name in relay.stacks and continuable(backend)]
    chosen = remote[:MAX_SEALED_BACKENDS]

    async def open_one(server: str) -> None:
        with anyio.move_on_after(min(members[server].timeout, EAGER_PATIENCE)):
            try:
                await relay._backend_session(scope, session, server, stream=False)
            except Exception as exc:  # down or refusing: opened on first use instead, the initialize goes on
                logger.info("backend %s: no session at initialize (opened on first use): %r", server, exc)

    async with anyio.create_task_group() as group:
        for server in chosen:
            group.start_soon(open_one, server)
    opened = [(server, session.backends[server]) for server in chosen if server in session.backends]
    sealed = [(server, backend) for server, backend in opened if backend.id is not None]
    for _, backend in sealed:
        backend.sealed = True
    ticket.backends = tuple((server, backend.id) for server, backend in sealed if backend.id is not None)
    ticket.replicas = tuple((server, backend.replica) for server, backend in sealed if backend.replica is not None)
    ticket.origins = tuple((server, backend.origin) for server, backend in sealed if backend.origin is not None)


def _adopt(
    relay: BackendSessions,
    session: ClientSession,
    ticket: SealedSession,
    members: Mapping[str, Backend],
) -> None:
    """Take the handle's backend sessions as this client's own here: no `initialize` at the backend. Only
    those issued by the server the name points at now: a session of a server that moved (a reload, another
    instance's config) is never sent to the new one, which opens the client's own on first use."""
    replicas = dict(ticket.replicas)
    origins = dict(ticket.origins)
    version = str(session.initialize.get("protocolVersion", ""))
    for server, backend_id in ticket.backends:
        member = members.get(server)
        if member is None or server not in relay.stacks or not continuable(member):
            continue  # removed or changed since (a reload): opened on first use
        replica = replicas.get(server)
        if replica is not None and not ticket.fingerprints.match(origins.get(server), identity_of(member, replica)):
            at = place_of(ticket.fingerprints, origins.get(server), getattr(member, "replicas", ()))
            replica = str(at) if at is not None else None  # a pool's list reordered: the session follows its replica
        if not ticket.fingerprints.match(origins.get(server), identity_of(member, replica)):
            continue  # issued by another server than the one this name (or that replica) is now: opened anew
        # Its standalone stream is asked for on first use here (refused, 409, while another instance holds it).
        session.backends[server] = BackendSession(
            backend_id, version, replica=replica, sealed=True, stream_pending=True, origin=origins[server]
        )


class LostSession:
    """A `send` that holds back a backend's 404 (the session is gone there) instead of passing it on."""

    __slots__ = ("lost", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.lost = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 404:
            self.lost = True
        if not self.lost:
            await self.send(message)


def watch_lost(scope: Scope, backend: BackendSession | None, send: Send) -> LostSession | None:
    """A :class:`LostSession` around `send` when a lost backend session can be opened again (sealed handles)."""
    if backend is None or backend.id is None or SEALED_SESSION_SCOPE_KEY not in scope:
        return None
    return LostSession(send)


async def resend_in_new_session(
    relay: Relay,
    scope: Scope,
    receive: Receive,
    send: Send,
    session: ClientSession,
    lost: BackendSession,
    target: tuple[str, str | None],
    view: McpRequest,
) -> None:
    """The backend (`target`: its name and `Mcp-Name`) answered 404 for the client's session `lost`: open a
    new one and send the request `view` once more (it did not run), or answer 502 saying it did not run."""
    server, header_name = target
    backend = await _reopen(relay, scope, send, session, server, lost, view.id)
    if backend is None:
        return
    rewriter = AnswerRewriter(
        send, server=server, session=session, public_uri=relay._public_uri(server), max_bytes=relay.max_inspect_bytes
    )
    view = view._replace(session_id=backend.id)
    await relay._call(scope, receive, rewriter, server, view.body, backend, header_name, view)


async def _reopen(
    relay: BackendSessions,
    scope: Scope,
    send: Send,
    session: ClientSession,
    server: str,
    lost: BackendSession,
    request_id: RequestId | None,
) -> BackendSession | None:
    """A new session at `server` for a client whose session there is gone; None when answered (502)."""
    if session.backends.get(server) is lost:
        del session.backends[server]
    backend: BackendSession | None = None
    with anyio.move_on_after(EAGER_PATIENCE * 2):
        try:
            backend = await relay._backend_session(scope, session, server)
        except Exception as exc:
            logger.info("backend %s lost %s's session and would not open another: %r", server, session.id[:8], exc)
    if backend is None or backend.id is None:
        await send_error(
            send,
            status=502,
            code=ErrorCode.BAD_GATEWAY,
            message=f"Backend {server} lost this session and did not open another",
            request_id=request_id,
            data=failure_data(server, may_have_run=False),
        )
        return None
    record_decision(scope, Component.SESSION, Outcome.REOPENED, server=server)
    return backend
