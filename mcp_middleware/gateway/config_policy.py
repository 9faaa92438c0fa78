"""`[policy]`: rule files, roles and argument validation, read and checked (every rule compiled) at load time.

    [policy]
    files = ["policies/*.toml"]          # CEL rule files, relative to this file's folder
    default = "deny"                     # when no rule and no role applies
    claims = ["home", "groups"]          # token claims rules may read (principal.claims.home)
    role_claim = "roles"                 # the claim naming the caller's roles
    validate_arguments = true            # or a list of server names

    [policy.roles]
    support = ["tools/call:crm_*"]       # RBAC: a role may use what its selectors match

A rule file that does not compile is a problem at `policy.files` naming the rule file and its line.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .toml_reader import Problem, Reader

if TYPE_CHECKING:
    from .config_types import GatewayConfig

__all__ = ["PolicySettings", "matching_files", "policy", "policy_problems"]


@dataclass(frozen=True)
class PolicySettings:
    files: tuple[str, ...] = ()
    """Globs as written (relative to the config file's folder)."""
    paths: tuple[Path, ...] = ()
    """The rule files they matched, in order."""
    default: Literal["deny", "allow"] = "deny"
    claims: tuple[str, ...] = ()
    role_claim: str = "roles"
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    filter_lists: bool = True
    validate_arguments: bool | tuple[str, ...] = False
    """`true`: every backend's `tools/call` arguments are validated; a list: those backends'."""

    @property
    def enabled(self) -> bool:
        return bool(self.paths or self.roles)

    def validates(self, server: str) -> bool:
        chosen = self.validate_arguments
        return chosen if isinstance(chosen, bool) else server in chosen


def matching_files(reader: Reader, key: str, patterns: tuple[str, ...], source: Path | None) -> list[Path]:
    """The files `key`'s `patterns` name (globs relative to the config's folder), each once; a glob matching none
    is a problem."""
    base = source.parent if source is not None else Path.cwd()
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(Path(found) for found in glob.glob(str(base / pattern)))
        if not matched:
            reader.problem(key, f"{pattern!r} matches no file (relative to {base})")
        paths += [path for path in matched if path not in paths]
    return paths


def policy(reader: Reader, source: Path | None) -> PolicySettings:
    """Read `[policy]`; the rule files are compiled now, so a broken one fails the load (and `check-config`)."""
    from .validation import selector  # (config_types imports this module, and validation imports config_types)

    d = PolicySettings()
    if not reader.data:
        reader.done()
        return d
    files = reader.strings("files", ())
    paths = matching_files(reader, "files", files, source)
    roles_table = reader.table("roles")
    roles = {name: roles_table.strings(name, ()) for name in list(roles_table.data)}
    for name, granted in roles.items():
        for text in granted:
            selector(roles_table, name, text)
    roles_table.done()
    raw_validate = reader.raw("validate_arguments", False)
    validate: bool | tuple[str, ...] = False
    if isinstance(raw_validate, bool):
        validate = raw_validate
    elif isinstance(raw_validate, list) and all(isinstance(item, str) for item in raw_validate):
        validate = tuple(raw_validate)
    else:
        reader.problem("validate_arguments", "must be true, false or a list of server names")
    settings = PolicySettings(
        files=files,
        paths=tuple(paths),
        default=reader.string("default", d.default, choices=("deny", "allow")),
        claims=reader.strings("claims", d.claims),
        role_claim=reader.string("role_claim", d.role_claim),
        roles=roles,
        filter_lists=reader.boolean("filter_lists", d.filter_lists),
        validate_arguments=validate,
    )
    reader.done()
    if settings.paths:
        _compile(reader, settings.paths)
    return settings


def _compile(reader: Reader, paths: tuple[Path, ...]) -> None:
    from mcp_middleware.policy import CelPolicyEngine, PolicyError

    try:
        CelPolicyEngine.from_files(paths)
    except PolicyError as exc:
        for problem in exc.problems:
            reader.problem("files", str(problem))


def policy_problems(config: GatewayConfig) -> list[Problem]:
    """What `[policy]` says of the servers: `validate_arguments` must name configured servers."""
    chosen = config.policy.validate_arguments
    if isinstance(chosen, bool):
        return []
    names = {server.name for server in config.servers}
    return [
        config.problem("policy.validate_arguments", f"names {name!r}, which is no [[servers]] entry")
        for name in chosen
        if name not in names
    ]
