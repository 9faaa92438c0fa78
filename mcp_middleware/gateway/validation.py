"""Checks the config layer borrows from the parts that will use each value, so `serve` never meets a bad one.

Selectors go through `core.Selector`, quotas and rate strings through `limits` (as the rate
limiter reads them), store URLs through the stores' own URL reader, rate-limit policies and the
breaker policy through their constructors. A value one of them refuses is a problem naming its key.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import pkgutil
import shlex
import shutil
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import limits
import mcp_types

from mcp_middleware.breaker import BreakerPolicy
from mcp_middleware.core import Selector
from mcp_middleware.core.store_urls import parse_store_url
from mcp_middleware.ratelimit import BucketPolicy, Policy, QuotaPolicy, TokenBucket

from .config_types import option_default
from .toml_reader import Reader, describe, did_you_mean

__all__ = [
    "breaker_policy",
    "check_command",
    "import_target",
    "quota_storage_problem",
    "rate_limit_policy",
    "selector",
    "split_command",
    "store_url",
]

SELECTOR_HINT = 'write e.g. "tools/call:search_*", "tools/list" or "*"'


def selector(reader: Reader, key: str, text: str) -> bool:
    """Whether `text` is a selector as the middlewares parse it; else a problem at `key`.

    A method MCP does not have selects nothing: a near miss of a real one (`tool/call`) is a
    problem, any other (an extension's own method) a warning.
    """
    try:
        parsed = Selector.parse(text)
    except ValueError as exc:
        reader.problem(key, f"is not a selector ({exc}); {SELECTOR_HINT}")
        return False
    method = parsed.method
    if method is None or any(glob in method for glob in "*?[") or method in mcp_methods():
        return True
    near = did_you_mean(method, sorted(mcp_methods()))
    if near:
        reader.problem(key, f"names no MCP method ({method!r}{near})")
        return False
    reader.warn(key, f"names no MCP method ({method!r}): it selects only requests of that name")
    return True


@functools.cache
def mcp_methods() -> frozenset[str]:
    """Every method name of the protocol, as the SDK's types declare them (requests and notifications)."""
    found: set[str] = set()
    for name in dir(mcp_types):
        fields_ = getattr(getattr(mcp_types, name), "model_fields", None)
        if isinstance(fields_, dict) and "method" in fields_:
            found.update(arg for arg in typing.get_args(fields_["method"].annotation) if isinstance(arg, str))
    return frozenset(found)


def store_url(reader: Reader, key: str, what: str) -> str:
    """A store URL as the store factories read it (`memory://`, `redis://…`, `rediss://…`, `redis+unix://…`)."""
    value: Any = reader.string(key, "memory://")
    if not isinstance(value, str):
        return "memory://"
    try:
        parse_store_url(value, what)
    except ValueError:
        reader.problem(key, f"must be memory:// or a redis://, rediss:// or redis+unix:// URL, not {value!r}")
        return "memory://"
    return value


def quota_storage_problem(url: str) -> str | None:
    """Why `limits` (which counts window quotas) cannot use the rate-limit store `url`, or None.

    Of the schemes the stores read, `limits` spells one differently: redis-py's `unix://` is its
    `redis+unix://`.
    """
    if url.partition("://")[0].lower() == "unix":
        return "cannot hold window quotas (limits does not read unix://): write redis+unix://… instead"
    return None


def _rate_text(text: str) -> str | None:
    """Why `limits` cannot read `text` as one rate (`"100/minute"`, `"10 per second"`), or None."""
    try:
        limits.parse(text)
    except ValueError:
        return f'must be a rate such as "100/minute" or "10 per second", not {text!r}'
    return None


def rate_limit_policy(policy: Reader) -> Policy | None:
    """One `[[ratelimit.policies]]` table as the rate limiter's own policy object (same names, same defaults).

    `limit` makes a window quota (:class:`QuotaPolicy`); otherwise it is a token bucket
    (:class:`BucketPolicy`) whose `rate` is tokens per second or a rate string such as `"100/minute"`.
    """
    start = len(policy.problems)
    policy.deprecated({"quota": "limit"})
    name = policy.string("name")
    raw_selector = policy.raw("selector", "*")
    texts = [raw_selector] if isinstance(raw_selector, str) else raw_selector
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        policy.problem("selector", f"must be a selector or a list of selectors, not {describe(raw_selector)}")
        texts = ["*"]
    texts = [policy.secret("selector", text) for text in texts]
    for text in texts:
        selector(policy, "selector", text)
    limit = policy.string("limit", None)
    if limit is not None and (why := _rate_text(limit)) is not None:
        policy.problem("limit", why)
    options: dict[str, Any] = {"per_target": policy.boolean("per_target", False)}
    if limit is not None:
        options["strategy"] = policy.string(
            "strategy", "fixed-window", choices=("fixed-window", "moving-window", "sliding-window-counter")
        )
        options["cost"] = policy.integer("cost", 1, minimum=1)
        for bucket_only in ("rate", "capacity"):
            if bucket_only in policy.data:
                policy.seen.add(bucket_only)
                policy.problem(bucket_only, "is a token-bucket setting: a policy with limit is a window quota")
    else:
        options.update(_bucket_options(policy))
    policy.done()
    if len(policy.problems) > start or not isinstance(name, str):
        return None
    chosen = texts[0] if len(texts) == 1 else tuple(texts)
    return _construct(policy, name, chosen, limit, options)


def _bucket_options(policy: Reader) -> dict[str, Any]:
    raw_rate = policy.raw("rate", None)
    rate: float | str = option_default(BucketPolicy, "rate")
    if isinstance(raw_rate, str):
        why = _rate_text(raw_rate)
        if why is None:
            try:
                TokenBucket.parse(raw_rate)
            except ValueError as exc:
                why = f"is not a rate a token bucket can use ({exc})"
        if why is not None:
            policy.problem("rate", why)
        rate = raw_rate
    elif raw_rate is not None:
        rate = policy.number("rate", float(rate), positive=True)
    capacity = policy.number("capacity", 1.0, positive=True) if "capacity" in policy.data else None
    return {
        "rate": rate,
        "capacity": capacity,
        "cost": policy.number("cost", option_default(BucketPolicy, "cost"), positive=True),
    }


def _construct(policy: Reader, name: str, chosen: Any, limit: str | None, options: dict[str, Any]) -> Policy | None:
    try:
        if limit is not None:
            return QuotaPolicy(name=name, selector=chosen, limit=limit, **options)
        return BucketPolicy(name=name, selector=chosen, **options)
    except ValueError as exc:
        policy.problem(_named_key(str(exc), ("name", "cost", "capacity", "rate", "strategy")), str(exc))
        return None


def breaker_policy(reader: Reader) -> BreakerPolicy:
    """`[breaker]`'s policy keys are :class:`BreakerPolicy`'s fields, with its defaults and its own checks.

    `consecutive_failures = false` or `failure_rate = false` turns that trip condition off (`None` in Python).
    """
    start = len(reader.problems)
    reader.deprecated({"failure_threshold": "consecutive_failures", "open_seconds": "open_for"})
    given: dict[str, Any] = {}
    for option in fields(BreakerPolicy):
        name = option.name
        value = reader.raw(name, None)
        if value is None:
            continue
        optional = "None" in str(option.type)
        if value is False and optional:
            given[name] = None
            continue
        whole = str(option.type).startswith("int")
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float) or not math.isfinite(value):
            kind = "an integer" if whole else "a finite number"
            reader.problem(name, f"must be {kind}{' or false' if optional else ''}, not {describe(value)}")
            continue
        given[name] = value
    if len(reader.problems) > start:
        return BreakerPolicy()
    try:
        return BreakerPolicy(**given)
    except ValueError as exc:
        written = [name for name in (f.name for f in fields(BreakerPolicy)) if name in given]
        reader.problem(
            _named_key(str(exc), written) or _named_key(str(exc), list(BreakerPolicy.__dataclass_fields__)), str(exc)
        )
        return BreakerPolicy()


