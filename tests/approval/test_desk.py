"""The 2025-11-25 question table on its own: bounded in total and per caller, freed when a question closes."""

from __future__ import annotations

from mcp_middleware.approval.legacy import ID_PREFIX, ElicitationDesk, can_show_forms
from mcp_middleware.core import Principal
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY


def scope_of(subject: str) -> dict[str, object]:
    return {"type": "http", PRINCIPAL_SCOPE_KEY: Principal(subject=subject, client_id="c")}


def test_one_caller_cannot_take_every_slot() -> None:
    desk = ElicitationDesk(max_questions=3, max_per_owner=2)
    alice, bob, carol = scope_of("alice"), scope_of("bob"), scope_of("carol")
    first, second = desk.open(alice, "s1"), desk.open(alice, "s1")
    assert first is not None and second is not None and first.id != second.id
    assert first.id.startswith(ID_PREFIX) and len(first.id) == len(ID_PREFIX) + 32
    assert desk.open(alice, "s2") is None  # alice's own limit
    assert desk.open(bob, "s3") is not None  # bob still gets one
    assert desk.open(carol, "s4") is None  # the table is full
    desk.close(first)
    desk.close(first)  # closing twice frees one slot, not two
    assert desk.open(carol, "s4") is not None
    assert desk.open(alice, "s1") is None  # alice: one open + carol's took the freed total slot


def test_only_form_elicitation_counts() -> None:
    assert can_show_forms({"elicitation": {}}) and can_show_forms({"elicitation": {"form": {}, "url": {}}})
    assert not can_show_forms({"elicitation": {"url": {}}})
    assert not can_show_forms({"elicitation": True}) and not can_show_forms({}) and not can_show_forms(None)
    assert not can_show_forms({"elicitation": {"form": True}})
