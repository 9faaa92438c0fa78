"""End-to-end stacks with the policy (`--apps bare,policy`) and argument validation (`--apps bare,arguments`).

`policy`: `PolicyMiddleware` with the 50 rules of `bench_policy` plus one permitting the benchmark's
`echo` (no auth in front: the caller is anonymous). `arguments`: `ArgumentValidationMiddleware`, which
lists the server's tools once (through the stack) at the first call and validates every call after.
"""

from __future__ import annotations

from mcp_middleware.policy import ArgumentValidationMiddleware, CelPolicyEngine, PolicyMiddleware

from .apps import Stack
from .bench_policy import cel_rules

_RULES = cel_rules() + '\n[[rules]]\nid = "echo"\neffect = "permit"\nmatch = "tools/call:echo"\n'

STACKS = {
    "policy": Stack(lambda app: PolicyMiddleware(app, engine=CelPolicyEngine.from_text(_RULES))),
    "arguments": Stack(lambda app: ArgumentValidationMiddleware(app)),
}
