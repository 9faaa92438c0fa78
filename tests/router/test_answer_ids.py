"""The aggregate's ids for a backend's questions to a legacy client: what they carry, and where an answer may go.

The id names the backend and its own id (so another instance continuing the session can route the
answer, tests/gateway/test_sealed_answers.py). An answer naming a remote backend whose session this
instance does not hold is not a reason to open one there: it is dropped, and the backend sees nothing.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_middleware.router import HttpBackend, McpRouter
from mcp_middleware.router.answer_ids import answer_id, answer_target
from tests.gateway.sealed_backends import Recorded
from tests.support.requests import legacy_headers, legacy_session

pytestmark = pytest.mark.anyio

ids = st.one_of(st.integers(min_value=-(2**53), max_value=2**53), st.text(max_size=60))


@given(serial=st.integers(min_value=1, max_value=10**9), server=st.text(min_size=1, max_size=40), backend_id=ids)
def test_an_id_names_its_backend_and_the_backends_own_id(serial: int, server: str, backend_id: Any) -> None:
    public = answer_id(serial, server, backend_id)
    assert public.startswith(f"mcp-router-{serial}")
    assert answer_target(public) == (server, backend_id)


@given(text=st.text(max_size=200))
def test_anything_else_names_nothing_or_a_well_formed_pair(text: str) -> None:
    found = answer_target(text)
    assert found is None or (isinstance(found[0], str) and isinstance(found[1], str | int))


def test_a_backend_id_too_long_to_carry_keeps_a_local_id() -> None:
    public = answer_id(3, "jira", "x" * 600)
    assert public == "mcp-router-3" and answer_target(public) is None


async def test_an_answer_never_opens_a_session_at_a_remote_backend(serve: Any) -> None:
    """A legacy client that never called the remote backend (no session there) answers a question naming it."""
    backend = Recorded("remote")
    router = McpRouter()
    router.mount("remote", HttpBackend(serve(backend).mcp_url))
    served = serve(router)
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await legacy_session(http, served.mcp_url)
        answer = await http.post(
            served.mcp_url,
            json={"jsonrpc": "2.0", "id": answer_id(1, "remote", 1), "result": {"action": "accept", "content": {}}},
            headers=legacy_headers(session),
        )
    assert answer.status_code < 500, answer.text
    assert (backend.initializes, backend.carried) == (0, [])  # nothing reached it, no session was opened
