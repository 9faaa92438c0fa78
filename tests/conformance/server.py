"""Conformance server: an MCP server that implements every feature the official
conformance suite (`@modelcontextprotocol/conformance`, server scenarios) expects.

Tool, resource and prompt names and payloads follow the suite's scenario
descriptions. `build_app(variant)` returns the server's ASGI app, either bare or
wrapped in this project's middlewares, so the suite can prove that a middleware
stack changes nothing a client can observe.

Run one variant by hand (from the project root):

    .venv/bin/python -m tests.conformance.server --variant bare --port 8000
"""

import argparse
import asyncio
import base64
import io
import json
import socket
import struct
import warnings
import wave
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp.server.mcpserver.tools import Tool
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
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
    JSONRPCMessage,
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

SERVER_NAME = "mcp-middleware-conformance"
MCP_PATH = "/mcp"
# Sent in the SSE priming event so resuming clients know how long to wait.
RETRY_INTERVAL_MS = 500


# --- Binary fixtures (generated, so they are real, decodable files) ---------


def _png_1x1(red: int, green: int, blue: int) -> bytes:
    """A valid 1x1 RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit, truecolour
    pixels = zlib.compress(bytes([0, red, green, blue]))  # filter byte + one pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence(milliseconds: int = 10, rate: int = 8000) -> bytes:
    """A valid mono 16-bit WAV of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * (rate * milliseconds // 1000))
    return buffer.getvalue()


RED_PIXEL_PNG = _png_1x1(255, 0, 0)
RED_PIXEL_PNG_B64 = base64.b64encode(RED_PIXEL_PNG).decode()
SILENCE_WAV_B64 = base64.b64encode(_wav_silence()).decode()


# --- Resumability -------------------------------------------------------------


class InMemoryEventStore(EventStore):
    """Bounded in-memory event store, so SSE streams can be resumed with Last-Event-ID.

    The SDK ships only the abstract `EventStore`. With one configured, SSE events
    carry ids, and for 2025-11-25 clients the SDK also sends priming events (with
    `retry`) and lets a tool close its stream mid-call (`test_reconnection`), so
    a middleware in front must pass resumed GET streams through as well.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._max_events = max_events
        self._next_id = 0
        # Insertion-ordered, so replay walks events in the order they were sent.
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._next_id += 1
        event_id = str(self._next_id)
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._max_events:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        if last_event_id not in self._events:
            return None
        stream_id, _ = self._events[last_event_id]
        after = False
        for event_id, (event_stream, message) in list(self._events.items()):
            if after and event_stream == stream_id and message is not None:  # None marks a priming event
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


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


# --- Schemas the suite checks verbatim ------------------------------------------

JSON_SCHEMA_2020_12_INPUT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}

ELICITATION_USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}

ELICITATION_DEFAULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}

ELICITATION_ENUMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}

PROMPT_ARGUMENT_COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party", "test", "testing"],
    "arg2": ["hello", "help", "world"],
}


def _text(text: str, *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)], is_error=is_error)


def _json_schema_tool(name: str | None = None, address: dict[str, Any] | None = None) -> CallToolResult:
    """Tool with JSON Schema 2020-12 features"""
    return _text(f"name={name!r}, address={address!r}")


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

    return server


# --- Variants -----------------------------------------------------------------------


def bare_app() -> ASGIApp:
    """The SDK's own app: stateful sessions, SSE responses, DNS-rebinding protection
    (the default for host 127.0.0.1), resumable streams."""
    return build_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        event_store=InMemoryEventStore(),
        retry_interval=RETRY_INTERVAL_MS,
        host="127.0.0.1",
    )


def _core_middleware() -> Callable[[ASGIApp], ASGIApp]:
    from mcp_middleware.core import McpCoreMiddleware  # imported late: optional while it is being written

    return McpCoreMiddleware


DEV_TOKEN = "conformance-dev-token"


class _WithToken:
    """The suite's client sends no credentials; a client with a (static dev) token would send this header.

    Everything behind it verifies the token for real; this only stands in for the client's side.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            scope = {**scope, "headers": [*headers, (b"authorization", f"Bearer {DEV_TOKEN}".encode())]}
        await self.app(scope, receive, send)


def stack_app() -> ASGIApp:
    """The conformance server behind every middleware, in the recommended order (DESIGN.md §3.2):
    tracing → auth (static dev token) → rate limit (never tripping) → cache → breaker."""
    from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
    from mcp_middleware.breaker import CircuitBreakerMiddleware
    from mcp_middleware.cache import ResponseCacheMiddleware
    from mcp_middleware.ratelimit import BucketPolicy, RateLimitMiddleware
    from mcp_middleware.tracing import TracingMiddleware

    app = CircuitBreakerMiddleware(bare_app())
    app = ResponseCacheMiddleware(app)
    app = RateLimitMiddleware(app, policies=[BucketPolicy(name="conformance", rate=10_000.0, capacity=10_000.0)])
    app = AuthMiddleware(
        app,
        verifier=StaticTokenVerifier({DEV_TOKEN: ["mcp"]}),
        resource="http://127.0.0.1/mcp",
        require_audience=False,
    )
    return _WithToken(TracingMiddleware(app))


def gateway_app() -> ASGIApp:
    """The conformance server at the reference gateway's path mount `/mcp/conformance`, with auth
    (static dev token), rate limits, breaker, cache and tracing all on."""
    from mcp_middleware.gateway.app import build_gateway
    from mcp_middleware.gateway.config import parse_config

    config = parse_config(
        f"""
[gateway]
[[servers]]
name = "conformance"
app = "tests.conformance.server:bare_app"
[auth]
mode = "static"
[auth.tokens]
"{DEV_TOKEN}" = ["mcp"]
[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 10000
rate = 10000
[breaker]
[cache]
[tracing]
access_log = false
"""
    )
    return _WithToken(build_gateway(config).app)


# One entry per middleware stack under test; each call builds everything afresh.
VARIANTS: dict[str, Callable[[], ASGIApp]] = {
    "bare": bare_app,
    "core": lambda: _core_middleware()(bare_app()),
    "stack": stack_app,
    "gateway": gateway_app,
}
VARIANT_PATHS: dict[str, str] = {"gateway": "/mcp/conformance"}
"""Where a variant serves MCP, when not at `MCP_PATH`."""


def build_app(variant: str) -> ASGIApp:
    """A fresh ASGI app for `variant` (a key of `VARIANTS`)."""
    try:
        builder = VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}") from None
    return builder()


def serve(variant: str, *, host: str = "127.0.0.1", port: int = 0, fd: int | None = None) -> None:
    """Serve `variant` under uvicorn until SIGINT/SIGTERM.

    With `fd`, serve on that already-listening socket (the runner binds it, so the
    port is known before this process starts and nothing can take it meanwhile).
    """
    # The suite exercises handshake-era features (logging, sampling) the SDK marks deprecated.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    config = uvicorn.Config(
        build_app(variant),
        host=host,
        port=port,
        lifespan="on",  # fail loudly if the app (or a middleware) breaks the lifespan protocol
        log_level="warning",
        timeout_graceful_shutdown=3,  # open SSE streams must not hold up shutdown
    )
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    uvicorn.Server(config).run(sockets=sockets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="bare", choices=sorted(VARIANTS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fd", type=int, help="serve on this inherited, listening socket instead of --port")
    args = parser.parse_args(argv)
    serve(args.variant, host=args.host, port=args.port, fd=args.fd)


if __name__ == "__main__":
    main()
