"""Human approval of sensitive tool calls, asked through MCP itself (elicitation / `input_required`).

:class:`ApprovalMiddleware` holds the calls its selectors, the tools' `destructiveHint` annotations
or a rule pick, and runs them once approved: by the calling user (a 2025-11-25 `elicitation/create`
on the call's stream, or a 2026-07-28 `input_required` result with a sealed `requestState`), or by a
:class:`WebhookApprover` (at once, or later through :class:`ApprovalCallbackEndpoint`). A
:class:`RedisApprovalStore` shares spent nonces and callback answers across instances. See docs/approval.md.
"""

from .call import DEFAULT_REDACT, ApprovalCall, call_digest
from .callback import CALLBACK_PATH, ApprovalCallbackEndpoint
from .middleware import ApprovalMiddleware, ApprovalRule
from .outcomes import APPROVAL_REFUSED
from .rules import policy_rule
from .state import INPUT_KEY, STATE_PREFIX
from .store import (
    ApprovalStore,
    ApprovalStoreUnavailable,
    MemoryApprovalStore,
    RedisApprovalStore,
    approval_store_from_url,
)
from .webhook import WebhookApprover, WebhookVerdict

__all__ = [
    "APPROVAL_REFUSED",
    "CALLBACK_PATH",
    "DEFAULT_REDACT",
    "INPUT_KEY",
    "STATE_PREFIX",
    "ApprovalCall",
    "ApprovalCallbackEndpoint",
    "ApprovalMiddleware",
    "ApprovalRule",
    "ApprovalStore",
    "ApprovalStoreUnavailable",
    "MemoryApprovalStore",
    "RedisApprovalStore",
    "WebhookApprover",
    "WebhookVerdict",
    "approval_store_from_url",
    "call_digest",
    "policy_rule",
]
