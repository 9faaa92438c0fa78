"""The breakers of one gateway: bounded, keyed per backend (and per tool where asked).

The registry creates breakers on first use and forgets the least recently used
ones beyond `max_breakers`, so keys taken from paths or tool names cannot grow
memory without bound. It also remembers which tools each backend declared safe
to repeat (from their `tools/list` annotations), for safe retries.
"""

from __future__ import annotations

import random as _random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any
from weakref import WeakMethod

from .state import BreakerPolicy, BreakerSnapshot, BreakerState, CircuitBreaker, StateListener

__all__ = ["BreakerRegistry"]


class BreakerRegistry:
    """Breakers by key, created on demand, at most `max_breakers` of them (LRU).

    Share one registry between middlewares (or keep a reference to it) to read
    the state for a readiness check:

    >>> registry = BreakerRegistry(max_breakers=1000)
    >>> breaker = registry.get("/mcp/github")
    >>> registry.snapshot()["/mcp/github"].state.value, registry.open_keys()
    ('closed', [])
    >>> registry.add_listener(lambda change: print(change.key, change.state.value))
    >>> breaker.force_open(5.0)
    /mcp/github open
    """

    __slots__ = (
        "_breakers",
        "_clock",
        "_forgetters",
        "_listeners",
        "_random",
        "_tool_hints",
        "evictions",
        "max_breakers",
        "max_tools",
        "policy",
    )

    def __init__(
        self,
        *,
        policy: BreakerPolicy | None = None,
        max_breakers: int = 10_000,
        max_tools: int = 10_000,
        listeners: Iterable[StateListener] = (),
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if max_breakers < 1 or max_tools < 1:
            raise ValueError("max_breakers and max_tools must be positive")
        self.policy = policy if policy is not None else BreakerPolicy()
        self.max_breakers = max_breakers
        self.max_tools = max_tools
        self._clock = clock
        self._random = random
        self._listeners: list[StateListener] = list(listeners)
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._tool_hints: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self.evictions = 0
        """Breakers forgotten so far (least recently used): a breaker kept from :meth:`get` is still this
        registry's for its key while this number has not changed."""
        self._forgetters: list[WeakMethod[Callable[[], None]]] = []

    def add_listener(self, listener: StateListener) -> None:
        """Call `listener(change)` on every state change of every breaker (it must be quick)."""
        self._listeners.append(listener)

    def get(self, key: str, policy: BreakerPolicy | None = None) -> CircuitBreaker:
        """The breaker for `key`, created with `policy` (default: the registry's) if new."""
        breakers = self._breakers
        breaker = breakers.get(key)
        if breaker is not None:
            breakers.move_to_end(key)
            return breaker
        breaker = CircuitBreaker(
            key,
            policy if policy is not None else self.policy,
            clock=self._clock,
            random=self._random,
            listeners=self._listeners,  # shared list: listeners added later are seen by all
        )
        breakers[key] = breaker
        if len(breakers) > self.max_breakers:
            breakers.popitem(last=False)
            self.evictions += 1
            self._forgot()
        return breaker

    def on_forget(self, forget: Callable[[], None]) -> None:
        """Call the bound method `forget()` each time a breaker is forgotten (before :meth:`get` returns): a
        caller that keeps breakers from :meth:`get` drops them there. Held weakly (it does not keep its object)."""
        self._forgetters = [reference for reference in self._forgetters if reference() is not None]  # (bounded)
        self._forgetters.append(WeakMethod(forget))

    def _forgot(self) -> None:
        alive = []
        for reference in self._forgetters:
            forget = reference()
            if forget is not None:
                forget()
                alive.append(reference)
        self._forgetters = alive

    def toucher(self, key: str) -> Callable[[], None]:
        """What makes `key`'s breaker the most recently used, as :meth:`get` does: for a caller that keeps the
        breaker (and calls this each time it uses it) while :attr:`evictions` stays the same."""
        return partial(self._breakers.move_to_end, key)

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def snapshot(self) -> dict[str, BreakerSnapshot]:
        """A read-only picture of every breaker (immutable tuples in a fresh dict)."""
        return {key: breaker.snapshot() for key, breaker in list(self._breakers.items())}

    def open_keys(self) -> list[str]:
        """Keys whose circuit is open right now (half-open ones are probing, not listed)."""
        return [key for key, breaker in list(self._breakers.items()) if breaker.state is BreakerState.OPEN]

    # --- what each backend declared about its tools ------------------------------------------

    def learn_tools(self, backend: str, tools: object) -> int:
        """Remember which tools of `backend` are read-only or idempotent, from a `tools/list` result's
        `tools` array; returns how many tools were read. Malformed entries are skipped."""
        if not isinstance(tools, list):
            return 0
        hints = self._tool_hints
        seen = 0
        for tool in tools:
            if not isinstance(tool, Mapping):
                continue
            name = tool.get("name")
            if not isinstance(name, str):
                continue
            seen += 1
            key = (backend, name)
            hints[key] = _repeatable(tool.get("annotations"))
            hints.move_to_end(key)
        while len(hints) > self.max_tools:
            hints.popitem(last=False)
        return seen

    def is_repeatable(self, backend: str, tool: str) -> bool:
        """Whether `backend` declared `tool` read-only or idempotent in its last `tools/list`."""
        return self._tool_hints.get((backend, tool), False)


def _repeatable(annotations: Any) -> bool:
    if not isinstance(annotations, Mapping):
        return False
    return annotations.get("readOnlyHint") is True or annotations.get("idempotentHint") is True
