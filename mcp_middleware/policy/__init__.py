"""Govern the tool surface per backend: rules on who may see and run what, and arguments held to their schema.

* :class:`PolicyMiddleware`: list-time (what a caller sees) and call-time (what it may run, arguments
  included) decisions by a :class:`PolicyEngine`, roles mapped to selectors, explained refusals;
* :class:`CelPolicyEngine`: rules in CEL, read from TOML files (the default engine);
* :class:`ArgumentValidationMiddleware`: `tools/call` arguments validated against the tool's `inputSchema`.

The engines and validators come with the extra: `pip install 'mcp-middleware[policy]'`.
"""

from .arguments import ArgumentValidationMiddleware
from .catalog import KnownTool, ToolCatalog
from .cel_rules import CelPolicyEngine, CelRule
from .engine import (
    DEFAULT_DENY,
    Phase,
    PolicyDecision,
    PolicyEngine,
    PolicyError,
    PolicyInput,
    PolicyProblem,
    principal_view,
)
from .middleware import GUARDED_METHODS, PolicyMiddleware

__all__ = [
    "DEFAULT_DENY",
    "GUARDED_METHODS",
    "ArgumentValidationMiddleware",
    "CelPolicyEngine",
    "CelRule",
    "KnownTool",
    "Phase",
    "PolicyDecision",
    "PolicyEngine",
    "PolicyError",
    "PolicyInput",
    "PolicyProblem",
    "PolicyMiddleware",
    "ToolCatalog",
    "principal_view",
]
