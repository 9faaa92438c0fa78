"""Conformance server: an MCP server that implements every feature the official
conformance suite (`@modelcontextprotocol/conformance`, server scenarios) expects,
at both wires: the handshake era (2025-11-25 and older) and 2026-07-28.

Tool, resource and prompt names and payloads follow the suite's scenario
descriptions (0.1.16 and 0.2.0-alpha.12). `bare_app()` is the SDK's own app
serving it; `variants.py` wraps that app in this project's middlewares, so the
suite can prove that a middleware stack changes nothing a client can observe.
"""

import asyncio
import json
import warnings
from collections.abc import Mapping
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import (
    AudioContent,
    CallToolResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    LoggingLevel,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from starlette.types import ASGIApp

from .fixtures import (
    ELICITATION_DEFAULTS_SCHEMA,
    ELICITATION_ENUMS_SCHEMA,
    ELICITATION_USER_SCHEMA,
    JSON_SCHEMA_2020_12_INPUT,
    PROMPT_ARGUMENT_COMPLETIONS,
    RED_PIXEL_PNG,
    RED_PIXEL_PNG_B64,
    SILENCE_WAV_B64,
    InMemoryEventStore,
)
from .modern import add_modern_fixtures

SERVER_NAME = "mcp-middleware-conformance"
MCP_PATH = "/mcp"
# Sent in the SSE priming event so resuming clients know how long to wait.
RETRY_INTERVAL_MS = 500


# --- Per-session state --------------------------------------------------------

LOG_LEVELS: tuple[LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)


def _session_key(headers: Mapping[str, str] | None) -> str:
    """Key per-session state on the Mcp-Session-Id header (the SDK keeps no slot for it)."""
    return headers.get("mcp-session-id", "") if headers is not None else ""


class SessionState:
    """What `logging/setLevel` and `resources/(un)subscribe` remember, per MCP session.

    Entries live as long as the server; a conformance run opens a few dozen sessions.
    """

    def __init__(self) -> None:
        self.log_level: dict[str, LoggingLevel] = {}
        self.subscriptions: dict[str, set[str]] = {}

    def should_log(self, session: str, level: LoggingLevel) -> bool:
        threshold = self.log_level.get(session, "debug")
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def _text(text: str, *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)], is_error=is_error)


def _json_schema_tool(
    name: str | None = None,
    address: dict[str, Any] | None = None,
    contactMethod: str | None = None,  # the wire argument names
    phone: str | None = None,
    email: str | None = None,
) -> CallToolResult:
    """Tool with JSON Schema 2020-12 features"""
    return _text(
        f"name={name!r}, address={address!r}, contactMethod={contactMethod!r}, phone={phone!r}, email={email!r}"
    )


# --- The server -------------------------------------------------------------------


