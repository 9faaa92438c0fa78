"""`[servers.tools]`, `[servers.prompts]`, `[servers.resources]` and `[[virtual_servers]]`: the governed surface.

Read into the router's own types (:class:`~mcp_middleware.router.curation.Curation`, the arguments of
`McpRouter.virtual_server`), so the file and the Python API cannot disagree. Every problem names its key
and line; unknown keys and annotation names get a "did you mean".

    [[servers]]
    name = "crm"
    hidden_refusal = "forbidden"           # or "unknown" (the default: -32602, as if it did not exist)
    [servers.tools]
    allow = ["search_*", "create"]
    deny = ["*_admin"]
    rename = { search_docs = "search" }
    [servers.tools.override.search]        # by the backend's name, or the public name it is renamed to
    description = "Search the documentation"
    annotations = { destructiveHint = true }
    [servers.resources]
    allow = ["crm://public/"]
    rename = { "crm://public/" = "docs://" }   # backend prefix = the prefix clients see
    [servers.resources.override."docs://readme"]   # by the backend's URI, or its public spelling
    description = "Start here"

    [[virtual_servers]]
    name = "support"
    tools = ["crm:search*", "tickets:create"]
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mcp_middleware.router import McpRouter
from mcp_middleware.router.curation import ANNOTATION_KEYS, Curation, ItemRules, Override, ResourceRules

from .toml_reader import Reader, describe, did_you_mean

if TYPE_CHECKING:
    from .assembly import Assembly

__all__ = ["VirtualServerSettings", "add_virtual_server", "curation", "virtual_servers"]

logger = logging.getLogger("mcp_middleware.gateway")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_CURATION_KEYS = ("tools", "prompts", "resources", "hidden_refusal")


@dataclass(frozen=True)
class VirtualServerSettings:
    """One `[[virtual_servers]]` entry: `McpRouter.virtual_server()`'s arguments."""

    name: str
    tools: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    path: str | None = None
    """Where it is served (default `{prefix}/{name}`)."""
    index: int = 0


def curation(reader: Reader) -> Curation | None:
    """A server's curation from its `tools`/`prompts`/`resources` tables and `hidden_refusal`; None when absent."""
    if not any(key in reader.data for key in _CURATION_KEYS):
        return None
    refusal: Literal["unknown", "forbidden"] = reader.string(
        "hidden_refusal", "unknown", choices=("unknown", "forbidden")
    )
    tools = _items(reader.table("tools"), "tools") if "tools" in reader.data else ItemRules("tools")
    prompts = _items(reader.table("prompts"), "prompts") if "prompts" in reader.data else ItemRules("prompts")
    resources = _resources(reader.table("resources")) if "resources" in reader.data else ResourceRules()
    return Curation(tools=tools, prompts=prompts, resources=resources, refusal=refusal)


def _items(reader: Reader, noun: Literal["tools", "prompts"]) -> ItemRules:
    allow = _globs(reader, "allow")
    deny = _globs(reader, "deny")
    rename = reader.string_map("rename") if "rename" in reader.data else {}
    overrides = _overrides(reader.table("override"), noun) if "override" in reader.data else {}
    reader.done()
    try:
        rules = ItemRules(noun, allow, deny, rename, overrides)
    except ValueError as exc:  # the router's own rule (portable, distinct public names), not a copy of it
        reader.problem("rename", str(exc).removeprefix(f"{noun}.rename: "))
        rules = ItemRules(noun, allow, deny, {}, overrides)
    for backend in rename:
        decision = rules.decide(backend)
        if not decision.visible:
            reader.problem(f"rename.{backend}", f"renames a {noun[:-1]} that is hidden ({decision.rule})")
    for name in overrides:
        if not rules.decide(rules.own_name(name)).visible:
            reader.problem(f"override.{name}", f"overrides a {noun[:-1]} that is hidden by allow/deny: it never shows")
    return rules


def _globs(reader: Reader, key: str) -> tuple[str, ...]:
    globs = reader.strings(key, ())
    for glob in globs:
        if not glob.strip():
            reader.problem(key, "must not contain an empty pattern")
    return globs


def _overrides(reader: Reader, noun: str) -> dict[str, Override]:
    found: dict[str, Override] = {}
    for name in list(reader.data):
        table = reader.table(name)
        description = table.string("description", None)
        annotations: dict[str, Any] = {}
        if "annotations" in table.data:
            if noun != "tools":
                table.problem("annotations", "only tools have annotations")
                table.raw("annotations")
            else:
                annotations = _annotations(table.table("annotations"))
        table.done()
        if description is None and not annotations:
            continue
        found[name] = Override(description=description, annotations=annotations)
    return found


def _annotations(reader: Reader) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in reader.data.items():
        reader.seen.add(key)
        if key not in ANNOTATION_KEYS:
            reader.problem(key, "is not a tool annotation" + did_you_mean(key, sorted(ANNOTATION_KEYS)))
        elif key == "title" and not isinstance(value, str):
            reader.problem(key, f"must be a string, not {describe(value)}")
        elif key != "title" and not isinstance(value, bool):
            reader.problem(key, f"must be true or false, not {describe(value)}")
        else:
            values[key] = value
    return values


