"""ArgumentValidationMiddleware against real schemas: the conformance server's JSON Schema 2020-12 tool and a
fastmcp server's generated schemas, through the SDK client in both eras."""

from __future__ import annotations

from typing import Any, Literal

import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.core import Component
from mcp_middleware.policy import ArgumentValidationMiddleware, ToolCatalog
from mcp_middleware.policy.catalog import KnownTool
from tests.conformance.server import bare_app
from tests.conftest import ERAS, Era, connect, require
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

SCHEMA_TOOL = "json_schema_2020_12_tool"


async def invalid(client: Any, tool: str, arguments: dict[str, Any]) -> MCPError:
    with pytest.raises(MCPError) as raised:
        await client.call_tool(tool, arguments)
    return raised.value


@pytest.mark.parametrize("era", ERAS)
async def test_the_conformance_servers_2020_12_schema_is_enforced(era: Era, serve: Any) -> None:
    recorder = DecisionRecorder(ArgumentValidationMiddleware(bare_app()))
    served = serve(recorder)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        fine = await client.call_tool(SCHEMA_TOOL, {"name": "ana", "contactMethod": "email", "email": "a@x"})
        enum = await invalid(client, SCHEMA_TOOL, {"contactMethod": "fax", "email": "a@x"})
        extra = await invalid(client, SCHEMA_TOOL, {"email": "a@x", "nickname": "an"})
        conditional = await invalid(client, SCHEMA_TOOL, {"contactMethod": "phone", "email": "a@x"})  # then: phone
        nested = await invalid(client, SCHEMA_TOOL, {"email": "a@x", "address": {"city": 7}})  # through $ref
    assert "contactMethod='email'" in fine.content[0].text  # type: ignore[union-attr]
    assert (enum.code, enum.data["path"]) == (-32602, "$.contactMethod")
    assert "'fax' is not one of" in enum.data["message"]
    assert (extra.code, extra.data["path"]) == (-32602, "$")
    assert "nickname" in extra.data["message"]
    assert conditional.code == -32602 and "'phone' is a required property" in conditional.data["message"]
    assert (nested.code, nested.data["path"]) == (-32602, "$.address.city")
    assert "Invalid arguments for tool json_schema_2020_12_tool" in str(enum)
    assert recorder.outcomes(Component.ARGUMENTS).count("rejected") == 4


def fastmcp_server(ran: list[str]) -> Any:
    fastmcp = require("fastmcp", "the fastmcp extra is tested in CI")
    server = fastmcp.FastMCP("fast")

    @server.tool
    def transfer(amount: int, currency: Literal["EUR", "USD"], memo: str | None = None) -> str:
        ran.append("transfer")
        return f"{amount} {currency}"

    @server.tool
    def tag(labels: list[str], weight: float = 1.0) -> str:
        ran.append("tag")
        return ",".join(labels)

    return server.http_app(path="/mcp")


@pytest.mark.parametrize("era", ERAS)
async def test_a_fastmcp_servers_schemas_are_enforced_before_it_runs(era: Era, serve: Any) -> None:
    ran: list[str] = []
    served = serve(ArgumentValidationMiddleware(fastmcp_server(ran)))
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        ok = await client.call_tool("transfer", {"amount": 5, "currency": "EUR"})
        wrong_type = await invalid(client, "transfer", {"amount": "five", "currency": "EUR"})
        missing = await invalid(client, "transfer", {"amount": 5})
        item = await invalid(client, "tag", {"labels": ["a", 2]})
    assert ok.content[0].text == "5 EUR"  # type: ignore[union-attr]
    assert (wrong_type.data["path"], missing.data["path"], item.data["path"]) == ("$.amount", "$", "$.labels[1]")
    assert "'currency' is a required property" in missing.data["message"]
    assert ran == ["transfer"]  # the invalid calls never reached the tools