def build_server() -> MCPServer:
    """A fresh conformance server (an SDK app's lifespan can start only once)."""
    state = SessionState()

    # The 2020-12 keywords ($schema, $defs, additionalProperties) must reach the
    # client untouched, so this tool advertises a hand-written schema.
    schema_tool = Tool.from_function(_json_schema_tool, name="json_schema_2020_12_tool").model_copy(
        update={"parameters": JSON_SCHEMA_2020_12_INPUT}
    )
    # WARNING keeps the per-session INFO lines out of the runner's server log.
    server = MCPServer(SERVER_NAME, version="1.0.0", tools=[schema_tool], log_level="WARNING")

    async def log(ctx: Context, level: LoggingLevel, message: str) -> None:
        if state.should_log(_session_key(ctx.headers), level):
            await ctx.log(level, message)

    # --- tools ---

    @server.tool()
    def test_simple_text() -> CallToolResult:
        """Returns a simple text response."""
        return _text("This is a simple text response for testing.")

    @server.tool()
    def test_image_content() -> CallToolResult:
        """Returns a 1x1 red PNG image."""
        return CallToolResult(content=[ImageContent(data=RED_PIXEL_PNG_B64, mime_type="image/png")])

    @server.tool()
    def test_audio_content() -> CallToolResult:
        """Returns a short WAV clip of silence."""
        return CallToolResult(content=[AudioContent(data=SILENCE_WAV_B64, mime_type="audio/wav")])

    @server.tool()
    def test_embedded_resource() -> CallToolResult:
        """Returns an embedded text resource."""
        resource = TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return CallToolResult(content=[EmbeddedResource(resource=resource)])

    @server.tool()
    def test_multiple_content_types() -> CallToolResult:
        """Returns text, image and embedded resource content together."""
        resource = TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return CallToolResult(
            content=[
                TextContent(text="Multiple content types test:"),
                ImageContent(data=RED_PIXEL_PNG_B64, mime_type="image/png"),
                EmbeddedResource(resource=resource),
            ]
        )

    @server.tool()
    async def test_tool_with_logging(ctx: Context) -> CallToolResult:
        """Sends three info log notifications while it runs."""
        await log(ctx, "info", "Tool execution started")
        await asyncio.sleep(0.05)
        await log(ctx, "info", "Tool processing data")
        await asyncio.sleep(0.05)
        await log(ctx, "info", "Tool execution completed")
        return _text("Tool with logging executed successfully")

    @server.tool()
    def test_error_handling() -> CallToolResult:
        """Always fails with a tool error."""
        return _text("This tool intentionally returns an error for testing", is_error=True)

    @server.tool()
    async def test_tool_with_progress(ctx: Context) -> CallToolResult:
        """Reports progress 0, 50 and 100 of 100."""
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await asyncio.sleep(0.05)
            await ctx.report_progress(progress, 100)  # no-op without a progress token
        return _text("Tool with progress executed successfully")

    @server.tool()
    async def test_sampling(prompt: str, ctx: Context) -> CallToolResult:
        """Asks the client's LLM to answer the prompt (sampling/createMessage)."""
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(text=prompt))],
            max_tokens=100,
            related_request_id=ctx.request_context.request_id,
        )
        content = result.content
        answer = content.text if isinstance(content, TextContent) else content.model_dump_json()
        return _text(f"LLM response: {answer}")

    async def elicit(ctx: Context, message: str, schema: dict[str, Any]) -> CallToolResult:
        # Raw schemas (not ctx.elicit's pydantic models): the suite checks keywords verbatim.
        result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_context.request_id)
        return _text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")

    @server.tool()
    async def test_elicitation(message: str, ctx: Context) -> CallToolResult:
        """Asks the user for a username and email (elicitation/create)."""
        return await elicit(ctx, message, ELICITATION_USER_SCHEMA)

    @server.tool()
    async def test_elicitation_sep1034_defaults(ctx: Context) -> CallToolResult:
        """Elicits a form whose fields all carry default values (SEP-1034)."""
        message = "Please review and update the form fields with defaults"
        return await elicit(ctx, message, ELICITATION_DEFAULTS_SCHEMA)

    @server.tool()
    async def test_elicitation_sep1330_enums(ctx: Context) -> CallToolResult:
        """Elicits a form with all five enum schema variants (SEP-1330)."""
        return await elicit(ctx, "Please select options from the enum fields", ELICITATION_ENUMS_SCHEMA)

    @server.tool()
    async def test_reconnection(ctx: Context) -> CallToolResult:
        """Closes its SSE stream mid-call; the result arrives when the client resumes."""
        # A no-op for clients older than 2025-11-25 (they cannot resume).
        await ctx.close_sse_stream()
        await asyncio.sleep(0.1)
        return _text("Reconnection test completed successfully")

    # --- resources ---

    @server.resource(
        "test://static-text", name="static-text", description="A static text resource", mime_type="text/plain"
    )
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary", name="static-binary", description="A static PNG image", mime_type="image/png"
    )
    def static_binary() -> bytes:
        return RED_PIXEL_PNG

    @server.resource(
        "test://watched-resource",
        name="watched-resource",
        description="A resource clients can subscribe to",
        mime_type="text/plain",
    )
    def watched_resource() -> str:
        return "This resource can be watched for updates."

    @server.resource(
        "test://template/{id}/data",
        name="template-data",
        description="Data for an ID, from a resource template",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:  # the parameter is named after the template variable
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    # --- prompts ---

    @server.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A simple prompt without arguments."""
        return [UserMessage("This is a simple prompt for testing.")]

    @server.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt that substitutes two arguments."""
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @server.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # the wire argument name
        """A prompt that embeds the given resource."""
        resource = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(EmbeddedResource(resource=resource)),
            UserMessage("Please process the embedded resource above."),
        ]

    @server.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt that contains an image."""
        return [
            UserMessage(ImageContent(data=RED_PIXEL_PNG_B64, mime_type="image/png")),
            UserMessage("Please analyze the image above."),
        ]

    # --- completion ---

    @server.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        candidates: list[str] = []
        if isinstance(ref, PromptReference) and ref.name == "test_prompt_with_arguments":
            candidates = PROMPT_ARGUMENT_COMPLETIONS.get(argument.name, [])
        values = [value for value in candidates if value.startswith(argument.value)]
        return Completion(values=values, total=len(values), has_more=False)

    # --- legacy (handshake-era) methods MCPServer has no decorator for ---

    async def set_logging_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        state.log_level[_session_key(getattr(ctx.request, "headers", None))] = params.level
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        key = _session_key(getattr(ctx.request, "headers", None))
        state.subscriptions.setdefault(key, set()).add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
        key = _session_key(getattr(ctx.request, "headers", None))
        state.subscriptions.get(key, set()).discard(str(params.uri))
        return EmptyResult()

    # Registering on the low-level server also advertises the `logging` and
    # `resources.subscribe` capabilities in the initialize result.
    lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_logging_level)
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)

    add_modern_fixtures(server)
    return server


def bare_app() -> ASGIApp:
    """The SDK's own app: stateful sessions, SSE responses, DNS-rebinding protection
    (the default for host 127.0.0.1), resumable streams."""
    return build_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        event_store=InMemoryEventStore(),
        retry_interval=RETRY_INTERVAL_MS,
        host="127.0.0.1",
    )