def _resources(reader: Reader) -> ResourceRules:
    allow = _globs(reader, "allow")
    deny = _globs(reader, "deny")
    for key, prefixes in (("allow", allow), ("deny", deny)):
        for prefix in prefixes:
            if any(char in prefix for char in "*?["):
                reader.problem(key, f"holds URI prefixes, not globs: {prefix!r}")
    rename = reader.string_map("rename") if "rename" in reader.data else {}
    overrides = _overrides(reader.table("override"), "resources") if "override" in reader.data else {}
    reader.done()
    try:
        rules = ResourceRules(allow, deny, rename, overrides)
    except ValueError as exc:  # the router's own rule (a scheme, a boundary, no overlap, no way out), not a copy
        reader.problem("rename", str(exc).removeprefix("resources.rename: "))
        return ResourceRules(allow, deny, override=overrides)
    for backend in rename:
        if not rules.decide_template(backend).visible:
            reader.problem(f"rename.{backend}", "renames a prefix that allow/deny hide entirely: it never shows")
    return rules


def virtual_servers(top: Reader, servers: dict[str, str], prefix_of: str) -> tuple[VirtualServerSettings, ...]:
    """Every `[[virtual_servers]]` entry; `servers` maps each `[[servers]]` name to its key path."""
    found: list[VirtualServerSettings] = []
    names: set[str] = set()
    paths: set[str] = set()
    for index, reader in enumerate(top.tables("virtual_servers")):
        name = reader.string("name")
        if isinstance(name, str) and not _NAME.match(name):
            reader.problem("name", f"must match [A-Za-z0-9_-]{{1,48}}, not {name!r}")
        elif isinstance(name, str) and (name in servers or name in names):
            reader.problem("name", f"{name!r} is already the name of a server or virtual server")
        selected = {kind: _selection(reader, kind, servers) for kind in ("tools", "prompts", "resources")}
        path = reader.string("path", None)
        if path is not None and (not path.startswith("/") or (path != "/" and path.endswith("/"))):
            reader.problem("path", f"must start with '/' and not end with one, not {path!r}")
            path = None
        served = path or (f"{prefix_of}/{name}" if isinstance(name, str) else None)
        if path is not None and (path == prefix_of or path in (f"{prefix_of}/{s}" for s in servers)):
            reader.problem("path", f"{path} is already served")
        elif served is not None and served in paths:
            reader.problem("path", f"{served} is already the path of another virtual server")
        if served is not None:
            paths.add(served)
        if not any(selected.values()):
            reader.problem(None, "selects nothing: give tools, prompts or resources as 'server:pattern'")
        reader.done()
        if isinstance(name, str):
            names.add(name)
            found.append(
                VirtualServerSettings(
                    name, selected["tools"], selected["prompts"], selected["resources"], path=path, index=index
                )
            )
    return tuple(found)


def _selection(reader: Reader, key: str, servers: dict[str, str]) -> tuple[str, ...]:
    patterns = reader.strings(key, ())
    for pattern in patterns:
        server, colon, rest = pattern.partition(":")
        if not colon or not rest:
            what = "uri-prefix" if key == "resources" else "glob"
            reader.problem(key, f"{pattern!r} must be 'server:{what}' (the server it comes from, then what)")
        elif server not in servers:
            reader.problem(key, f"{pattern!r} names no [[servers]] entry {server!r}" + did_you_mean(server, servers))
    return patterns


def add_virtual_server(router: McpRouter, virtual: VirtualServerSettings, assembly: Assembly) -> None:
    """Serve one `[[virtual_servers]]` entry: its own door (audience, metadata) and budget, the backends' stacks.

    Patterns naming an optional server that was skipped are dropped with a warning (and the virtual
    server too when nothing is left), as the skipped server itself is.
    """
    kept: dict[str, tuple[str, ...]] = {}
    for kind in ("tools", "prompts", "resources"):
        patterns: tuple[str, ...] = getattr(virtual, kind)
        kept[kind] = tuple(p for p in patterns if p.partition(":")[0] in router.mounts)
        for dropped in sorted(set(patterns) - set(kept[kind])):
            logger.warning("virtual server %s: %s %r skipped (its server is not mounted)", virtual.name, kind, dropped)
    if not any(kept.values()):
        logger.warning("virtual server %s skipped: none of the servers it selects is mounted", virtual.name)
        return
    path = virtual.path or f"{router.prefix}/{virtual.name}"
    router.virtual_server(
        virtual.name,
        tools=kept["tools"],
        prompts=kept["prompts"],
        resources=kept["resources"],
        path=path,
        middleware=assembly.virtual_door(path),
        own_middleware=assembly.virtual_own(virtual.name),
    )
