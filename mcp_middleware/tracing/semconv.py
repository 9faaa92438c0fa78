"""The OpenTelemetry semantic conventions for MCP, applied to the core's request view.

Names follow the GenAI/MCP conventions (status: Development): a server span named
`{mcp.method.name} {target}` where the target is the tool or prompt name (a resource
URI only on request: URIs are high-cardinality), and `error.type` set to the JSON-RPC
error code, or to `tool_error` when a `tools/call` result carries `isError: true`.
Every value a client chose is bounded first (`mcp_middleware.core.recording`): span names
keep only known methods and short portable names, attributes are clipped, and the session
id is written as its digest.

>>> from mcp_middleware.core import Era, McpRequest, RequestKind
>>> call = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=7,
...                   params={"name": "search"})
>>> span_name(call)
'tools/call search'
>>> request_attributes(call)["gen_ai.operation.name"]
'execute_tool'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from mcp_middleware.core import McpRequest, ResponseOutcome, clip, known_method, portable_name, session_digest

__all__ = [
    "DURATION_BUCKETS",
    "ERROR_TYPE",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROMPT_NAME",
    "GEN_AI_TOOL_NAME",
    "JSONRPC_REQUEST_ID",
    "MCP_METHOD_NAME",
    "MCP_PROTOCOL_VERSION",
    "MCP_RESOURCE_URI",
    "MCP_SESSION_ID",
    "RPC_RESPONSE_STATUS_CODE",
    "TOOL_ERROR",
    "AttributeMap",
    "outcome_error",
    "request_attributes",
    "response_error",
    "span_name",
]

MCP_METHOD_NAME: Final = "mcp.method.name"
MCP_PROTOCOL_VERSION: Final = "mcp.protocol.version"
MCP_SESSION_ID: Final = "mcp.session.id"
MCP_RESOURCE_URI: Final = "mcp.resource.uri"
JSONRPC_REQUEST_ID: Final = "jsonrpc.request.id"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_PROMPT_NAME: Final = "gen_ai.prompt.name"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
ERROR_TYPE: Final = "error.type"
RPC_RESPONSE_STATUS_CODE: Final = "rpc.response.status_code"
TOOL_ERROR: Final = "tool_error"

DURATION_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Explicit bucket boundaries (seconds) the conventions give for `mcp.*.operation.duration`."""

AttributeMap = dict[str, str | bool | int | float]


def span_name(
    request: McpRequest, *, uri_in_name: bool = False, target_allowed: Callable[[str], bool] = portable_name
) -> str | None:
    """`{mcp.method.name} {target}`, or `None` when the exchange carries no MCP method (GET, DELETE).

    Span names must stay few, and both parts are the client's: a method outside the specification
    is named `_OTHER`, and the target is kept only when `target_allowed` says so (by default, when it
    is a short portable name); a URI, asked for with `uri_in_name`, is clipped to 128 characters.
    """
    method = request.method
    if method is None:
        return None
    method = known_method(method)
    target = request.name
    if target is not None:
        return f"{method} {target}" if target_allowed(target) else method
    if uri_in_name and (uri := request.uri) is not None:
        return f"{method} {clip(uri, 128)}"
    return method


def request_attributes(request: McpRequest) -> AttributeMap:
    """The MCP attributes known from the request alone; the client's text clipped, the session id digested."""
    attributes: AttributeMap = {MCP_PROTOCOL_VERSION: clip(request.protocol_version)}
    method = request.method
    if method is not None:
        attributes[MCP_METHOD_NAME] = clip(method)
    request_id = request.id
    if request_id is not None:
        attributes[JSONRPC_REQUEST_ID] = clip(request_id) if type(request_id) is str else str(request_id)
    if request.session_id is not None:
        attributes[MCP_SESSION_ID] = session_digest(request.session_id)
    if method == "tools/call":
        attributes[GEN_AI_OPERATION_NAME] = "execute_tool"
        if (name := request.name) is not None:
            attributes[GEN_AI_TOOL_NAME] = clip(name)
    elif method == "prompts/get":
        if (name := request.name) is not None:
            attributes[GEN_AI_PROMPT_NAME] = clip(name)
    elif (uri := request.uri) is not None:
        attributes[MCP_RESOURCE_URI] = clip(uri)
    return attributes


def outcome_error(outcome: ResponseOutcome) -> tuple[str | None, int | None, str | None]:
    """`(error.type, JSON-RPC error code, error message)` of a response; all `None` when it succeeded.

    A JSON-RPC error gives its code; a tool result with `isError` gives `tool_error`;
    an HTTP error status with no JSON-RPC body gives the status (`"503"`).
    """
    error: Mapping[str, object] | None = outcome.error
    error_type, code = response_error(outcome.status, outcome.result, error)
    if error is not None:
        message = error.get("message")
        text = clip(message) if isinstance(message, str) else None  # the server's words, often echoing the client's
        return error_type, code, text
    return error_type, code, None


def response_error(
    status: int | None, result: Mapping[str, object] | None, error: Mapping[str, object] | None
) -> tuple[str | None, int | None]:
    """`(error.type, JSON-RPC error code)` of a response's status, `result` and `error` (see :func:`outcome_error`)."""
    if error is not None:
        code = error.get("code")
        if isinstance(code, int):
            return str(code), code
        return "_OTHER", None
    if result is not None and result.get("isError") is True:
        return TOOL_ERROR, None
    if status is not None and status >= 400:
        return str(status), None
    return None, None
