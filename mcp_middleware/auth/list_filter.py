"""The list filter moved to :mod:`mcp_middleware.core.list_filter` (the policy middleware shares it)."""

from mcp_middleware.core.list_filter import LIST_METHODS, ListFilter

__all__ = ["LIST_METHODS", "ListFilter"]
