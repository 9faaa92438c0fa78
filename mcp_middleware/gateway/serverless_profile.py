"""What the serverless (AWS Lambda) profile refuses and warns about, and why.

A Lambda execution environment serves one request at a time, is frozen between invocations and
is thrown away at any moment; API Gateway spreads a client's requests over as many environments
as it likes. So anything a request leaves in memory for the next one is a gamble, and anything
that runs between requests does not run. The rules below turn the gambles that would silently
break into errors at cold start (with key and line), and the ones that merely degrade into warnings.

Refused (problems):

- `command` (stdio) servers: a child process per environment, started at every cold start and
  frozen with it between requests (its pipes and the supervisor's restarts with it);
- `[auth] mode = "dev"`: the embedded authorization server keeps its signing key, clients and
  codes in memory, so a login begun in one environment cannot finish in another;
- rate limits on `memory://`: each environment counts alone, so a limit of 10/s is 10/s per
  environment, of which there are as many as concurrent requests: no limit at all;
- auth without `[gateway] public_url`: the tokens' audience and the RFC 9728 metadata name the
  public URL, which the function cannot learn from its (absent) bound address.

Warned about:

- legacy (2025-11-25) sessions without `[gateway] session_key`: a session lives in the environment
  that created it, and the client's next request may reach another (404, the client re-initializes);
- a `memory://` cache: correct, but each environment warms its own;
- `[audit] file`: written to the environment's own disk, lost with it;
- `[tracing]`: `/metrics` counts one environment, and spans batched for export wait while it is frozen;
- `watch_config`: nothing runs between invocations to watch the file.

>>> from mcp_middleware.gateway.config import parse_config
>>> config = parse_config('''
... [[servers]]
... name = "text"
... command = ["python", "server.py"]
... ''')
>>> problems, warnings = serverless_problems(config)
>>> [problem.path for problem in problems]
['servers[0].command']
"""

from __future__ import annotations

from .config import GatewayConfig, Problem

__all__ = ["serverless_problems"]


def serverless_problems(config: GatewayConfig) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of `config` for the serverless profile; problems stop the cold start."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for server in config.servers:
        if server.kind == "command":
            problems.append(
                config.problem(
                    f"servers[{server.index}].command",
                    "a stdio server cannot run in the serverless profile (a child process per execution "
                    "environment, frozen between invocations): serve it over HTTP and give its `url`",
                )
            )
    auth = config.auth
    if auth.mode == "dev":
        problems.append(
            config.problem(
                "auth.mode",
                "'dev' cannot run in the serverless profile (the embedded authorization server keeps its keys "
                "and logins in one execution environment's memory): use 'jwt', 'introspection' or 'static'",
            )
        )
    if auth.mode != "none" and config.gateway.public_url is None:
        problems.append(
            config.problem(
                "gateway.public_url",
                "is required with auth in the serverless profile: the API Gateway URL clients call, which "
                "the tokens' audience and the protected-resource metadata name",
            )
        )
    problems.extend(_memory_rate_limits(config))
    warnings.extend(_warnings(config))
    return problems, warnings


def _memory_rate_limits(config: GatewayConfig) -> list[Problem]:
    settings = config.ratelimit
    if not settings.store.startswith("memory"):
        return []
    limited = settings.enabled and bool(settings.policies)
    limited = limited or any(server.ratelimit_policies for server in config.servers)
    if not limited:
        return []
    message = (
        "'memory://' counts per execution environment in the serverless profile (as many as concurrent "
        "requests: no limit at all); use a 'redis://' store, or no rate limits"
    )
    return [config.problem("ratelimit.store", message)]


def _warnings(config: GatewayConfig) -> list[Problem]:
    found: list[Problem] = []
    # `session_key` is the sealed session handles' key (issue 19); read by name so this check holds before
    # and after it exists: without it, a legacy session lives in one execution environment only.
    if not getattr(config.gateway, "session_key", None):
        found.append(
            config.problem(
                "gateway",
                "no session_key: a legacy (2025-11-25) session lives in the execution environment that created "
                "it, and API Gateway may send the client's next request to another (404: it re-initializes); "
                "set [gateway] session_key, or serve 2026-07-28 clients only",
            )
        )
    if config.cache.enabled and config.cache.store.startswith("memory"):
        found.append(
            config.problem("cache.store", "'memory://' is one cache per execution environment: use 'redis://'")
        )
    if config.audit.file is not None:
        found.append(
            config.problem("audit.file", "is written to the execution environment's own disk and lost with it")
        )
    if config.tracing.enabled:
        found.append(
            config.problem(
                "tracing",
                "/metrics counts one execution environment, and spans batched for export wait while it is "
                "frozen between invocations: export through a collector layer (OTLP to localhost)",
            )
        )
    if config.gateway.watch_config:
        found.append(config.problem("gateway.watch_config", "has no effect: nothing runs between invocations"))
    return found
