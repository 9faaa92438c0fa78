"""What a routed request names, in its backend's own names: the public name resolved, the params rewritten.

A public name that no backend offers, or a malformed one, is refused here with a JSON-RPC
`-32602` naming it (cut to 200 characters): nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.types import Send

from mcp_middleware.core import JsonRpcCode, McpRequest
from mcp_middleware.core.errors import McpMiddlewareError, RequestId, send_error

from .catalog import Catalog
from .catalog_kinds import PROMPTS, TOOLS
from .curation import unknown_error

__all__ = ["Refused", "backend_target"]


class Refused(McpMiddlewareError):
    """A routed request answered with a JSON-RPC error before it reaches any backend."""

    def __init__(self, status: int, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.data = status, code, message, data

    async def answer(self, send: Send, request_id: RequestId | None = None) -> None:
        """Send this refusal as the JSON-RPC error answering `request_id` (none: an answer of the client's own)."""
        await send_error(
            send, status=self.status, code=self.code, message=self.message, request_id=request_id, data=self.data
        )


async def backend_target(catalog: Catalog, request: McpRequest) -> tuple[str, Mapping[str, Any], str | None]:
    """(backend, the params in the backend's names, the `Mcp-Name` it gets) for a routed request."""
    params = request.params or {}
    method = request.method
    if method in ("tools/call", "prompts/get"):
        public = params.get("name")
        kind, noun = (TOOLS, "tool") if method == "tools/call" else (PROMPTS, "prompt")
        if not isinstance(public, str):
            raise Refused(200, JsonRpcCode.INVALID_PARAMS, f"{noun} name must be a string")
        found = await catalog.resolve(kind, public)
        if found is None:
            refused = catalog.refusal(kind, public)
            if refused is not None:  # hidden by its backend's curation: refused as that curation says
                raise Refused(*refused[0].refusal_error(noun, public, refused[1]))
            raise Refused(*unknown_error(noun, public))
        server, name = found
        renamed = params if name == public else {**params, "name": name}
        return server, renamed, name
    if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise Refused(200, JsonRpcCode.INVALID_PARAMS, "uri must be a string")
        target = await catalog.resolve_uri(uri)
        if target is None:
            raise Refused(*unknown_error("resource", uri))
        server, original = target
        renamed = params if original == uri else {**params, "uri": original}
        return server, renamed, original
    return await _completion_target(catalog, params)


async def _completion_target(catalog: Catalog, params: Mapping[str, Any]) -> tuple[str, Mapping[str, Any], str | None]:
    ref = params.get("ref")
    if not isinstance(ref, dict):
        raise Refused(200, JsonRpcCode.INVALID_PARAMS, "ref must be an object")
    if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
        found = await catalog.resolve(PROMPTS, ref["name"])
        key = "name"
        refused = catalog.refusal(PROMPTS, ref["name"]) if found is None else None
        if refused is not None and refused[0].refusal == "forbidden":  # "unknown": answered as any unknown ref
            raise Refused(*refused[0].refusal_error("prompt", ref["name"], refused[1]))
    elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
        found = await catalog.resolve_uri(ref["uri"], template=True)
        key = "uri"
    else:
        raise Refused(200, JsonRpcCode.INVALID_PARAMS, "ref must name a prompt or a resource template")
    if found is None:
        label = str(ref[key])[:200]
        raise Refused(200, JsonRpcCode.INVALID_PARAMS, f"Unknown reference: {label}", {key: label})
    server, original = found
    return server, {**params, "ref": {**ref, key: original}}, None
