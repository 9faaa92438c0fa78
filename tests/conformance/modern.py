"""The conformance server's fixtures for the 2026-07-28 scenarios of the suite 0.2.

Names and payloads follow the scenario descriptions of `@modelcontextprotocol/conformance`
0.2.0-alpha.12 (`server-stateless`, `http-custom-header-server-validation`,
`input-required-result-*`): multi-round-trip requests (`InputRequiredResult`, MRTR), a tool that
needs the client's `sampling` capability (-32021 without it), hooks that change the tool and prompt
lists while a `subscriptions/listen` stream is open, and a parameter mirrored into an `Mcp-Param-*`
header. Every answer is the SDK's own: these handlers only decide what to ask for.
"""

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequest,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    TextContent,
)
from pydantic import Field

REQUEST_STATE = "request-state-nonce"
"""What `test_input_required_result_request_state` expects back (the SDK seals it on the wire)."""


def _form(message: str, field: str, kind: str = "string") -> ElicitRequest:
    """An elicitation asking for one required field."""
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(prompt: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(text=prompt))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def _elicited(answer: object, field: str) -> object:
    """The accepted value of `field` in an elicitation answer (None when absent or declined)."""
    return answer.content.get(field) if isinstance(answer, ElicitResult) and answer.content else None


def add_modern_fixtures(server: MCPServer) -> None:
    """Register the 2026-07-28 fixtures on `server`."""

    # --- server-stateless (SEP-2575) ---

    @server.tool()
    async def test_missing_capability(ctx: Context) -> str:
        """Needs the client's sampling capability: -32021 (a JSON-RPC error, HTTP 400) without it."""
        capabilities = ctx.client_capabilities
        if capabilities is None or capabilities.sampling is None:
            raise MCPError(  # raised, not returned: the SDK turns it into a protocol error, not isError
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="This tool requires the client 'sampling' capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return "The client declared sampling."

    @server.tool()
    async def test_logging_tool(ctx: Context) -> str:
        """Logs at info; the SDK sends it only when the request's `_meta` set a log level."""
        await ctx.log("info", "test_logging_tool ran")
        return "logged"

    @server.tool()
    async def test_streaming_elicitation(ctx: Context) -> str | InputRequiredResult:
        """Asks for input the 2026-07-28 way: an `InputRequiredResult` on the response, never a request."""
        answer = (ctx.input_responses or {}).get("confirm")
        if answer is not None:
            return f"confirmed={_elicited(answer, 'ok')}"
        return InputRequiredResult(input_requests={"confirm": _form("Please confirm", "ok", "boolean")})

    def _dynamic() -> str:
        """Registered and removed again by a trigger tool."""
        return "dynamic"

    @server.tool()
    async def test_trigger_tool_change(ctx: Context) -> str:
        """Changes the tool list and tells `subscriptions/listen` streams."""
        server.add_tool(_dynamic, name="test_dynamic_tool")
        server.remove_tool("test_dynamic_tool")
        await ctx.notify_tools_changed()
        return "tool list changed"

    @server.tool()
    async def test_trigger_prompt_change(ctx: Context) -> str:
        """Changes the prompt list and tells `subscriptions/listen` streams."""
        server.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="dynamic"))
        server.remove_prompt("test_dynamic_prompt")
        await ctx.notify_prompts_changed()
        return "prompt list changed"

    # --- http-custom-header-server-validation (SEP-2243) ---

    @server.tool()
    def test_x_mcp_header(
        region: Annotated[
            str,
            Field(description="Mirrored in the Mcp-Param-Region header", json_schema_extra={"x-mcp-header": "Region"}),
        ] = "",
    ) -> str:
        """Its argument travels in a header too; the SDK checks that header against the body."""
        return f"region={region}"

    # --- input-required-result-* (SEP-2322, multi-round-trip requests) ---

    @server.tool()
    async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        """Round 1 asks for a name (elicitation); round 2 greets."""
        responses = ctx.input_responses or {}
        if "user_name" in responses:
            return f"Hello, {_elicited(responses['user_name'], 'name') or 'stranger'}!"
        return InputRequiredResult(input_requests={"user_name": _form("What is your name?", "name")})

    @server.tool()
    async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        """Round 1 asks the client's model a question (sampling); round 2 repeats the answer."""
        answer = (ctx.input_responses or {}).get("capital_question")
        if answer is not None:
            content = answer.content if isinstance(answer, CreateMessageResult) else None
            return f"Model said: {content.text if isinstance(content, TextContent) else '?'}"
        return InputRequiredResult(input_requests={"capital_question": _sample("What is the capital of France?", 100)})

    @server.tool()
    async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        """Round 1 asks for the client's roots; round 2 counts them."""
        answer = (ctx.input_responses or {}).get("client_roots")
        if answer is not None:
            return f"Client exposed {len(answer.roots) if isinstance(answer, ListRootsResult) else 0} root(s)."
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})

    @server.tool()
    async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
        """Round 2 completes only when the client echoed the (SDK-sealed) request state."""
        if "confirm" in (ctx.input_responses or {}) and ctx.request_state == REQUEST_STATE:
            return "state-ok: confirmation received"
        return InputRequiredResult(
            input_requests={"confirm": _form("Please confirm", "ok", "boolean")}, request_state=REQUEST_STATE
        )

    @server.tool()
    async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
        """Asks for an elicitation, a sampling and the roots at once."""
        wanted = {"user_name", "greeting", "client_roots"}
        if wanted <= (ctx.input_responses or {}).keys():
            return "All inputs received."
        requests: dict[str, InputRequest] = {
            "user_name": _form("What is your name?", "name"),
            "greeting": _sample("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        }
        return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")

    @server.tool()
    async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
        """Three rounds (name, then colour, then the answer), the round carried in the request state."""
        state: dict[str, Any] = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
        responses = ctx.input_responses or {}
        if state.get("round") == 1 and "step1" in responses:
            name = _elicited(responses["step1"], "name")
            return InputRequiredResult(
                input_requests={"step2": _form("Step 2: What is your favorite color?", "color")},
                request_state=json.dumps({"round": 2, "name": name}),
            )
        if state.get("round") == 2 and "step2" in responses:
            return f"{state.get('name')} likes {_elicited(responses['step2'], 'color')}."
        # The first round, or a missing or out-of-order answer: start again.
        return InputRequiredResult(
            input_requests={"step1": _form("Step 1: What is your name?", "name")},
            request_state=json.dumps({"round": 1}),
        )

    @server.tool()
    async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
        """The SDK seals the state; a tampered echo never reaches this handler."""
        if ctx.request_state is None:
            confirm = _form("Please confirm", "ok", "boolean")
            return InputRequiredResult(input_requests={"confirm": confirm}, request_state="round-1")
        return f"state-ok: {ctx.request_state}"

    @server.tool()
    async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
        """Asks only for what the client declared it can answer."""
        capabilities = ctx.client_capabilities
        requests: dict[str, InputRequest] = {}
        if capabilities is None or capabilities.sampling is not None:
            requests["sample"] = _sample("Say hello", 50)
        if capabilities is None or capabilities.elicitation is not None:
            requests["ask"] = _form("What is your name?", "name")
        return InputRequiredResult(input_requests=requests, request_state="capability-gated")

    @server.prompt()
    async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
        """`prompts/get` can ask for input too (a non-tool request)."""
        answer = (ctx.input_responses or {}).get("user_context")
        if answer is not None:
            return [UserMessage(f"Use the following context: {_elicited(answer, 'context') or '?'}")]
        return InputRequiredResult(
            input_requests={"user_context": _form("What context should the prompt use?", "context")}
        )
