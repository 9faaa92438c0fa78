"""Every approval, refusal and timeout is in the audit record of its operation (and so on its span)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError, types

from mcp_middleware.audit import AuditMiddleware, AuditTrail, JsonlFileSink
from mcp_middleware.core import CoreConfig
from tests.approval.conftest import Files, build, client_for
from tests.audit.support import read_records
from tests.conftest import ERAS, Era
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


def answering(action: str) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        if action == "ignore":
            await anyio.sleep(30)
        content = {"approve": True} if action == "accept" else None
        return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    return callback


def calls(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(path) if r.get("method") == "tools/call"] if path.exists() else []


def approval_decisions(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d["outcome"], d.get("reason", "")) for d in record["decisions"] if d["component"] == "approval"]


@pytest.mark.parametrize("era", ERAS)
async def test_the_audit_record_carries_the_approval(era: Era, serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlFileSink(path)])
    files = Files()
    served = serve(AuditMiddleware(build(files), trail=trail, config=CoreConfig(paths=("/mcp", "/mcp/*"))))
    url = f"{served.base}/mcp/files"
    try:
        async with client_for(url, era, "alice", elicitation_callback=answering("accept")) as client:
            await client.call_tool("delete_file", {"path": "/srv/kept"})
        async with client_for(url, era, "alice", elicitation_callback=answering("decline")) as client:
            with pytest.raises(MCPError):
                await client.call_tool("delete_file", {"path": "/srv/refused"})
        if era == "legacy":  # only the handshake era waits for an answer
            async with client_for(url, era, "alice", elicitation_callback=answering("ignore")) as client:
                with pytest.raises(MCPError):
                    await client.call_tool("delete_file", {"path": "/srv/ignored"})
        expected = 3 if era == "legacy" else 4  # modern: the question and the approved retry are two operations
        await until(lambda: len(calls(path)) >= expected, 20)
    finally:
        trail.close()
    records = calls(path)
    by_outcome = [(approval_decisions(r), r["outcome"]["class"], r["outcome"].get("by")) for r in records]
    if era == "modern":
        assert by_outcome[0] == ([("required", "new")], "ok", None)  # input_required is a result
        assert by_outcome[1] == ([("approved", "")], "ok", None)
        assert by_outcome[2][0] == [("required", "new")]
        assert by_outcome[3] == ([("deny", "declined")], "refused", "approval")
    else:
        assert by_outcome[0] == ([("required", "new"), ("approved", "")], "ok", None)
        assert by_outcome[1] == ([("required", "new"), ("deny", "declined")], "refused", "approval")
        assert by_outcome[2] == ([("required", "new"), ("timeout", "")], "timeout", None)
    assert all(r["principal"]["client_id"] for r in records)
