"""In-process cost of the core per request: parse, replay, tap.

The ASGI callables are driven directly, with a fake-but-valid `http` scope
(POST /mcp, raw header pairs as uvicorn hands them over), a `receive` that
returns the whole ~1 KB body at once and a `send` that drops everything. Each
sample awaits the app `n` times in a plain loop inside one task, so nothing is
scheduled by the event loop and no loop overhead is measured (the fakes never
suspend). Cases are interleaved sample by sample (rotating order) so that noise
falls on all of them alike.

Figures are per request: median and p90 over samples of (sample time / n).
The core's cost is the median of `McpCoreMiddleware(app)` minus the median of
the trivial `app` alone in the same run; garbage collection stays on (it is
part of the cost of allocating).

Two supporting measurements explain the end-to-end figure: the core's steps
timed *in situ* around the real SDK app (the same code costs more between a
real server's work, with cold caches, than in a hot loop), and the objects per
request that end up in reference cycles (freed only by the cyclic garbage
collector, whose collections are paid by the whole server), counted exactly.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from mcp.shared.inbound import classify_inbound_request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, McpCoreMiddleware, ResponseOutcome, ResponseTap, read_request
from mcp_middleware.core.headers import RequestHeaders
from mcp_middleware.core.parsing import parse_post
from mcp_middleware.core.request import McpRequest

from ._common import BODY_SIZE, legacy_headers, median, modern_headers, percentile, section, table, tools_call_body

TARGET_US = 15.0
"""The issue's target: the core costs at most 15 µs (median) on a 1 KB tools/call."""

REQUEST_ID = 1

# --- the fake ASGI world ------------------------------------------------------------------------


def raw_headers(pairs: list[tuple[str, str]], body: bytes) -> list[tuple[bytes, bytes]]:
    """Header pairs as uvicorn hands them to the app: lower-case bytes, Host first, Content-Length last."""
    raw = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"mcp-bench/1")]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    return raw


def http_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


def body_receive(body: bytes) -> Receive:
    message: Message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> Message:
        return message

    return receive


async def drop(message: Message) -> None:
    return None


def json_response(body: bytes) -> tuple[Message, Message]:
    """The two ASGI messages of a complete `application/json` response carrying `body`."""
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


RESULT_BODY = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": REQUEST_ID,
        "result": {"content": [{"type": "text", "text": "ok"}], "isError": False, "resultType": "complete"},
    }
)
JSON_START, JSON_END = json_response(RESULT_BODY)


async def json_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The trivial inner app: read the body, answer a small `application/json` JSON-RPC result."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(JSON_START)
    await send(JSON_END)


_ECHO_TEXT = orjson.loads(tools_call_body(REQUEST_ID))["params"]["arguments"]["text"]
ECHO_BODY = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": REQUEST_ID,
        "result": {
            "content": [{"text": _ECHO_TEXT, "type": "text"}],
            "isError": False,
            "resultType": "complete",
            "structuredContent": {"result": _ECHO_TEXT},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "test-server", "version": ""}},
        },
    }
)
"""What the test server's `echo` answers to the 1 KB modern call (the end-to-end benchmark's response)."""
ECHO_START, ECHO_END = json_response(ECHO_BODY)

LIST_BODY = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": REQUEST_ID,
        "result": {
            "tools": [
                {
                    "name": f"tool_{i}",
                    "description": "Does one thing well. " * 4,
                    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                }
                for i in range(400)
            ]
        },
    }
)
"""A large result (a `tools/list` of 400 tools, ~70 KB): kept by the tap, parsed only when someone asks."""
LIST_START, LIST_END = json_response(LIST_BODY)

_PROGRESS = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": 7, "progress": 1, "total": 2, "message": "step 1"},
    }
)
_RESULT_EVENT = b"event: message\r\ndata: " + RESULT_BODY + b"\r\n\r\n"
_HALF = len(_RESULT_EVENT) // 2
SSE_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
    ],
}
SSE_MESSAGES: tuple[Message, ...] = (
    {"type": "http.response.body", "body": b"event: message\r\ndata: " + _PROGRESS + b"\r\n\r\n", "more_body": True},
    {"type": "http.response.body", "body": _RESULT_EVENT[:_HALF], "more_body": True},  # an event split across chunks
    {"type": "http.response.body", "body": _RESULT_EVENT[_HALF:], "more_body": True},
    {"type": "http.response.body", "body": b"", "more_body": False},
)


