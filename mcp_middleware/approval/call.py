"""The call an approver is asked about: its digest (what an approval is bound to) and its summary (what they read).

The **digest** names the exact call: principal, backend, method, tool and the canonical JSON of the
arguments (keys sorted). An approval is valid for that digest only, so a retry with other arguments,
for another tool or by another caller is asked again (or refused), never run on an old yes.

The **summary** is what a person sees: the tool and its top-level arguments, each value clipped, nested
values shown by shape only, and the value of any key that looks like a credential (`password`,
`token`, `secret`, `*key*`, …) replaced — the form travels to a client and may be logged there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mcp_middleware.core import Principal

__all__ = ["DEFAULT_REDACT", "ApprovalCall", "Redaction", "call_digest"]

DEFAULT_REDACT: tuple[str, ...] = (
    "*password*",
    "*passwd*",
    "*secret*",
    "*token*",
    "*key*",
    "*credential*",
    "authorization",
    "cookie",
    "*session*",
)
"""Argument names whose values never appear in a summary (globs, case-insensitive)."""

_MAX_ARGUMENTS = 12
_MAX_VALUE = 80
_MAX_SUMMARY = 1200
_DIGEST_VERSION = b"mcp-approval/v1"


class Redaction:
    """Whether an argument's name is one whose value must not be shown."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_REDACT) -> None:
        globs = [fnmatch.translate(pattern.lower()) for pattern in patterns]
        self._pattern = re.compile("|".join(globs)) if globs else None

    def hides(self, name: str) -> bool:
        return self._pattern is not None and self._pattern.match(name.lower()) is not None


def call_digest(principal: Principal, backend: str, method: str, tool: str, arguments: Any) -> str:
    """The hex SHA-256 naming this exact call by this caller (arguments canonical: keys sorted)."""
    try:
        canonical = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # not representable (a lone surrogate): the stdlib's escaped form
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()
    texts = (principal.key, backend, method, tool)
    parts = (_DIGEST_VERSION, *(text.encode("utf-8", "surrogatepass") for text in texts), canonical)
    hasher = hashlib.sha256()
    for part in parts:  # length-prefixed: no two different calls concatenate to the same bytes
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


@dataclass(frozen=True, slots=True)
class ApprovalCall:
    """One call held for approval: who, where, what, and its digest."""

    principal: Principal
    backend: str
    method: str
    tool: str
    arguments: Mapping[str, Any]
    digest: str
    why: str = ""
    """What selected it: `selector`, `destructive`, `unlisted` (no list says what it is) or `rule`."""

    @classmethod
    def of(
        cls, principal: Principal, backend: str, method: str, tool: str, arguments: Any, why: str = ""
    ) -> ApprovalCall:
        shown = arguments if isinstance(arguments, Mapping) else {}
        digest = call_digest(principal, backend, method, tool, arguments)
        return cls(principal, backend, method, tool, shown, digest, why)

    def summary(self, redaction: Redaction) -> str:
        """Bounded, credential-free text of the arguments (`path='/tmp/x', force=true, options={2 keys}`)."""
        shown: list[str] = []
        for index, (name, value) in enumerate(self.arguments.items()):
            if index == _MAX_ARGUMENTS:
                shown.append(f"… {len(self.arguments) - index} more")
                break
            label = _clip(str(name), 40)
            shown.append(f"{label}={'[redacted]' if redaction.hides(str(name)) else _shape(value)}")
        return _clip(", ".join(shown) or "(no arguments)", _MAX_SUMMARY)

    def message(self, redaction: Redaction) -> str:
        """The question the approver reads."""
        where = f" on {self.backend}" if self.backend else ""
        return _clip(
            f"Approve the call to {_clip(self.tool, 80)!r}{where}? Arguments: {self.summary(redaction)} "
            f"(call {self.digest[:12]})",
            _MAX_SUMMARY + 200,
        )

    def facts(self, redaction: Redaction) -> dict[str, Any]:
        """What a webhook approver is told (no credentials: the summary, not the arguments)."""
        who = self.principal
        return {
            "digest": self.digest,
            "backend": self.backend,
            "method": self.method,
            "tool": self.tool,
            "summary": self.summary(redaction),
            "principal": {"subject": who.subject, "client_id": who.client_id, "issuer": who.issuer},
        }


def _shape(value: Any) -> str:
    if isinstance(value, str):
        return repr(_clip(value, _MAX_VALUE))
    if value is None or isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    if isinstance(value, Mapping):
        return f"{{{len(value)} keys}}"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return type(value).__name__


def _clip(text: str, limit: int) -> str:
    # Control characters would let an argument draw a fake line in the approver's form.
    text = "".join(char if char.isprintable() else " " for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
