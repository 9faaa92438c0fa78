"""What requests that name no tool refer to, as the policy judges them; and the template list it trims.

A `completion/complete` names a prompt or a resource template: completing a prompt's arguments tells
their names and likely values, so it is allowed exactly when the prompt is *listed* for the caller
(`prompts/get` on it, decided as at list time: the completion's partial value is not the prompt's
arguments), and a template's completion exactly when the template is listed (`resources/read` on the
template, as `resources/templates/list` is trimmed and as the aggregate gates templates). A
2026-07-28 `subscriptions/listen` filter names resources to be told of: each is decided as a
`resources/subscribe` of that URI, as the 2025-era request is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

from mcp_middleware.core.list_filter import ListFilter, loads_as_client

__all__ = ["TEMPLATES_LIST", "TemplateListFilter", "completion_reference", "listened_uris"]

TEMPLATES_LIST = "resources/templates/list"
_MAX_LISTENED = 1000
"""A listen filter naming more resources than this is refused whole (bounded work for a hostile filter)."""


def completion_reference(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """`(method, target)` the completion's `ref` stands for, or None when it names neither (the backend answers)."""
    ref = params.get("ref")
    if not isinstance(ref, dict):
        return None
    if ref.get("type") == "ref/prompt" and isinstance(name := ref.get("name"), str):
        return "prompts/get", name
    if ref.get("type") == "ref/resource" and isinstance(uri := ref.get("uri"), str):
        return "resources/read", uri
    return None


def listened_uris(params: Mapping[str, Any]) -> list[str] | None:
    """The resource URIs a listen filter names (strings only); None when there are too many to judge."""
    wanted = params.get("notifications")
    uris = wanted.get("resourceSubscriptions") if isinstance(wanted, dict) else None
    if not isinstance(uris, list):
        return []
    if len(uris) > _MAX_LISTENED:
        return None
    return [uri for uri in uris if isinstance(uri, str)]


class TemplateListFilter(ListFilter):
    """The list filter's streaming machinery for `resources/templates/list` (items named by `uriTemplate`)."""

    __slots__ = ()

    def _rewrite(self, body: bytes) -> bytes | None:
        message = loads_as_client(body)
        if not isinstance(message, dict) or message.get("id") != self._request_id:
            return None
        result = message.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("resourceTemplates"), list):
            return None
        allowed = self._item_allowed
        result["resourceTemplates"] = [
            item
            for item in result["resourceTemplates"]
            if isinstance(item, dict)
            and isinstance(item.get("uriTemplate"), str)
            and allowed("resources/read", item["uriTemplate"], item)
        ]
        try:
            return orjson.dumps(message)
        except TypeError:  # a lone surrogate orjson will not write: the standard library escapes it
            return json.dumps(message, separators=(",", ":")).encode()