async def sse_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Like `json_app`, but answers `text/event-stream`: a progress event, then the result event in two chunks."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(SSE_START)
    for message in SSE_MESSAGES:
        await send(message)


# --- cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    """One thing timed: `run(n)` does it `n` times and returns the elapsed nanoseconds."""

    name: str
    run: Callable[[int], Awaitable[int]]
    n: int = 1
    samples: list[float] = field(default_factory=list)
    """Per-operation nanoseconds, one value per sample."""

    @property
    def median_us(self) -> float:
        return median(self.samples) / 1000

    @property
    def p90_us(self) -> float:
        return percentile(self.samples, 90) / 1000

    @property
    def min_us(self) -> float:
        return min(self.samples) / 1000


def asgi_case(name: str, app: ASGIApp, headers: list[tuple[bytes, bytes]], body: bytes) -> Case:
    base = http_scope(headers)
    receive = body_receive(body)

    async def run(n: int) -> int:
        copy = base.copy
        started = time.perf_counter_ns()
        for _ in range(n):
            await app(copy(), receive, drop)
        return time.perf_counter_ns() - started

    return Case(name, run)


def sync_case(name: str, fn: Callable[[], object]) -> Case:
    async def run(n: int) -> int:
        started = time.perf_counter_ns()
        for _ in range(n):
            fn()
        return time.perf_counter_ns() - started

    return Case(name, run)


def async_case(name: str, fn: Callable[[], Awaitable[object]]) -> Case:
    async def run(n: int) -> int:
        started = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        return time.perf_counter_ns() - started

    return Case(name, run)