def _named_key(message: str, keys: Sequence[str]) -> str | None:
    """The first of `keys` the constructor's message names (where to point the problem), else the table."""
    for key in keys:
        if key in message:
            return key
    return None


def split_command(reader: Reader, key: str) -> tuple[str, ...]:
    """`command`: a list of strings, or one string split as a POSIX shell would (no shell runs it)."""
    raw = reader.raw(key, None)
    if raw is None:
        return ()
    if isinstance(raw, str):
        text = reader.secret(key, raw)
        try:
            parts = tuple(shlex.split(text))
        except ValueError as exc:
            reader.problem(key, f'cannot be split into arguments ({exc}); write a list such as ["python", "server.py"]')
            return ()
    else:
        parts = reader.strings(key, ())
        if not isinstance(raw, list):
            return ()
    if not parts or not parts[0].strip():
        reader.problem(key, 'must name a program: a list such as ["python", "server.py"]')
        return ()
    return parts


def check_command(command: Sequence[str], folder: Path, python: str) -> str | None:
    """Why `command[0]` cannot be started (not found, not executable), or None; `python` stands for `{python}`."""
    program = command[0]
    if program == python:
        return None
    if "/" in program:
        path = Path(program) if Path(program).is_absolute() else folder / program
        return None if path.is_file() else f"{program!r} is not a file (relative to {folder})"
    if shutil.which(program) is not None:
        return None
    return f"{program!r} is not found on PATH"


def import_target(target: str, folder: Path) -> Any:
    """Import `module:attr.path`; ImportError/AttributeError with a "did you mean" for near misses."""
    module_name, _, attribute = target.partition(":")
    for path in (str(folder), str(Path.cwd())):
        if path not in sys.path:
            sys.path.append(path)
    try:
        value: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name) and exc.name != "":
            raise ModuleNotFoundError(
                f"no module named {exc.name!r}{did_you_mean(exc.name, _sibling_modules(exc.name))}", name=exc.name
            ) from None
        raise
    where = module_name
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise AttributeError(f"{where} has no attribute {part!r}{did_you_mean(part, _public_names(value))}")
        value = getattr(value, part)
        where = f"{where}.{part}"
    return value


def _sibling_modules(name: str) -> list[str]:
    """Module names beside `name` (in its parent package, or top-level on `sys.path`), spelt as imported."""
    parent, _, _ = name.rpartition(".")
    if parent:
        spec = importlib.util.find_spec(parent)
        paths = list(spec.submodule_search_locations or []) if spec is not None else []
        return [f"{parent}.{info.name}" for info in pkgutil.iter_modules(paths)]
    return [info.name for info in pkgutil.iter_modules()] + list(sys.builtin_module_names)


def _public_names(value: Any) -> list[str]:
    names: Mapping[str, Any] | list[str] = vars(value) if hasattr(value, "__dict__") else dir(value)
    return [name for name in names if not name.startswith("_")]