@pytest.mark.parametrize("era", ERAS)
async def test_a_call_before_any_list_fetches_the_schema_once(era: Era, serve: Any) -> None:
    ran: list[str] = []
    recorder = DecisionRecorder(ArgumentValidationMiddleware(fastmcp_server(ran)))
    served = serve(recorder)
    async with connect(served.mcp_url, era) as client:  # never lists: the middleware asks the backend itself
        refused = await invalid(client, "transfer", {"amount": 3, "currency": "GBP"})
        done = await client.call_tool("transfer", {"amount": 3, "currency": "USD"})
    assert (refused.code, refused.data["path"]) == (-32602, "$.currency")
    assert done.content[0].text == "3 USD" and ran == ["transfer"]  # type: ignore[union-attr]
    assert recorder.outcomes(Component.ARGUMENTS) == ["rejected", "allow"]


async def test_without_fetching_an_unknown_schema_passes_to_the_backend(serve: Any) -> None:
    ran: list[str] = []
    recorder = DecisionRecorder(ArgumentValidationMiddleware(fastmcp_server(ran), fetch_unknown=False))
    served = serve(recorder)
    body = modern_body("tools/call", {"name": "transfer", "arguments": {"amount": 3, "currency": "USD"}})
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(served.mcp_url, content=body, headers=modern_headers("tools/call", "transfer"))
    assert response.status_code == 200 and ran == ["transfer"]
    assert recorder.of(Component.ARGUMENTS) == [("bypass", {"reason": "schema_unknown"})]


def test_hostile_arguments_are_judged_in_bounded_work() -> None:
    validator = ArgumentValidationMiddleware(lambda scope, receive, send: None)  # type: ignore[arg-type, return-value]
    catalog = ToolCatalog()
    catalog.learn(
        [{"name": "t", "inputSchema": {"type": "object", "properties": {"xs": {"items": {"type": "integer"}}}}}]
    )
    known = catalog.get("t")
    assert known is not None
    problem = validator.check(known, {"xs": ["bad"] * 200_000})
    assert problem is not None and problem["path"].startswith("$.xs[")  # at most 16 errors are weighed
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    assert validator.check(known, {"xs": deep}) is not None
    long_key = {"x" * 100_000: 1}
    strict = ToolCatalog()
    strict.learn([{"name": "s", "inputSchema": {"type": "object", "additionalProperties": False}}])
    found = strict.get("s")
    assert found is not None
    message = validator.check(found, long_key)
    assert message is not None and len(message["message"]) <= 300


def test_a_changed_schema_gets_its_own_validator() -> None:
    validator = ArgumentValidationMiddleware(lambda scope, receive, send: None)  # type: ignore[arg-type, return-value]
    catalog = ToolCatalog()
    catalog.learn([{"name": "t", "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}])
    first = catalog.get("t")
    catalog.learn([{"name": "t", "inputSchema": {"type": "object", "properties": {"n": {"type": "string"}}}}])
    second = catalog.get("t")
    assert isinstance(first, KnownTool) and isinstance(second, KnownTool)
    assert first.schema_digest != second.schema_digest
    assert validator.check(first, {"n": 1}) is None and validator.check(second, {"n": 1}) is not None
    broken = KnownTool({}, {"type": 12}, "broken")  # a backend's invalid schema: nothing to hold callers to
    assert validator.check(broken, {"n": 1}) is None


@pytest.mark.parametrize("era", ERAS)
async def test_a_stale_schema_is_listed_again_before_a_call(era: Era, serve: Any) -> None:
    # A tool changed behind the stack's back (no list passed through since): once the entry is older than
    # `max_age`, the next call lists the backend's tools again and the new schema decides.
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("changing")

    @server.tool()
    def convert(amount: int) -> str:
        return f"int {amount}"

    catalog = ToolCatalog(max_age=0.0)
    served = serve(ArgumentValidationMiddleware(server.streamable_http_app(), catalog=catalog))
    async with connect(served.mcp_url, era) as client:
        before = await invalid(client, "convert", {"amount": "12"})
        server.remove_tool("convert")

        @server.tool(name="convert")
        def convert_text(amount: str) -> str:
            return f"text {amount}"

        catalog.fetcher._last = -float("inf")  # the fetcher waits 30 s between lists; the test does not
        after = await client.call_tool("convert", {"amount": "12"})
    assert (before.code, before.data["path"]) == (-32602, "$.amount")
    assert after.content[0].text == "text 12"  # type: ignore[union-attr]