@dataclass
class Fixture:
    """The requests of one era, prepared once."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    view: RequestHeaders
    request: McpRequest


def fixture(era: str) -> Fixture:
    body = tools_call_body(REQUEST_ID, era=era)
    headers = raw_headers(modern_headers() if era == "modern" else legacy_headers(), body)
    view = RequestHeaders(headers)
    request = parse_post(body, view)
    assert isinstance(request, McpRequest), request
    assert request.name == "echo" and request.era.value == era, request
    return Fixture(body, headers, view, request)


def asgi_pairs() -> list[tuple[str, Case, Case]]:
    """(label, bare, core) pairs: the trivial app alone and wrapped in the core."""
    modern, legacy = fixture("modern"), fixture("legacy")
    pairs = []

    def hook(request: McpRequest, outcome: ResponseOutcome) -> None:
        return None

    # The first pair is the target: parse, replay and tap (an outcome hook makes the core tap).
    for label, fx, app, on_outcome in (
        ("modern tools/call, JSON, tap + hook", modern, json_app, hook),
        ("modern tools/call, JSON, no hook", modern, json_app, None),
        ("legacy tools/call, JSON, tap + hook", legacy, json_app, hook),
        ("modern tools/call, SSE, tap + hook", modern, sse_app, hook),
    ):
        bare = asgi_case(f"{label}: app", app, fx.headers, fx.body)
        wrapped = McpCoreMiddleware(app, on_outcome=on_outcome)
        core = asgi_case(f"{label}: core(app)", wrapped, fx.headers, fx.body)
        pairs.append((label, bare, core))
    return pairs


def component_cases() -> list[Case]:
    """The core's parts, each alone, on the modern request (legacy where it differs)."""
    modern, legacy = fixture("modern"), fixture("legacy")
    message = orjson.loads(modern.body)
    routing = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    modern_scope = http_scope(modern.headers)
    receive = body_receive(modern.body)

    def nothing() -> None:
        return None

    async def read_once() -> object:
        return await read_request(modern_scope.copy(), receive, drop)

    async def tap_json() -> object:
        tap, send = ResponseTap.attach({}, drop, modern.request)
        await send(JSON_START)
        await send(JSON_END)
        return tap

    async def tap_echo() -> object:
        tap, send = ResponseTap.attach({}, drop, modern.request)
        await send(ECHO_START)
        await send(ECHO_END)
        return tap

    async def tap_list() -> object:
        tap, send = ResponseTap.attach({}, drop, modern.request)
        await send(LIST_START)
        await send(LIST_END)
        return tap

    async def tap_list_parsed() -> object:
        tap, send = ResponseTap.attach({}, drop, modern.request)
        await send(LIST_START)
        await send(LIST_END)
        return tap.outcome()

    async def tap_sse() -> object:
        tap, send = ResponseTap.attach({}, drop, modern.request)
        await send(SSE_START)
        for m in SSE_MESSAGES:
            await send(m)
        return tap

    async def tap_sse_parsed() -> object:
        tap, send = ResponseTap.attach({}, drop, modern.request)
        await send(SSE_START)
        for m in SSE_MESSAGES:
            await send(m)
        return tap.outcome()

    outcome_tap, _ = ResponseTap.attach({}, drop, modern.request)

    async def anothing() -> None:
        return None

    return [
        sync_case("loop + call overhead (sync)", nothing),
        async_case("loop + call overhead (await)", anothing),
        sync_case("RequestHeaders(raw) (8 headers)", lambda: RequestHeaders(modern.headers)),
        sync_case(f"orjson.loads({BODY_SIZE} B body)", lambda: orjson.loads(modern.body)),
        sync_case("SDK classify_inbound_request (decoded)", lambda: classify_inbound_request(message, headers=routing)),
        sync_case("parse_post, modern (incl. loads + ladder)", lambda: parse_post(modern.body, modern.view)),
        sync_case("parse_post, legacy", lambda: parse_post(legacy.body, legacy.view)),
        async_case("read_request, modern (headers+read+parse)", read_once),
        async_case(f"ResponseTap: attach + JSON {len(RESULT_BODY)} B result", tap_json),
        async_case(f"ResponseTap: attach + JSON {len(ECHO_BODY)} B echo result", tap_echo),
        async_case(f"ResponseTap: attach + JSON {len(LIST_BODY) // 1000} KB tools/list", tap_list),
        async_case(f"ResponseTap: attach + JSON {len(LIST_BODY) // 1000} KB tools/list + outcome()", tap_list_parsed),
        async_case("ResponseTap: attach + SSE, 4 chunks", tap_sse),
        async_case("ResponseTap: attach + SSE, 4 chunks + outcome()", tap_sse_parsed),
        sync_case("ResponseTap.outcome() (hooks only)", outcome_tap.outcome),
    ]


# --- in situ ------------------------------------------------------------------------------------


class InSitu:
    """The core's steps composed as `McpCoreMiddleware` composes them, with a clock around each.

    `McpCoreMiddleware.__call__` is `read_request`, then `ResponseTap.attach`, then the app.
    This wrapper does the same through the same public functions and records, per request,
    the time spent in `read_request`, in `attach` and in the tap's `send` beyond forwarding
    (the forwarded `send` is timed and subtracted), and the whole call. Around the trivial
    app it reproduces the micro figure (hot caches); around the real SDK app it shows what
    the same code costs between a real server's work (cold caches).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read: list[int] = []
        self.tap: list[int] = []
        self.whole: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        clock = time.perf_counter_ns
        began = clock()
        request, receive = await read_request(scope, receive, send)
        read = clock()
        assert receive is not ANSWERED, "the benchmark request must be valid"
        assert request is not None, "the benchmark request must be MCP"
        forwarded = observed = 0

        async def forward(message: Message) -> None:
            nonlocal forwarded
            start = clock()
            await send(message)
            forwarded += clock() - start

        _, tapped = ResponseTap.attach(scope, forward, request)

        async def timed(message: Message) -> None:
            nonlocal observed
            start = clock()
            await tapped(message)
            observed += clock() - start

        attached = clock()
        await self.app(scope, receive, timed)
        ended = clock()
        self.read.append(read - began)
        self.tap.append(attached - read + observed - forwarded)
        self.whole.append(ended - began)


class Connection:
    """Stands in for uvicorn's per-request `RequestResponseCycle`.

    It holds the scope, and `receive`/`send` are its bound methods, so whatever keeps
    `send` keeps the scope, as under uvicorn. `receive` gives the body once, then
    waits (a client that stays connected) until the app cancels it.
    """

    __slots__ = ("body", "scope", "status")

    def __init__(self, scope: Scope, body: bytes) -> None:
        self.scope = scope
        self.body: bytes | None = body
        self.status: int | None = None

    async def receive(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # cancelled by the app when it is done
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def garbage_per_request(app: ASGIApp, fx: Fixture, requests: int) -> float:
    """Objects left in reference cycles per request: found by `gc.collect()` after `requests` with gc off."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(requests):
            connection = Connection(http_scope(fx.headers), fx.body)
            await app(connection.scope, connection.receive, connection.send)
            assert connection.status == 200, connection.status
        del connection
        return gc.collect() / requests
    finally:
        gc.enable()


