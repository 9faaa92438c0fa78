"""`ArgumentValidationMiddleware`: `tools/call` arguments checked against the tool's own `inputSchema`.

The schemas are learned from the `tools/list` answers that pass through (the list result is
read as the list filter reads it: only that one message is held, until it is complete). A call
whose arguments do not fit is answered -32602 with the validator's JSON path and message before
the backend runs. A call to a tool not seen yet first lists the backend's tools once (`fetch.py`);
a tool whose schema is still unknown passes (the backend validates), recorded as `arguments: bypass`.
The backend's `tools/list_changed` makes the schemas be learned again before the next call (`changes.py`).

Validators are `jsonschema` (Draft 2020-12, MCP's dialect; the `[policy]` extra), compiled once
per schema version (a digest of the schema) in a bounded LRU.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    Component,
    CoreConfig,
    JsonRpcCode,
    McpRequest,
    Outcome,
    RequestKind,
    clip,
    read_request,
    record_decision,
    send_error,
)
from mcp_middleware.core.list_filter import ListFilter

from .catalog import KnownTool, ToolCatalog
from .changes import watch_changes
from .fetch import fetcher_of

__all__ = ["ArgumentValidationMiddleware"]

logger = logging.getLogger("mcp_middleware.policy")

_MAX_MESSAGE = 300
_ERRORS_WEIGHED = 16
"""At most this many errors are looked at to choose the one reported (bounded work for a hostile call)."""


def _jsonschema() -> Any:
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("argument validation needs jsonschema: pip install 'mcp-middleware[policy]'") from None
    return jsonschema


class ArgumentValidationMiddleware:
    """Answer `tools/call` requests whose arguments break the tool's `inputSchema` with -32602.

    - `catalog`: where tool schemas are kept (share the policy middleware's to learn once);
    - `max_validators`: compiled validators kept (one per schema version), least recently used dropped;
    - `fetch_unknown`: a call to a tool not seen in a list yet first lists the backend's tools once
      (through the rest of the stack; see `fetch.py`).

    >>> from mcp.server.mcpserver import MCPServer
    >>> app = ArgumentValidationMiddleware(MCPServer("demo").streamable_http_app())
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        catalog: ToolCatalog | None = None,
        max_validators: int = 1024,
        fetch_unknown: bool = True,
        config: CoreConfig = DEFAULT_CONFIG,
    ) -> None:
        self._jsonschema = _jsonschema()
        self.fetch_unknown = fetch_unknown
        self.app = app
        self.catalog = catalog if catalog is not None else ToolCatalog()
        self.config = config
        self._validators: LRUCache[str, Any] = LRUCache(maxsize=max_validators)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        if request.kind is RequestKind.STREAM or request.method == "subscriptions/listen":
            return await self.app(scope, receive, watch_changes(scope, send, self.catalog))
        if request.kind is not RequestKind.REQUEST:
            return await self.app(scope, receive, send)
        if request.method == "tools/call":
            target = request.target
            if self.fetch_unknown and target is not None and self.catalog.needs_list(target):
                await fetcher_of(self.catalog).ensure(self.app, scope, target)
            known = self.catalog.get(target) if target is not None else None
            if known is None or known.input_schema is None:
                record_decision(scope, Component.ARGUMENTS, Outcome.BYPASS, reason="schema_unknown")
            else:
                problem = self.check(known, (request.params or {}).get("arguments"))
                if problem is not None:
                    await self._refuse(scope, send, request, problem)
                    return
                record_decision(scope, Component.ARGUMENTS, Outcome.ALLOW)
        elif request.method == "tools/list":
            send = self._learning(send, request)
        await self.app(scope, receive, send)

    def lists_changed(self, kinds: frozenset[str]) -> None:
        """The backend said these lists changed (the router's session heard it): new tools, new schemas."""
        if "tools" in kinds:
            self.catalog.forget()

    def check(self, known: KnownTool, arguments: Any) -> dict[str, str] | None:
        """`None` if `arguments` fit the tool's schema, else `{"path": …, "message": …}` (bounded)."""
        validator = self._validator(known)
        if validator is None:
            return None
        instance = {} if arguments is None else arguments  # absent arguments are an empty object (the SDK's view)
        try:
            errors = list(itertools.islice(validator.iter_errors(instance), _ERRORS_WEIGHED))
        except RecursionError:
            return {"path": "$", "message": "arguments are nested too deeply to validate"}
        if not errors:
            return None
        best = self._jsonschema.exceptions.best_match(errors)
        return {"path": clip(best.json_path, 200), "message": clip(best.message, _MAX_MESSAGE)}

    def _validator(self, known: KnownTool) -> Any:
        digest = known.schema_digest
        assert digest is not None and known.input_schema is not None
        validator = self._validators.get(digest)
        if validator is None:
            schema = known.input_schema
            cls = self._jsonschema.validators.validator_for(schema, default=self._jsonschema.Draft202012Validator)
            try:
                cls.check_schema(schema)
            except self._jsonschema.SchemaError as exc:
                # The backend's own schema is broken: nothing to hold the caller to (the backend decides).
                logger.warning("tool inputSchema is not a valid JSON Schema, calls pass unchecked: %s", exc.message)
                validator = False
            else:
                validator = cls(schema, format_checker=None)
            self._validators[digest] = validator
        return validator or None

    def _learning(self, send: Send, request: McpRequest) -> Send:
        catalog = self.catalog
        generation = catalog.generation  # a list_changed while this answer streams: what it lists is old

        def learn(method: str, target: str, item: Mapping[str, Any]) -> bool:
            catalog.learn_one(item, generation=generation)
            return True

        assert request.method is not None
        return ListFilter(
            send,
            method=request.method,
            request_id=request.id,
            item_allowed=learn,
            max_bytes=self.config.max_inspect_bytes,
            logger=logger,
        )

    async def _refuse(self, scope: Scope, send: Send, request: McpRequest, problem: dict[str, str]) -> None:
        record_decision(scope, Component.ARGUMENTS, Outcome.REJECTED, path=problem["path"], status=200)
        await send_error(
            send,
            status=200,  # as the SDK answers invalid params: a JSON-RPC error, not an HTTP one
            code=JsonRpcCode.INVALID_PARAMS,
            message=f"Invalid arguments for tool {clip(request.target or '', 64)}: {problem['message']}",
            request_id=request.id,
            data=problem,
        )
