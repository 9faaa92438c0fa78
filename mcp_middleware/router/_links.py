"""One long-lived, supervised MCP client session per backend, shared by every aggregate request.

The session is opened and closed by its own task (anyio cancel scopes must be left
by the task that entered them), started on first use. A session that breaks (the
process died, the connection failed, a health ping went unanswered) is closed and
opened again with exponential backoff; while a backend is backing off, callers are
told at once instead of waiting (no repeated waits on a dead backend). After a
reopen the backend's lists are fetched anew (`on_change`), because a restarted
server may offer different tools.

An operator reads each outage as two WARNING lines naming the backend by its server name:
one when the session is lost (or cannot be opened), one when it is back ("restarted");
the retries in between are logged at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp import Client, MCPError
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcp_middleware.core.errors import McpMiddlewareError

from .backends import Backend, StdioBackend

__all__ = ["BackendLink", "BackendUnavailable"]

CONNECTION_CLOSED = -32000
"""The SDK's code for a request whose connection went away."""

logger = logging.getLogger("mcp_middleware.router")

ChangeHook = Callable[[str, frozenset[str]], None]
"""`(server, kinds)`: a backend's lists of these kinds ("tools", "prompts", "resources") changed."""

UpdateHook = Callable[[str, str], None]
"""`(server, uri)`: a resource the router subscribed to at this backend changed."""

_ALL_KINDS = frozenset({"tools", "prompts", "resources"})
_NOTIFICATION_KINDS: dict[type[Any], str] = {
    types.ToolListChangedNotification: "tools",
    types.PromptListChangedNotification: "prompts",
    types.ResourceListChangedNotification: "resources",
}
_EVENT_KINDS: dict[type[Any], str] = {
    ToolsListChanged: "tools",
    PromptsListChanged: "prompts",
    ResourcesListChanged: "resources",
}


class BackendUnavailable(McpMiddlewareError):
    """The backend cannot be reached now; `retry_in` seconds until the next attempt (0 = unknown)."""

    def __init__(self, server: str, reason: str, retry_in: float = 0.0) -> None:
        super().__init__(f"{server}: {reason}")
        self.server = server
        self.reason = reason
        self.retry_in = retry_in


