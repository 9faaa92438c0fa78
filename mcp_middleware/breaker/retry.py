"""Safe retries: which requests may be sent twice, and how long to wait between attempts."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["SAFE_METHODS", "RetryPolicy"]

SAFE_METHODS: frozenset[str] = frozenset(
    {
        "ping",
        "server/discover",
        "tools/list",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "completion/complete",
    }
)
"""Methods that read and change nothing: safe to send twice."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Opt-in retries of idempotent requests that failed before any byte reached the client.

    `attempts` counts the first one. Between attempts the middleware waits
    `min(backoff * 2 ** (n - 1), max_backoff)` seconds, times a jitter factor in
    `[1 - jitter, 1 + jitter]`. Retried: `methods` (lists and reads by default), and
    `tools/call` of tools whose backend declared `readOnlyHint` or `idempotentHint`
    in its last `tools/list` (when `learn_annotations`) or that match a selector in
    `allow` (e.g. `"tools/call:get_*"`). Nothing else, ever.

    >>> RetryPolicy(attempts=3, backoff=0.1, jitter=0.0).delay(2, draw=0.5)
    0.2
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0
    jitter: float = 0.5
    methods: Collection[str] = SAFE_METHODS
    allow: Sequence[str] = ()
    learn_annotations: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < self.backoff or not 0.0 <= self.jitter <= 1.0:
            raise ValueError("need 0 <= backoff <= max_backoff and 0 <= jitter <= 1")

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait before attempt number `attempt + 1`, for a random `draw` in [0, 1)."""
        base: float = min(self.backoff * 2.0 ** min(attempt - 1, 32), self.max_backoff)
        return base * (1.0 + self.jitter * (2.0 * draw - 1.0))
