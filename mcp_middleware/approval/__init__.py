"""Human approval of sensitive tool calls, asked through MCP itself (elicitation / `input_required`).

:class:`ApprovalMiddleware` holds the calls its selectors, the tools' `destructiveHint` annotations
or a rule pick, and runs them once approved: by the calling user (a 2025-11-25 `elicitation/create`
on the call's stream, or a 2026-07-28 `input_required` result with a sealed `requestState`), or by a
:class:`WebhookApprover`. See docs/approval.md.
"""

from .call import DEFAULT_REDACT, ApprovalCall, call_digest
from .middleware import APPROVAL_REFUSED, ApprovalMiddleware, ApprovalRule
from .rules import policy_rule
from .state import INPUT_KEY, STATE_PREFIX
from .webhook import WebhookApprover, WebhookVerdict

__all__ = [
    "APPROVAL_REFUSED",
    "DEFAULT_REDACT",
    "INPUT_KEY",
    "STATE_PREFIX",
    "ApprovalCall",
    "ApprovalMiddleware",
    "ApprovalRule",
    "WebhookApprover",
    "WebhookVerdict",
    "call_digest",
    "policy_rule",
]
