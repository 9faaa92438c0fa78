"""`CurationMiddleware`: a backend's curated surface, as the outermost layer of its stack.

Requests come in with public names and leave with the backend's own: a renamed tool is called by
its backend name, a hidden or renamed-away one is refused before the backend (or any policy of its
stack) sees it. List answers are rewritten as they stream (the auth list filter's machinery: a JSON
body held until complete, only the result's SSE event held until its blank line, a bound on what is
inspected), every page of a paginated list alike. The aggregate routes into this same layer, so a
tool is named, hidden and refused the same way at `/mcp/{name}` and at `/mcp`.

Renamed resource prefixes are renamed both ways: URIs a client names (reads, subscriptions, a
listen filter, a completion's template) go to the backend in its own spelling, and the backend's
URIs coming back (a read's contents, `resources/updated` on the GET or listen stream, the listen
acknowledgement) are rewritten to the public spelling as they pass (the relay's rewriter: a JSON
answer to a renamed read is held until complete, within `max_inspect_bytes`; other reads stream).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from mcp.shared.inbound import encode_header_value
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    Component,
    McpRequest,
    Outcome,
    RequestKind,
    read_request,
    record_decision,
    replay,
    send_error,
)
from mcp_middleware.core.kernel import EVERY_PATH
from mcp_middleware.core.list_filter import ListFilter, loads_as_client
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE
from mcp_middleware.core.request import REQUEST_SCOPE_KEY

from .curation import Curation
from .rewrite import AnswerRewriter

__all__ = ["CURATED_LISTS", "CurationMiddleware"]

CURATED_LISTS: Mapping[str, str] = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
"""List method → the result key holding its items."""
_URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
_LISTEN = "subscriptions/listen"


class CurationMiddleware:
    """Apply a :class:`~mcp_middleware.router.curation.Curation` to one backend (pure ASGI).

    >>> from mcp_middleware.router.curation import Curation, ItemRules
    >>> # app = CurationMiddleware(backend_app, curation=Curation(tools=ItemRules(deny=("*_admin",))))
    """

    def __init__(self, app: ASGIApp, *, curation: Curation, max_inspect_bytes: int = DEFAULT_MAX_BODY_SIZE) -> None:
        self.app = app
        self.curation = curation
        self.max_inspect_bytes = max_inspect_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request, receive = await read_request(scope, receive, send, EVERY_PATH)
        if receive is ANSWERED:
            return
        renames = bool(self.curation.resources.rename)
        if request is not None and request.kind is RequestKind.STREAM and renames:
            await self.app(scope, receive, self._renaming(send))  # `resources/updated` in the public spelling
            return
        if request is None or request.kind is not RequestKind.REQUEST or request.method is None:
            await self.app(scope, receive, send)
            return
        method = request.method
        if method in CURATED_LISTS and self._curates(CURATED_LISTS[method]):
            curated = CuratedList(
                send,
                method=method,
                request_id=request.id,
                curation=self.curation,
                max_bytes=self.max_inspect_bytes,
            )
            await self.app(scope, receive, curated)
            return
        params = request.params or {}
        rewritten: dict[str, Any] | None = None
        header_name: str | None = None
        if method in ("tools/call", "prompts/get"):
            noun = "tool" if method == "tools/call" else "prompt"
            name = params.get("name")
            if isinstance(name, str):
                backend = self.curation.rules(noun).backend(name)
                if backend is None:
                    await self._refuse(scope, send, request, noun, name, self.curation.rules(noun).refusal_rule(name))
                    return
                if backend != name:
                    rewritten, header_name = {**params, "name": backend}, backend
        elif method in _URI_METHODS:
            uri = params.get("uri")
            if isinstance(uri, str):
                backend_uri, decision = self.curation.resources.decide_public(uri)
                if not decision.visible or backend_uri is None:
                    await self._refuse(scope, send, request, "resource", uri, decision.rule)
                    return
                if backend_uri != uri:
                    rewritten, header_name = {**params, "uri": backend_uri}, backend_uri
                    if method == "resources/read":  # only a renamed read is held to be renamed back
                        send = self._renaming(send)
        elif method == _LISTEN:
            rewritten, refused = self._listen(params)
            if refused is not None:
                await self._refuse(scope, send, request, *refused)
                return
            if renames:
                send = self._renaming(send)
        elif method == "completion/complete":
            rewritten, refused = self._completion(params)
            if refused is not None:
                await self._refuse(scope, send, request, *refused)
                return
        if rewritten is None:
            await self.app(scope, receive, send)
            return
        body = _dumps({"jsonrpc": "2.0", "id": request.id, "method": method, "params": rewritten})
        child = dict(scope)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"mcp-name")]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        if header_name is not None and any(k == b"mcp-name" for k, _ in scope["headers"]):
            headers.append((b"mcp-name", encode_header_value(header_name).encode("latin-1")))
        child["headers"] = headers
        child[REQUEST_SCOPE_KEY] = request._replace(params=rewritten, body=body)
        await self.app(child, replay(body, receive), send)

    def _renaming(self, send: Send) -> Send:
        """`send` with the backend's URIs rewritten to their public spelling (the session header kept)."""
        return AnswerRewriter(
            send,
            server="",
            public_uri=self.curation.resources.public_uri,
            max_bytes=self.max_inspect_bytes,
            keep_session=True,
        )

    def _listen(self, params: Mapping[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, str, str] | None]:
        """A listen filter's resource URIs: each judged as a subscription is, renamed back to the backend's."""
        wanted = params.get("notifications")
        uris = wanted.get("resourceSubscriptions") if isinstance(wanted, dict) else None
        if not isinstance(wanted, dict) or not isinstance(uris, list) or not self.curation.resources.active:
            return None, None
        backend_uris: list[Any] = []
        for uri in uris:
            if not isinstance(uri, str):
                backend_uris.append(uri)  # not ours to judge: the backend answers a malformed filter
                continue
            backend_uri, decision = self.curation.resources.decide_public(uri)
            if not decision.visible or backend_uri is None:
                return None, ("resource", uri, decision.rule)
            backend_uris.append(backend_uri)
        if backend_uris == uris:
            return None, None
        return {**params, "notifications": {**wanted, "resourceSubscriptions": backend_uris}}, None

    def _curates(self, key: str) -> bool:
        """Whether lists of this kind change at all (else the answer passes untouched)."""
        if key == "tools":
            return self.curation.tools.active
        if key == "prompts":
            return self.curation.prompts.active
        return self.curation.resources.active

    def _completion(self, params: Mapping[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, str, str] | None]:
        """A completion's reference: a prompt renamed back or refused, a template judged by its URI."""
        ref = params.get("ref")
        if not isinstance(ref, dict):
            return None, None
        if ref.get("type") == "ref/prompt" and isinstance(name := ref.get("name"), str):
            backend = self.curation.prompts.backend(name)
            if backend is None:
                return None, ("prompt", name, self.curation.prompts.refusal_rule(name))
            return ({**params, "ref": {**ref, "name": backend}}, None) if backend != name else (None, None)
        if ref.get("type") == "ref/resource" and isinstance(uri := ref.get("uri"), str):
            backend_uri, decision = self.curation.resources.decide_public(uri, template=True)
            if not decision.visible or backend_uri is None:
                return None, ("resource", uri, decision.rule)
            return ({**params, "ref": {**ref, "uri": backend_uri}}, None) if backend_uri != uri else (None, None)
        return None, None

    async def _refuse(self, scope: Scope, send: Send, request: McpRequest, noun: str, label: str, rule: str) -> None:
        status, code, message, data = self.curation.refusal_error(noun, label, rule)
        record_decision(scope, Component.ROUTER, Outcome.DENY, rule=rule, method=request.method or "")
        await send_error(send, status=status, code=code, message=message, request_id=request.id, data=data)


