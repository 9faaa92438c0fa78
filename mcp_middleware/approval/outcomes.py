"""How a held call's outcome is told: its decision attributes, and a refusal's message and `data`."""

from __future__ import annotations

from typing import Any

from starlette.types import Send

from mcp_middleware.core import ErrorCode, McpRequest, clip, send_error
from mcp_middleware.core.decisions import DecisionValue

from .call import ApprovalCall

__all__ = ["APPROVAL_REFUSED", "facts_of", "refusal_data", "refusal_message", "refusal_word", "refuse"]

APPROVAL_REFUSED = ErrorCode.FORBIDDEN
"""The JSON-RPC code of a call that was not approved (declined, cancelled, timed out, or a bad approval state);
`data.approval` says which. A client that cannot be asked gets -32021 (missing client capability)."""


def facts_of(call: ApprovalCall) -> dict[str, DecisionValue]:
    return {"tool": clip(call.tool), "digest": call.digest[:16], "why": call.why}


def refusal_word(word: str) -> str:
    return {"decline": "declined", "cancel": "cancelled", "error": "client_error"}.get(word, word or "declined")


def refusal_data(call: ApprovalCall, reason: str) -> dict[str, Any]:
    return {"approval": reason, "tool": clip(call.tool), "digest": call.digest}


def refusal_message(call: ApprovalCall, reason: str, timeout: float = 0.0, detail: str = "") -> str:
    tool = clip(call.tool, 80)
    if reason == "timeout":
        text = f"No approval came within {timeout:g} s: the call to {tool!r} was not run"
    elif reason in ("declined", "cancelled"):
        text = f"The call to {tool!r} was {reason} by its approver and not run"
    else:
        text = f"The call to {tool!r} was not approved ({reason}) and not run"
    return f"{text}: {detail}" if detail else text


async def refuse(
    send: Send, request: McpRequest, call: ApprovalCall, reason: str, detail: str = "", waited: float = 0.0
) -> None:
    """The call's JSON-RPC error, 403 (before anything was sent)."""
    data = refusal_data(call, reason)
    if detail:
        data["detail"] = detail
    await send_error(
        send,
        status=403,
        code=APPROVAL_REFUSED,
        message=refusal_message(call, reason, waited, detail),
        request_id=request.id,
        data=data,
    )
