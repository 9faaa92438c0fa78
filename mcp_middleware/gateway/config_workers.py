"""What `workers` > 1 asks of the rest of the config: state that must be shared, or accepted as per worker.

N worker processes share one port and nothing else: the kernel hands each new connection to one of
them. What a worker keeps in its own memory is therefore seen by a fraction of the traffic:

* `memory://` rate-limit buckets: each worker counts alone, so a limit becomes N times looser. A
  `redis://` (or `rediss://`, `redis+unix://`) store is shared and exact. `[gateway]
  per_worker_state = true` accepts per-worker buckets and caches explicitly.
* `memory://` cache: each worker caches alone (N times the misses); same choice.
* `[auth] mode = "dev"`: the embedded authorization server keeps its codes and grants in the worker
  that issued them (a login that starts on one worker fails on another): refused.
* `[audit] file`: one hash chain per file; N writers would interleave N chains: refused.
* legacy (2025-11-25) sessions live in the worker that created them unless session ids are sealed
  handles any worker can resume (`[gateway] session_key`): see :func:`legacy_sessions_problem`.
* circuit breakers are per worker: each judges the backends by the traffic it sees. (`/metrics` is not:
  every worker's scrape carries every worker's series, :mod:`.worker_metrics`.)
"""

from __future__ import annotations

from .config_approval import approval_worker_problems
from .config_types import GatewayConfig
from .toml_reader import Problem

__all__ = ["legacy_sessions_problem", "worker_problems"]

_SETTING = "set [gateway] per_worker_state = true"


def worker_problems(
    config: GatewayConfig, workers: int | None = None, *, has_session_key: bool | None = None
) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of serving `config` with `workers` processes (default: `[gateway] workers`).

    `has_session_key`: whether legacy session ids are sealed handles any worker resumes (default:
    whether `[gateway] session_key` is set; see :func:`legacy_sessions_problem`).
    """
    count = config.gateway.workers if workers is None else workers
    if count <= 1:
        return [], []
    if has_session_key is None:
        has_session_key = bool(config.gateway.session_key)
    problems = _shared_state_problems(config, count)
    warnings: list[Problem] = []
    legacy = legacy_sessions_problem(config, count, has_session_key=has_session_key)
    if legacy is not None:
        problems.append(legacy)
    held, told = approval_worker_problems(config, count)
    problems, warnings = [*problems, *held], [*warnings, *told]
    return problems, warnings


def legacy_sessions_problem(config: GatewayConfig, workers: int, *, has_session_key: bool) -> Problem | None:
    """Why `workers` processes cannot serve legacy sessions, or None.

    The gateway accepts legacy (2025-11-25) clients on every endpoint, and a legacy session lives in
    the worker that created it; with more than one worker only sealed session handles (the session
    key) let any worker resume it. `per_worker_state = true` accepts sessions kept per worker (a legacy
    client whose next connection reaches another worker re-initializes), as it accepts per-worker limits.
    """
    if workers <= 1 or has_session_key or config.gateway.per_worker_state:
        return None
    return config.problem(
        "gateway.workers",
        f"is {workers}, and legacy (2025-11-25) sessions would live in the worker that created them (a client's "
        "next connection may reach another worker and get 404): set [gateway] session_key so that any worker "
        f"resumes a session, or {_SETTING} to accept sessions kept per worker, or use workers = 1",
    )


def _shared_state_problems(config: GatewayConfig, workers: int) -> list[Problem]:
    problems: list[Problem] = []
    if not config.gateway.per_worker_state:
        if _rate_limited(config) and _in_memory(config.ratelimit.store):
            problems.append(
                _placed(
                    config,
                    ("ratelimit.store", "ratelimit", "ratelimit.policies[0]"),
                    f"is memory:// and {workers} workers would each keep their own buckets (every limit "
                    f"{workers} times looser): use a shared store (redis://…), or {_SETTING} to accept per-worker "
                    "limits and caches",
                )
            )
        if config.cache.enabled and _in_memory(config.cache.store):
            problems.append(
                config.problem(
                    "cache.store",
                    f"is memory:// and {workers} workers would each keep their own cache (a cached answer "
                    f"serves one worker's clients): use a shared store (redis://…), or {_SETTING} to accept "
                    "per-worker limits and caches",
                )
            )
    if config.auth.mode == "dev":
        problems.append(
            config.problem(
                "auth.mode",
                f"dev: the embedded authorization server keeps its codes and grants in one process, and {workers} "
                "workers would each have their own (a login started on one fails on another): use workers = 1",
            )
        )
    if config.audit.file is not None:
        problems.append(
            config.problem(
                "audit.file",
                f"is one hash chain, and {workers} workers would interleave {workers} chains in it: use "
                "workers = 1 (or [audit] otel = true without a file)",
            )
        )
    return problems


def _placed(config: GatewayConfig, paths: tuple[str, ...], message: str) -> Problem:
    """A problem at the first path, on the line of the first of `paths` the file shows (a store left
    to its default is placed at its section, or at the policies that use it)."""
    lines = config.lines
    line = next((found for path in paths if lines is not None and (found := lines.find(path))), None)
    return Problem(paths[0], message, line)


def _rate_limited(config: GatewayConfig) -> bool:
    """Whether any stack rate-limits (the global policies when enabled, a server's own always)."""
    limits = config.ratelimit
    return bool(limits.enabled and limits.policies) or any(server.ratelimit_policies for server in config.servers)


def _in_memory(url: str) -> bool:
    return url.partition("://")[0].lower() == "memory"
