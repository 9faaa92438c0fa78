"""A 2025-11-25 session whose `initialize` this middleware did not see (another instance, a reload): it is
asked all the same, and a client that cannot answer refuses the call with its error."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import MCPError, types

from mcp_middleware.approval import ApprovalMiddleware
from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from tests.approval.conftest import TOKENS, Files, client_for, files_server
from tests.auth.conftest import serve_late

pytestmark = pytest.mark.anyio


def forgetful(serve: Any, files: Files) -> tuple[str, ApprovalMiddleware]:
    app = files_server(files).streamable_http_app()
    approval = ApprovalMiddleware(app, backend="files", timeout=5)
    served, slot = serve_late(serve, app)
    verifier = StaticTokenVerifier(TOKENS, resource=served.mcp_url)
    slot.app = AuthMiddleware(approval, verifier=verifier, resource=served.mcp_url, required_scopes=["mcp"])
    return str(served.mcp_url), approval


async def test_an_unknown_session_is_asked(serve: Any) -> None:
    files = Files()
    url, approval = forgetful(serve, files)

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"approve": True})

    async with client_for(url, "legacy", "alice", elicitation_callback=approve) as client:
        approval.desk._sessions.clear()  # as if the session had been opened at another instance
        result = await client.call_tool("delete_file", {"path": "/u"})
    assert result.content[0].text == "deleted /u"  # type: ignore[union-attr]


async def test_an_unknown_session_that_cannot_answer_refuses(serve: Any) -> None:
    files = Files()
    url, approval = forgetful(serve, files)
    async with client_for(url, "legacy", "alice") as client:  # no elicitation callback
        approval.desk._sessions.clear()
        with pytest.raises(MCPError) as raised:
            await client.call_tool("delete_file", {"path": "/v"})
    assert raised.value.code == -32013
    assert raised.value.data["approval"] == "client_error"
    assert files.calls == []
