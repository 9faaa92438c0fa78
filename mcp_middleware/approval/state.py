"""The 2026-07-28 approval round: the `input_required` answer, its sealed `requestState`, and reading the retry.

The middleware asks with one input request under its own key (:data:`INPUT_KEY`) and a `requestState`
of its own (:data:`STATE_PREFIX` + a token sealed with `Sealer(purpose="mcp-approval")`), carrying
the call's digest, the tool, the caller and a one-time nonce. On the retry it consumes only that key
and that state: a backend's own input keys pass through untouched. A state opens once (its nonce is
then spent in the approval store, for as long as the token could live, shared by every instance with
a Redis store), so a recorded retry cannot run the call again.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mcp_middleware.core.sealing import Sealer, SealError

from .call import ApprovalCall
from .store import ApprovalStore, MemoryApprovalStore

__all__ = ["INPUT_KEY", "STATE_PREFIX", "Retry", "RetryVerdict", "StateBook", "input_required_result"]

INPUT_KEY = "io.github.mcp-middleware/approval"
"""The `inputRequests`/`inputResponses` key this middleware asks and reads under (a backend's keys are its own)."""
STATE_PREFIX = "mcp-approval."
"""Marks a `requestState` as this middleware's (the sealed token follows)."""
APPROVE_FIELD = "approve"
MAX_CARRIED = 6000
"""Largest sealed payload (a backend's own state and answers carried through a question), in bytes."""

_PURPOSE = "mcp-approval"


class RetryVerdict(enum.Enum):
    """What a retry carrying (some of) the middleware's input says."""

    NONE = "none"
    """No approval input: ask."""
    APPROVED = "approved"
    DECLINED = "declined"
    ASK_AGAIN = "ask_again"
    """Its state is for other arguments, or expired, or no answer came with it: ask again."""
    INVALID = "invalid"
    """A state that is not ours, is for another tool or caller, or was spent: refused."""


@dataclass(frozen=True, slots=True)
class Retry:
    verdict: RetryVerdict
    reason: str = ""
    params: Mapping[str, Any] | None = None
    """On approval: the request's params without the middleware's own key and state."""


def approval_schema() -> dict[str, Any]:
    """The form: one boolean, false until the person says yes."""
    return {
        "type": "object",
        "properties": {
            APPROVE_FIELD: {
                "type": "boolean",
                "title": "Approve",
                "description": "Run this call",
                "default": False,
            }
        },
        "required": [APPROVE_FIELD],
    }


def approved(answer: Any) -> tuple[bool, str]:
    """Whether an elicitation result says yes (`accept` with `approve: true`), and the refusal's word if not."""
    if not isinstance(answer, Mapping):
        return False, "malformed"
    action = answer.get("action")
    if action != "accept":
        return False, action if action in ("decline", "cancel", "error") else "malformed"
    content = answer.get("content")
    if isinstance(content, Mapping) and content.get(APPROVE_FIELD) is True:
        return True, ""
    return False, "decline"


def elicitation_params(message: str) -> dict[str, Any]:
    return {"mode": "form", "message": message, "requestedSchema": approval_schema()}


def input_required_result(message: str, state: str) -> dict[str, Any]:
    return {
        "resultType": "input_required",
        "inputRequests": {INPUT_KEY: {"method": "elicitation/create", "params": elicitation_params(message)}},
        "requestState": state,
    }


def _tag(text: str) -> str:
    """A short digest standing for a name in the sealed state (a hostile tool name must not fill it)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _principal_tag(call: ApprovalCall) -> str:
    return _tag(call.principal.key)


class StateBook:
    """Seals request states and opens them at most once (spent nonces kept in `store` until they would expire)."""

    def __init__(
        self, secrets: list[str] | tuple[str, ...], *, ttl: float = 300.0, store: ApprovalStore | None = None
    ) -> None:
        self.sealer = Sealer(secrets, purpose=_PURPOSE)
        self.ttl = ttl
        self.store: ApprovalStore = store if store is not None else MemoryApprovalStore()

    def seal(self, call: ApprovalCall, params: Mapping[str, Any]) -> str | None:
        """The state of a new question about `call`; None when the backend's own round it carries is too large.

        A retry answering the *backend's* own question (its `requestState` and `inputResponses`,
        not ours) is carried inside the sealed state and handed back to the backend once approved,
        so a backend that asks its own questions completes its rounds (each round is approved anew).
        """
        payload: dict[str, Any] = {
            "d": call.digest,
            "t": _tag(call.tool),
            "b": _tag(call.backend),
            "p": _principal_tag(call),
            "n": os.urandom(12).hex(),
        }
        state = params.get("requestState")
        responses = params.get("inputResponses")
        if isinstance(state, str) and not state.startswith(STATE_PREFIX):
            payload["s"] = state
        if isinstance(responses, Mapping):
            carried = {key: value for key, value in responses.items() if key != INPUT_KEY}
            if carried:
                payload["r"] = carried
        plaintext = orjson.dumps(payload)
        if len(plaintext) > MAX_CARRIED:
            return None
        return STATE_PREFIX + self.sealer.seal(plaintext, ttl=self.ttl)

    async def read(self, call: ApprovalCall, params: Mapping[str, Any]) -> Retry:
        """Judge a retry's `inputResponses` and `requestState` for `call` (raises `ApprovalStoreUnavailable`)."""
        responses = params.get("inputResponses")
        state = params.get("requestState")
        answer = responses.get(INPUT_KEY) if isinstance(responses, Mapping) else None
        ours = isinstance(state, str) and state.startswith(STATE_PREFIX)
        if not ours:
            if answer is not None:  # an answer to our question without our state: nothing binds it to this call
                return Retry(RetryVerdict.INVALID, "answer_without_state")
            return Retry(RetryVerdict.NONE)
        assert isinstance(state, str)
        try:
            payload = orjson.loads(self.sealer.open(state[len(STATE_PREFIX) :]))
        except SealError as error:
            if error.reason == "expired":
                return Retry(RetryVerdict.ASK_AGAIN, "state_expired")
            return Retry(RetryVerdict.INVALID, f"state_{error.reason}")
        if not isinstance(payload, dict):
            return Retry(RetryVerdict.INVALID, "state_malformed")
        if (
            payload.get("t") != _tag(call.tool)
            or payload.get("b") != _tag(call.backend)
            or payload.get("p") != _principal_tag(call)
        ):
            return Retry(RetryVerdict.INVALID, "state_for_another_call")
        if payload.get("d") != call.digest:
            return Retry(RetryVerdict.ASK_AGAIN, "arguments_changed")
        if answer is None:
            return Retry(RetryVerdict.ASK_AGAIN, "no_answer")
        nonce = str(payload.get("n"))
        if not await self.store.spend(nonce, self.ttl + 1):
            return Retry(RetryVerdict.INVALID, "state_replayed")
        yes, word = approved(answer)
        if not yes:
            return Retry(RetryVerdict.DECLINED, word)
        rest = dict(params)
        del rest["requestState"]
        if isinstance(payload.get("s"), str):  # the backend's own round, carried through the question
            rest["requestState"] = payload["s"]
        assert isinstance(responses, Mapping)
        found = payload.get("r")
        carried: dict[str, Any] = found if isinstance(found, dict) else {}
        others = {**carried, **{key: value for key, value in responses.items() if key != INPUT_KEY}}
        if others:
            rest["inputResponses"] = others
        else:
            del rest["inputResponses"]
        return Retry(RetryVerdict.APPROVED, params=rest)
