"""The terms every curation rule speaks in: a name's folded form, a decision, an override.

Shared by :mod:`.curation` (tools, prompts, resources) and what reads its decisions.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ANNOTATION_KEYS", "VISIBLE", "Decision", "Override", "fold"]

ANNOTATION_KEYS = frozenset({"title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"})
"""The tool annotations MCP defines (an override may set these; others are refused at construction)."""


def fold(name: str) -> str:
    """The form two names share when a loose backend would take one for the other (NFKC, casefolded)."""
    return unicodedata.normalize("NFKC", name).casefold()


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a name may be listed and called; `rule` names what hid it (for `-32013` data and logs)."""

    visible: bool
    rule: str = ""


VISIBLE = Decision(True)
"""The decision of a name no rule hides (one shared object)."""


@dataclass(frozen=True, slots=True)
class Override:
    """What a list shows instead of the backend's own: a description, annotations merged over its own."""

    description: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.annotations) - ANNOTATION_KEYS)
        if unknown:
            raise ValueError(f"unknown annotation(s) {unknown}: use {sorted(ANNOTATION_KEYS)}")
        for key, value in self.annotations.items():
            if key != "title" and not isinstance(value, bool):
                raise ValueError(f"annotation {key} must be true or false")
