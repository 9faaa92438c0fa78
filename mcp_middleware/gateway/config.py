"""The gateway's one config file (TOML), validated into typed settings with precise errors.

Every problem names the offending key as a path (`servers[2].url`) and, where the file
shows it, the line; all problems are reported at once. Secrets are never required in
the file: any string may be `"${env:NAME}"` (or contain it), resolved from the
environment at load time, and a missing variable is an error naming the key.

The file speaks the middlewares' vocabulary (`consecutive_failures`, `open_for`, `limit`,
`failure`, `record_enduser`, `audiences`); the older names are accepted with a warning
(`GatewayConfig.warnings`) until the next release. The schema lives beside this module:
`config_types` (the settings), `config_sections`, `config_servers` and `config_auth` (the
readers), `validation` (the real parsers), `toml_reader` (keys, lines and problems);
`config_check` runs what `serve` runs beyond the file (`mcp-gateway check-config`).

>>> config = parse_config('''
... [[servers]]
... name = "demo"
... app = "examples.gateway.demo:server"
... ''')
>>> config.servers[0].name, config.gateway.port
('demo', 8000)
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from mcp_middleware.core.errors import McpMiddlewareError
from mcp_middleware.ratelimit import QuotaPolicy

from . import config_sections as sections
from .config_approval import ApprovalSettings, approval, approval_problems
from .config_audit import audit
from .config_auth import auth, dev_mode_exposure, dev_mode_problem
from .config_curation import virtual_servers
from .config_policy import PolicySettings, policy, policy_problems
from .config_routes import routes
from .config_servers import server
from .config_types import (
    AggregateSettings,
    AuditSettings,
    AuthSettings,
    BreakerSettings,
    CacheSettings,
    FrontDoorSettings,
    GatewayConfig,
    GatewaySettings,
    RateLimitSettings,
    ServerSettings,
    StaticTokenSettings,
    TracingSettings,
    VirtualServerSettings,
)
from .toml_reader import Lines, Problem, Reader
from .validation import quota_storage_problem

__all__ = [
    "AggregateSettings",
    "AuditSettings",
    "AuthSettings",
    "BreakerSettings",
    "CacheSettings",
    "ConfigError",
    "FrontDoorSettings",
    "GatewayConfig",
    "GatewaySettings",
    "PolicySettings",
    "Problem",
    "RateLimitSettings",
    "ServerSettings",
    "StaticTokenSettings",
    "TracingSettings",
    "VirtualServerSettings",
    "dev_mode_exposure",
    "dev_mode_problem",
    "load_config",
    "parse_config",
]


class ConfigError(McpMiddlewareError, ValueError):
    """The config file cannot be used; `problems` lists every reason, each naming its key."""

    def __init__(self, problems: list[Problem], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}\n{lines}")


def parse_config(text: str, *, source: Path | None = None) -> GatewayConfig:
    """Validate TOML text; raises :class:`ConfigError` listing every problem."""
    name = str(source) if source else "config"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"at line (\d+)", str(exc))
        line = int(at.group(1)) if at else None
        raise ConfigError([Problem("(file)", f"is not valid TOML: {exc}", line)], name) from None
    problems: list[Problem] = []
    top = Reader(data, "", problems, Lines(text))
    names: dict[str, str] = {}
    servers = tuple(
        found for index, table in enumerate(top.tables("servers")) if (found := server(table, index, names)) is not None
    )
    gateway = sections.gateway(top.table("gateway"))
    config = GatewayConfig(
        gateway=gateway,
        front_door=sections.front_door(top.table("front_door")),
        servers=servers,
        aggregate=sections.aggregate(top.table("aggregate")),
        auth=auth(top.table("auth")),
        ratelimit=sections.ratelimit(top.table("ratelimit")),
        breaker=sections.breaker(top.table("breaker")) if "breaker" in data else BreakerSettings(),
        cache=sections.cache(top.table("cache")) if "cache" in data else CacheSettings(),
        tracing=sections.tracing(top.table("tracing")) if "tracing" in data else TracingSettings(),
        routes=routes(top, servers),
        virtual_servers=virtual_servers(top, names, gateway.prefix) if "virtual_servers" in data else (),
        policy=policy(top.table("policy"), source),
        audit=audit(top.table("audit")) if "audit" in data else AuditSettings(),
        approval=approval(top.table("approval"), source) if "approval" in data else ApprovalSettings(),
        source=source,
        warnings=tuple(top.warnings),
        lines=top.lines,
    )
    top.seen.update({"breaker", "cache", "tracing", "audit", "approval"})
    top.done()
    problems += _across_sections(config, problems)
    problems += policy_problems(config)
    problems += approval_problems(config)
    if problems:
        raise ConfigError(in_file_order(problems), name)
    return config


def _across_sections(config: GatewayConfig, problems: list[Problem]) -> list[Problem]:
    """Problems no one section can see: dev mode's exposure, quotas on a store `limits` cannot use, no servers."""
    found: list[Problem] = []
    lines = config.lines
    assert lines is not None
    exposed = dev_mode_problem(config) if not any(p.path.startswith(("auth", "gateway")) for p in problems) else None
    if exposed is not None:
        found.append(Problem(exposed.path, exposed.message, lines.find("auth.mode") or lines.find(exposed.path)))
    every = [*config.ratelimit.policies, *(p for s in config.servers for p in s.ratelimit_policies or ())]
    quota_problem = quota_storage_problem(config.ratelimit.store)
    if quota_problem is not None and any(isinstance(policy, QuotaPolicy) for policy in every):
        found.append(config.problem("ratelimit.store", quota_problem))
    if config.routes and not config.aggregate.enabled:
        found.append(config.problem("routes[0]", "routes serve the aggregate, and [aggregate] enabled = false"))
    if not config.servers and not any(p.path.startswith("servers") for p in problems):
        found.append(Problem("servers", "at least one [[servers]] entry is needed"))
    return found


def in_file_order(problems: list[Problem]) -> list[Problem]:
    """Problems by line; keys not in the file last."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a config file (see :func:`parse_config`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("(file)", f"cannot be read: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem("(file)", "is not UTF-8 text")], str(path)) from None
    return parse_config(text, source=path.resolve())
