"""The aggregate's side of curation: a backend's listed models curated, and the names hidden ones would have had.

The path mount curates JSON as it streams (:mod:`.curation_layer`); the catalog holds `mcp_types`
models fetched through the backend's shared session, so the same rules are applied here to models.
Both ask :class:`~mcp_middleware.router.curation.ItemRules` the same questions, so both doors list
the same surface (tests/router/test_curation_properties.py compares them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mcp_types

from .curation import Curation, Decision, Selection
from .names import NameTable, NamingPolicy, PrefixMode, portable

__all__ = ["curate_model", "curated_entries", "hidden_names"]


def curated_entries(
    curation: Curation | None,
    selection: Selection | None,
    server: str,
    kind: str,
    key: str,
    items: list[Any],
    originals: dict[tuple[str, str], str],
    hidden_at: list[tuple[str, str, str]],
) -> list[tuple[str, Any]]:
    """`(server, public copy)` of each item clients see; notes each renamed item's backend name (or URI) in
    `originals` and the would-be names of hidden tools and prompts (with the rule) in `hidden_at`."""
    kept: list[tuple[str, Any]] = []
    for item in items:
        curated = curate_model(curation, selection, kind, key, item)
        if isinstance(curated, Decision):
            if key == "name" and curation is not None:
                rules = curation.tools if kind == "tools" else curation.prompts
                hidden_at.append((server, rules.public(item.name), curated.rule))
            continue
        if curated is None:
            continue
        model, public = curated
        own: str = getattr(model, key)
        if public != own:
            originals[(server, public)] = own
            if key == "name":
                hidden_at.append((server, own, f"{kind}.rename: renamed"))
            model = model.model_copy(update={key: public})
        kept.append((server, model))
    return kept


def hidden_names(
    naming: NamingPolicy, table: NameTable | None, hidden_at: list[tuple[str, str, str]]
) -> dict[str, tuple[str, str]]:
    """The public names curated-away items would have had -> (server, rule), for refusing them as configured."""
    hidden: dict[str, tuple[str, str]] = {}
    for server, name, rule in hidden_at:
        public = naming.prefixed(server, name) if naming.prefix is PrefixMode.ALWAYS else portable(name)
        if (table is None or table.resolve(public) is None) and public not in hidden:
            hidden[public] = (server, rule)
    return hidden


def curate_model(
    curation: Curation | None, selection: Selection | None, kind: str, key: str, item: Any
) -> tuple[Any, str] | Decision | None:
    """One item of a backend's list (an `mcp_types` model) for the aggregate's catalog.

    `(public copy, curated key)` when clients see it; a hidden :class:`Decision` (its rule) when the
    curation hides it; None when a virtual server's selection does not take it (it does not exist there).
    """
    original: str = getattr(item, key)
    if kind in ("tools", "prompts"):
        noun = "tools" if kind == "tools" else "prompts"
        rules = None if curation is None else curation.tools if noun == "tools" else curation.prompts
        public = rules.public(original) if rules is not None else original
        if selection is not None and not selection.allows(noun, public):
            return None
        if rules is None:
            return item, original
        decision = rules.decide(original)
        if not decision.visible:
            return decision
        if rules.shadowed(original):
            return None
        update: dict[str, Any] = {}
        override = rules.override_for(original)
        if override is not None:
            if override.description is not None:
                update["description"] = override.description
            if override.annotations:
                own = getattr(item, "annotations", None)
                merged = {**(own.model_dump(by_alias=True, exclude_none=True) if own is not None else {})}
                merged.update(override.annotations)
                update["annotations"] = type(own).model_validate(merged) if own is not None else _annotations(merged)
        return (item.model_copy(update=update) if update else item), public
    template = kind == "resource_templates"
    resources = curation.resources if curation is not None else None
    if resources is not None and resources.shadowed(original):
        return None  # a renamed prefix took its spelling: unreachable, so not listed
    public_uri = resources.public_uri(original) if resources is not None else original
    if selection is not None and not selection.allows_uri(public_uri, template=template):
        return None  # a virtual server selects by the URIs clients see, as it selects tools by public name
    if resources is not None:
        decision = resources.decide_template(original) if template else resources.decide(original)
        if not decision.visible:
            return decision
        description = resources.description_for(original)
        if description is not None:
            item = item.model_copy(update={"description": description})
    return item, public_uri


def _annotations(values: Mapping[str, Any]) -> Any:
    return mcp_types.ToolAnnotations.model_validate(values)