@dataclass
class InSituResult:
    label: str
    read_us: float
    tap_us: float
    whole_us: float
    requests: int
    garbage_app: float
    """Objects per request that only the cyclic garbage collector frees: the app alone."""
    garbage_core: float
    """The same behind `McpCoreMiddleware`."""

    @property
    def core_us(self) -> float:
        return self.read_us + self.tap_us


async def run_in_situ(requests: int, warmup: int) -> list[InSituResult]:
    from tests.servers import build_server  # the SDK server is only needed here

    modern = fixture("modern")
    server = build_server()
    results = []
    sdk_app = server.streamable_http_app()  # creates the session manager, whose run() is the app's lifespan
    async with server.session_manager.run():
        for label, inner in (("trivial app (hot caches)", json_app), ("test server's SDK app (echo)", sdk_app)):
            wrapped = InSitu(inner)
            for _ in range(warmup + requests):
                connection = Connection(http_scope(modern.headers), modern.body)
                await wrapped(connection.scope, connection.receive, connection.send)
                assert connection.status == 200, connection.status
            garbage = max(100, requests // 4)
            results.append(
                InSituResult(
                    label,
                    median(wrapped.read[warmup:]) / 1000,
                    median(wrapped.tap[warmup:]) / 1000,
                    median(wrapped.whole[warmup:]) / 1000,
                    requests,
                    await garbage_per_request(inner, modern, garbage),
                    await garbage_per_request(McpCoreMiddleware(inner), modern, garbage),
                )
            )
    return results


# --- running ------------------------------------------------------------------------------------


async def check_cases() -> None:
    """Each core case must run the whole path (inner app answers 200, tap finds the result), not a refusal."""
    modern, legacy = fixture("modern"), fixture("legacy")
    for fx, app in ((modern, json_app), (legacy, json_app), (modern, sse_app)):
        sent: list[Message] = []

        async def record(message: Message, sent: list[Message] = sent) -> None:
            sent.append(message)

        outcomes: list[ResponseOutcome] = []
        scope = http_scope(fx.headers)
        core = McpCoreMiddleware(app, on_outcome=lambda request, outcome, kept=outcomes: kept.append(outcome))
        await core(scope, body_receive(fx.body), record)
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200, sent[0]
        outcome = outcomes[0]
        assert outcome.complete and outcome.result is not None and outcome.error is None, outcome


async def calibrate(cases: list[Case], sample_ns: float) -> None:
    for case in cases:
        await case.run(50)  # warm up
        n = 50
        while True:
            elapsed = await case.run(n)
            if elapsed >= sample_ns / 4 or n >= 1_000_000:
                break
            n *= 4
        case.n = max(10, int(n * sample_ns / max(elapsed, 1)))


async def measure(cases: list[Case], samples: int) -> None:
    """`samples` rounds; every round times each case once, in rotating order."""
    for round_ in range(samples):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            elapsed = await case.run(case.n)
            case.samples.append(elapsed / case.n)


@dataclass
class MicroResult:
    pairs: list[tuple[str, Case, Case]]
    components: list[Case]
    in_situ: list[InSituResult]
    seconds: float

    def core_cost_us(self, index: int = 0) -> float:
        _, bare, core = self.pairs[index]
        return core.median_us - bare.median_us

    def as_dict(self) -> dict[str, Any]:
        def case(c: Case) -> dict[str, Any]:
            return {
                "median_us": c.median_us,
                "p90_us": c.p90_us,
                "min_us": c.min_us,
                "n": c.n,
                "samples": len(c.samples),
            }

        return {
            "target_us": TARGET_US,
            "pairs": [
                {"label": label, "bare": case(b), "core": case(c), "core_cost_us": c.median_us - b.median_us}
                for label, b, c in self.pairs
            ],
            "components": {c.name: case(c) for c in self.components},
            "in_situ": [
                {
                    "label": r.label,
                    "read_request_us": r.read_us,
                    "tap_us": r.tap_us,
                    "whole_us": r.whole_us,
                    "garbage_per_request_app": r.garbage_app,
                    "garbage_per_request_core": r.garbage_core,
                }
                for r in self.in_situ
            ],
            "seconds": self.seconds,
        }


async def run_micro(*, samples: int, sample_ms: float, in_situ_requests: int) -> MicroResult:
    started = time.perf_counter()
    await check_cases()
    pairs = asgi_pairs()
    flat = [c for _, bare, core in pairs for c in (bare, core)]
    components = component_cases()
    await calibrate(flat + components, sample_ms * 1e6)
    await measure(flat, samples)
    await measure(components, max(20, samples // 2))  # supporting figures: half the samples
    in_situ = await run_in_situ(in_situ_requests, warmup=max(100, in_situ_requests // 5))
    return MicroResult(pairs, components, in_situ, time.perf_counter() - started)


def report(result: MicroResult) -> str:
    lines = [section(f"micro: in-process cost of the core per request ({BODY_SIZE} B tools/call)")]
    _, first_bare, _ = result.pairs[0]
    lines.append(
        f"  {len(first_bare.samples)} samples per case, interleaved; per-request µs = sample time / iterations;"
        " p90 is over samples"
    )
    rows = []
    for label, bare, core in result.pairs:
        rows.append(
            [
                label,
                bare.median_us,
                bare.p90_us,
                core.median_us,
                core.p90_us,
                core.median_us - bare.median_us,
            ]
        )
    lines.append(
        table(["case", "app µs med", "app p90", "core(app) µs med", "core p90", "core cost µs (med-med)"], rows)
    )
    cost = result.core_cost_us(0)
    lines.append(
        f"\n  core cost (parse, replay, tap), modern 1 KB tools/call (JSON): {cost:.2f} µs median  "
        f"(target ≤ {TARGET_US:g} µs: {'PASS' if cost <= TARGET_US else 'MISS'})"
    )
    lines.append(
        f"\n  components, each alone ({len(result.components[0].samples)} samples; µs per call, loop overhead"
        " included: see the first two rows)"
    )
    lines.append(
        table(
            ["component", "µs med", "µs p90", "iterations"],
            [[c.name, c.median_us, c.p90_us, c.n] for c in result.components],
        )
    )
    lines.append(
        "\n  in situ: the same steps timed inside one request (in-process, no network), medians over"
        f" {result.in_situ[0].requests} requests"
    )
    lines.append(
        table(
            ["inner app", "read_request µs", "tap µs", "core µs", "whole request µs"],
            [[r.label, r.read_us, r.tap_us, r.core_us, r.whole_us] for r in result.in_situ],
        )
    )
    lines.append(
        "\n  cyclic garbage: objects per request that only the garbage collector frees (send and receive bound"
        "\n  to a per-request object holding the scope, as under uvicorn; deterministic, no timing)"
    )
    lines.append(
        table(
            ["inner app", "app alone", "core(app)", "added by the core"],
            [[r.label, r.garbage_app, r.garbage_core, r.garbage_core - r.garbage_app] for r in result.in_situ],
        )
    )
    lines.append(f"\n  micro took {result.seconds:.1f} s")
    return "\n".join(lines)


def main(samples: int = 200, sample_ms: float = 4.0, in_situ_requests: int = 2000) -> MicroResult:
    result = asyncio.run(run_micro(samples=samples, sample_ms=sample_ms, in_situ_requests=in_situ_requests))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
