"""End-to-end stack with approval (`--apps bare,core,approval`): what a call that is *not* held pays.

`ApprovalMiddleware` with a selector and `destructive=True`: the benchmark's `echo` matches neither,
so each call costs the parse, a selector lookup and a catalog lookup (the tool list is fetched once,
through the stack, at the first call). A held call waits for a person: its cost is not measured here.
"""

from __future__ import annotations

from mcp_middleware.approval import ApprovalMiddleware

from .apps import Stack

STACKS = {
    "approval": Stack(lambda app: ApprovalMiddleware(app, require=["tools/call:delete_*"], destructive=True)),
}
