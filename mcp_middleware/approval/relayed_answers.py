"""2025-11-25 answers that reach another process than the one that asked, carried by the approval store.

A question (`elicitation/create` on a call's stream) waits in the process that asked. With a
shared store (:class:`RedisApprovalStore`) it also waits under a record keyed by its id and the
asking principal: a client's answer POST that lands on another worker or instance (its session
resumed there through a sealed session handle) is delivered through the store and wakes the
question where it waits. The key binds the principal (another principal's answer is an answer to
nothing: 404), and the id is 128 random bits sent only on the call's own stream. Across processes the
session is not compared: a resumed session's inner id may differ from one process to another.

At the aggregate too: the router's id for the question names the backend whose stack asked
(:mod:`mcp_middleware.router.answer_ids`), so the instance the answer reaches passes it into that
stack, where this module delivers it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import anyio
import orjson
from starlette.types import Scope

from mcp_middleware.core import McpRequest, get_principal

from .legacy import Question
from .state import approved
from .store import ApprovalStore, ApprovalStoreUnavailable, CallbackAnswer, Delivery

__all__ = ["deliver_elsewhere", "question_key", "relayed_answer"]


def question_key(question_id: str, principal_key: str) -> str:
    return f"q.{question_id}.{hashlib.sha256(principal_key.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


async def deliver_elsewhere(store: ApprovalStore, scope: Scope, request: McpRequest) -> bool:
    """Deliver a client's answer to a question this process does not hold; True when one was waiting."""
    assert isinstance(request.id, str)
    try:
        message = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        message = {}
    result = message.get("result") if isinstance(message, dict) else None
    yes, word = approved(result) if result is not None else (False, "error")
    try:
        delivery = await store.deliver(question_key(request.id, get_principal(scope).key), CallbackAnswer(yes, word))
    except ApprovalStoreUnavailable:
        return False
    return delivery is Delivery.ACCEPTED


async def relayed_answer(store: ApprovalStore, key: str, question: Question, patience: float) -> None:
    """Wait for an answer delivered elsewhere; set it on `question` (the local answer may come first)."""
    await store.wait(key, patience)
    if question.answered.is_set():
        return
    with anyio.CancelScope(shield=True):
        try:
            got = await store.release(key)
        except ApprovalStoreUnavailable:
            return
    if got is not None and not question.answered.is_set():
        question.answer = _as_result(got)
        question.answered.set()


def _as_result(answer: CallbackAnswer) -> Mapping[str, Any]:
    if answer.approved:
        return {"action": "accept", "content": {"approve": True}}
    return {"action": answer.reason if answer.reason in ("decline", "cancel", "error", "malformed") else "decline"}