class BackendLink:
    """The aggregate's session to one backend.

    >>> # link = BackendLink("github", backend, group=task_group, on_change=hook)
    >>> # client = await link.client()   # connected mcp.Client, shared
    """

    def __init__(
        self,
        server: str,
        backend: Backend,
        *,
        group: anyio.abc.TaskGroup,
        on_change: ChangeHook,
        client_options: Callable[[str], dict[str, Any]] | None = None,
        mode: str | None = None,
    ) -> None:
        self.server = server
        self.backend = backend
        if isinstance(backend, StdioBackend) and backend.name is None:
            backend.name = server  # its stderr lines carry the name the operator configured
        self._group = group
        self._hooks: list[ChangeHook] = [on_change]
        self._update_hooks: list[UpdateHook] = []
        self._client_options = client_options
        self.mode = mode
        self._client: Client | None = None
        self._started = False
        self._changed = anyio.Event()
        self._broken = anyio.Event()
        self._failure: str | None = None
        self._retry_at = 0.0
        self._closed = False
        self._outage_logged = False
        """A WARNING said this backend is down; the next session that opens says it is back."""
        self.restarts = 0

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def client(self, patience: float | None = None) -> Client:
        """The connected session; raises :class:`BackendUnavailable` when it is down or backing off."""
        client = self._client
        if client is not None:
            return client
        deadline = anyio.current_time() + (patience if patience is not None else self.backend.timeout)
        while True:
            if self._client is not None:
                return self._client
            if self._failure is not None:
                raise BackendUnavailable(self.server, self._failure, max(0.0, self._retry_at - time.monotonic()))
            if not self._started:  # first use, or the last session ended: open one
                self._started = True
                self._group.start_soon(self._supervise)
            changed = self._changed
            with anyio.move_on_after(deadline - anyio.current_time()):
                await changed.wait()
                continue
            raise BackendUnavailable(self.server, "timed out connecting")

    def subscribe(self, hook: ChangeHook) -> None:
        """Also tell `hook` when this backend's lists change (a second aggregate sharing the session)."""
        self._hooks.append(hook)

    def on_resource_updated(self, hook: UpdateHook) -> None:
        """Call `hook(server, uri)` when the backend says a subscribed resource changed."""
        self._update_hooks.append(hook)

    def _on_change(self, server: str, kinds: frozenset[str]) -> None:
        for hook in self._hooks:
            hook(server, kinds)

    def mark_broken(self, reason: str) -> None:
        """A call found the session dead: close it; a new one is opened at once (backoff if that fails)."""
        if self._client is not None and not self._broken.is_set():
            self._down(f"session broken: {reason}")
            self._broken.set()

    def _down(self, reason: str) -> None:
        """Log an outage once (a broken session and its failing reconnects are one outage)."""
        if self._outage_logged:
            logger.debug("backend %r still unavailable: %s", self.server, reason)
            return
        self._outage_logged = True
        logger.warning("backend %r unavailable: %s", self.server, reason)

    def close(self) -> None:
        self._closed = True
        self._broken.set()

    def _transition(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def _supervise(self) -> None:
        backend = self.backend
        delay = getattr(backend, "restart_delay", 0.5)
        ceiling = getattr(backend, "max_restart_delay", 30.0)
        first = True
        while not self._closed:
            self._broken = anyio.Event()
            established = False
            try:
                options = self._client_options(self.server) if self._client_options else {}
                options.setdefault("message_handler", self._on_message)
                if self.mode is not None:
                    options["mode"] = self.mode
                async with backend.open_client(**options) as client:
                    self._client, self._failure = client, None
                    established = True
                    delay = getattr(backend, "restart_delay", 0.5)
                    self._transition()
                    if not first:
                        self.restarts += 1
                        logger.warning("backend %r restarted (restart %d)", self.server, self.restarts)
                        self._on_change(self.server, _ALL_KINDS)
                    elif self._outage_logged:  # a backend reconnected on demand (unsupervised)
                        logger.warning("backend %r reachable again", self.server)
                    self._outage_logged = False
                    first = False
                    async with anyio.create_task_group() as watchers:
                        watchers.start_soon(self._listen, client)
                        if backend.supervised:
                            watchers.start_soon(self._health, client)
                        await self._broken.wait()
                        watchers.cancel_scope.cancel()
            except Exception as exc:  # a failed connect or a session that died: back off, then retry
                self._failure = short(exc)
                self._down(self._failure)
            finally:
                self._client = None
            if self._closed:
                break
            if established and self._failure is None:
                # A session that worked and broke: open a new one at once (backoff is for failing connects).
                self._transition()
                if not backend.supervised:
                    self._started = False
                    return
                continue
            if self._failure is None:
                self._failure = "session closed"
            self._retry_at = time.monotonic() + delay
            self._transition()
            await anyio.sleep(delay)
            delay = min(delay * 2, ceiling)
            if not backend.supervised:
                # Reconnect only when someone asks again, so an unused dead backend costs nothing.
                self._started = False
                self._failure = None
                self._transition()
                return

    async def _health(self, client: Client) -> None:
        interval = getattr(self.backend, "health_interval", 5.0)
        while True:
            await anyio.sleep(interval)
            try:
                with anyio.fail_after(self.backend.timeout):
                    if _is_legacy(client):  # the session's ping: the Client's warns it is gone from 2026-07-28
                        await client.session.send_ping()
                    else:  # ping is gone in 2026-07-28 (and discover is answered locally): a cheap real request
                        await client.session.list_prompts()
            except MCPError as exc:
                if exc.code != CONNECTION_CLOSED:
                    continue  # it answered, if only with an error: alive
                self.mark_broken(f"health check failed: {short(exc)}")
                return
            except Exception as exc:
                self.mark_broken(f"health check failed: {short(exc)}")
                return

    async def _listen(self, client: Client) -> None:
        """Modern backends send list_changed only on a `subscriptions/listen` stream: hold one open."""
        if _is_legacy(client):
            return  # legacy: notifications arrive through the message handler
        capabilities = client.server_capabilities
        tools = bool(capabilities.tools and capabilities.tools.list_changed)
        prompts = bool(capabilities.prompts and capabilities.prompts.list_changed)
        resources = bool(capabilities.resources and capabilities.resources.list_changed)
        if not (tools or prompts or resources):
            return
        try:
            async with client.listen(
                tools_list_changed=tools, prompts_list_changed=prompts, resources_list_changed=resources
            ) as subscription:
                async for event in subscription:
                    kind = _EVENT_KINDS.get(type(event))
                    if kind is not None:
                        self._on_change(self.server, frozenset({kind}))
        except ListenNotSupportedError:
            return
        except SubscriptionLost as exc:  # the stream broke: the backend (process) is most likely gone
            self.mark_broken(f"change subscription lost: {short(exc)}")
        except Exception as exc:
            logger.info("backend %s: no change subscription (%s)", self.server, short(exc))

    async def _on_message(self, message: Any) -> None:
        kind = _NOTIFICATION_KINDS.get(type(message))
        if kind is not None:
            self._on_change(self.server, frozenset({kind}))
        elif isinstance(message, types.ResourceUpdatedNotification):
            for hook in self._update_hooks:
                hook(self.server, message.params.uri)
        elif isinstance(message, Exception):
            logger.debug("backend %s transport error: %s", self.server, message)


def _is_legacy(client: Client) -> bool:
    return client.protocol_version not in MODERN_PROTOCOL_VERSIONS


def short(exc: BaseException) -> str:
    """A failure in one line for logs and answers: the first of a group, at most 200 characters."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return short(exc.exceptions[0])
    return (str(exc) or type(exc).__name__)[:200]


def connection_lost(exc: MCPError) -> bool:
    """The whole session is gone (not just this request's stream, which the SDK reports with the same code)."""
    return exc.code == CONNECTION_CLOSED and exc.message == "Connection closed"