class CuratedList(ListFilter):
    """The auth list filter's streaming machinery, curating items instead of only dropping them."""

    __slots__ = ("_curation",)

    def __init__(self, send: Send, *, method: str, request_id: Any, curation: Curation, max_bytes: int) -> None:
        super().__init__(send, method=method, request_id=request_id, allowed=_everything, max_bytes=max_bytes)
        self._curation = curation

    def _rewrite(self, body: bytes) -> bytes | None:
        message = loads_as_client(body)
        if not isinstance(message, dict) or message.get("id") != self._request_id:
            return None
        result = message.get("result")
        key = CURATED_LISTS[self._method]
        if not isinstance(result, dict) or not isinstance(result.get(key), list):
            return None
        result[key] = curate_items(self._curation, key, result[key])
        return _dumps(message)


def curate_items(curation: Curation, key: str, items: list[Any]) -> list[dict[str, Any]]:
    """A list result's items as clients may see them (JSON objects, the backend's order kept)."""
    curate: Callable[[dict[str, Any]], dict[str, Any] | None]
    if key == "tools":
        curate = curation.tools.curate
    elif key == "prompts":
        curate = curation.prompts.curate
    else:
        field, template = ("uri", False) if key == "resources" else ("uriTemplate", True)
        rules = curation.resources

        def curate(item: dict[str, Any]) -> dict[str, Any] | None:
            uri = item.get(field)
            if not isinstance(uri, str) or rules.shadowed(uri):
                return None  # a URI a renamed prefix took cannot be reached: not listed
            if not (rules.decide_template(uri) if template else rules.decide(uri)).visible:
                return None
            public = rules.public_uri(uri)
            description = rules.description_for(uri)
            if public == uri and description is None:
                return item
            item = {**item, field: public}
            if description is not None:
                item["description"] = description
            return item

    return [curated for item in items if isinstance(item, dict) and (curated := curate(item)) is not None]


def _everything(method: str, target: str) -> bool:
    return True


def _dumps(message: Any) -> bytes:
    try:
        return orjson.dumps(message)
    except TypeError:  # a lone surrogate orjson will not write: the standard library escapes it
        return json.dumps(message, separators=(",", ":")).encode()
