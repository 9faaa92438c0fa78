"""The approval's decisions are on the request's span, as the tracing middleware records every decision."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import types

from mcp_middleware.core import CoreConfig
from mcp_middleware.tracing import TracingMiddleware
from tests.approval.conftest import Files, build, client_for
from tests.conftest import ERAS, Era
from tests.support.waiting import until
from tests.tracing.conftest import Spans, spans  # noqa: F401  (the fixture)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_the_span_says_the_call_was_approved(era: Era, serve: Any, spans: Spans) -> None:  # noqa: F811
    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"approve": True})

    app = TracingMiddleware(build(Files()), tracer_provider=spans.provider, config=CoreConfig(paths=("/mcp", "/mcp/*")))
    served = serve(app)
    async with client_for(f"{served.base}/mcp/files", era, "alice", elicitation_callback=approve) as client:
        await client.call_tool("delete_file", {"path": "/srv/traced"})
    expected = 1 if era == "legacy" else 2
    await until(lambda: len([s for s in spans.ours() if s.name == "tools/call delete_file"]) >= expected)
    calls = [s for s in spans.ours() if s.name == "tools/call delete_file"]
    outcomes = [dict(s.attributes or {}).get("mcp_middleware.approval.outcome") for s in calls]
    # legacy: one request, asked then approved (the last decision of a component is its outcome);
    # modern: the question and the approved retry are two requests
    assert outcomes == (["approved"] if era == "legacy" else ["required", "approved"])
