"""`check-config`'s checks beyond the file: everything `serve` does short of binding the port.

:func:`check_config` builds the gateway as `serve` would (imports every `app`, finds every
`command`'s program, constructs every middleware and store from its URL) and reports what
fails as problems with key and line. With `probe=True` it goes one step further: it probes
the backends as `health-check` does (stdio children, in-process lifespans, both MCP requests), reports a
required backend that is not healthy as a problem, and a selector naming no tool of the backends it
applies to as a warning (`tools/call:stok` when the backend has `stock`).
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio

from mcp_middleware.core import Selector

from .app import Gateway, build_gateway
from .config import ConfigError, GatewayConfig, Problem, in_file_order
from .config_approval import approval_store_warnings
from .config_routes import route_warnings
from .config_workers import worker_problems
from .health_check import probe_gateway
from .toml_reader import did_you_mean

__all__ = ["check_config"]


def check_config(
    config: GatewayConfig, *, probe: bool = False, workers: int | None = None
) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings): what `serve` would refuse building the gateway, and with `probe` what the
    running backends say; warnings include the file's own (deprecated names). `workers` is `serve
    --workers` (default: the file's `[gateway] workers`)."""
    refused, cautions = worker_problems(config, workers)
    cautions += approval_store_warnings(config)  # several instances, told by a shared rate-limit or cache store
    try:
        gateway = build_gateway(config)
    except ConfigError as exc:
        return in_file_order([*refused, *exc.problems]), [*config.warnings, *cautions]
    skipped = [_skipped(config, entry) for entry in gateway.skipped]
    try:
        problems, warnings = anyio.run(_probe, gateway) if probe else ([], [])
    finally:
        for close in gateway._closers:
            close()
    return in_file_order([*refused, *problems]), [*config.warnings, *in_file_order([*cautions, *skipped, *warnings])]


def _skipped(config: GatewayConfig, entry: str) -> Problem:
    """An optional server `build_gateway` left out (`"name: why"`), as a warning at its entry."""
    name, _, why = entry.partition(": ")
    index = next(server.index for server in config.servers if server.name == name)
    return config.problem(f"servers[{index}]", f"is optional and skipped: {why}")


async def _probe(gateway: Gateway) -> tuple[list[Problem], list[Problem]]:
    """`health-check`'s probe (every backend at once, each within its `timeout`), its findings as problems."""
    config = gateway.config
    tools: dict[str, list[str]] = {}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for health in await probe_gateway(gateway):
        if health.state == "healthy":
            tools[health.name] = list(health.tools)
            continue
        index = next(server.index for server in config.servers if server.name == health.name)
        verb = "cannot be reached" if health.state == "unreachable" else "is unhealthy"
        found = config.problem(f"servers[{index}]", f"{verb}: {health.reason}")
        (warnings if health.optional else problems).append(found)
    return problems, warnings + _unmatched(config, tools) + route_warnings(config, tools)


def _unmatched(config: GatewayConfig, tools: dict[str, list[str]]) -> list[Problem]:
    """A warning for each `tools/call:<name>` selector that matches no tool of a reachable backend it applies to."""
    warnings: list[Problem] = []
    for path, text, servers in _selectors(config):
        selector = Selector.parse(text)
        if selector.method is None or selector.target is None or selector.target == "*":
            continue
        if not Selector.parse(selector.method).matches_parts("tools/call", None):
            continue  # prompts/get, resources/read: not checked against tools
        reached = [server for server in servers if server in tools]
        names = sorted({tool for server in reached for tool in tools[server]})
        if not reached or any(selector.matches_parts("tools/call", name) for name in names):
            continue
        message = f"{text!r} matches no tool of {', '.join(reached)}{did_you_mean(selector.target, names)}"
        warnings.append(config.problem(path, message))
    return warnings


def _selectors(config: GatewayConfig) -> Iterator[tuple[str, str, list[str]]]:
    """(key path, selector, the servers it applies to) for every selector in the config."""
    everyone = [server.name for server in config.servers]
    for text in config.auth.scopes:
        yield f"auth.scopes.{text}", text, everyone
    for text in config.breaker.timeouts:
        yield f"breaker.timeouts.{text}", text, everyone
    for index, policy in enumerate(config.ratelimit.policies):
        for selector in policy.selectors:
            yield f"ratelimit.policies[{index}].selector", selector.text, everyone
    for server in config.servers:
        where, own = f"servers[{server.index}]", [server.name]
        for text in server.scopes or {}:
            yield f"{where}.scopes.{text}", text, own
        for text in server.breaker_timeouts or {}:
            yield f"{where}.breaker_timeouts.{text}", text, own
        for index, policy in enumerate(server.ratelimit_policies or ()):
            for selector in policy.selectors:
                yield f"{where}.ratelimit_policies[{index}].selector", selector.text, own
