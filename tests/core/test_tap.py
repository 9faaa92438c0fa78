"""The response tap forwards at once and learns the outcome from any chunking, within its bound."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message

from mcp_middleware.core.request import Era, McpRequest, RequestKind
from mcp_middleware.core.tap import ResponseOutcome, ResponseTap, SseParser

REQUEST = McpRequest(kind=RequestKind.REQUEST, era=Era.LEGACY, protocol_version="2025-11-25", method="tools/call", id=7)


def sse_event(message: dict[str, Any], *, newline: bytes = b"\r\n", event: bytes | None = b"message") -> bytes:
    head = b"event: " + event + newline if event is not None else b""
    return head + b"data: " + orjson.dumps(message) + newline + newline


PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 0.5}}
SERVER_REQUEST = {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {}}
OTHER_ID = {"jsonrpc": "2.0", "id": 8, "result": {"content": []}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "ok\nline"}], "isError": True}}
SSE_STREAM = (
    b"id: ev-0\r\ndata: \r\nretry: 1000\r\n\r\n"  # priming event (empty data)
    + b": ping\r\n\r\n"
    + sse_event(PROGRESS)
    + sse_event(SERVER_REQUEST)  # same id but a request: not the response
    + sse_event(OTHER_ID)
    + sse_event(RESULT, newline=b"\n", event=None)
)


def run_tap(
    chunks: list[bytes], content_type: bytes, *, max_bytes: int = 1 << 20, request: McpRequest = REQUEST
) -> tuple[ResponseOutcome, list[Message]]:
    forwarded: list[Message] = []

    async def send(message: Message) -> None:
        forwarded.append(message)

    async def main() -> ResponseOutcome:
        tap = ResponseTap(send, request, max_bytes=max_bytes)
        await tap.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for i, chunk in enumerate(chunks):
            await tap.send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
        return tap.outcome()

    return anyio.run(main), forwarded


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Every way to cut `data` into chunks (including empty ones)."""
    cut_points = st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12)
    return cut_points.map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)]
    )


def test_sse_outcome_is_the_response_to_this_request() -> None:
    outcome, forwarded = run_tap([SSE_STREAM], b"text/event-stream")
    assert outcome.result == RESULT["result"]
    assert outcome.is_tool_error
    assert outcome.complete and outcome.status == 200 and outcome.bytes == len(SSE_STREAM)
    assert b"".join(m.get("body", b"") for m in forwarded) == SSE_STREAM


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_sse_outcome_is_the_same_for_any_split(data: st.DataObject) -> None:
    chunks = data.draw(splits(SSE_STREAM))
    outcome, forwarded = run_tap(chunks, b"text/event-stream; charset=utf-8")
    assert outcome.result == RESULT["result"]
    assert outcome.content_type == "text/event-stream"
    assert [m.get("body") for m in forwarded[1:]] == chunks  # forwarded as sent, chunk for chunk


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_every_line_ending_is_understood(data: st.DataObject, newline: bytes) -> None:
    stream = sse_event(PROGRESS, newline=newline) + sse_event(RESULT, newline=newline)
    outcome, _ = run_tap(data.draw(splits(stream)), b"text/event-stream")
    assert outcome.result == RESULT["result"]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_json_outcome_is_the_same_for_any_split(data: st.DataObject) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "Method not found"}})
    outcome, _ = run_tap(data.draw(splits(body)), b"application/json")
    assert outcome.error_code == -32601
    assert outcome.result is None and not outcome.succeeded


def test_error_without_id_answers_the_request() -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
    outcome, _ = run_tap([body], b"application/json")
    assert outcome.error_code == -32700


def test_response_larger_than_the_bound_is_counted_not_parsed() -> None:
    big = orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "x" * 5000}]}})
    outcome, forwarded = run_tap([big[:3000], big[3000:]], b"application/json", max_bytes=4096)
    assert outcome.truncated and outcome.result is None
    assert outcome.bytes == len(big) and outcome.complete
    assert b"".join(m.get("body", b"") for m in forwarded) == big

    sse = sse_event(PROGRESS) + sse_event({"jsonrpc": "2.0", "id": 7, "result": {"pad": "y" * 5000}})
    outcome, _ = run_tap([sse[:100], sse[100:2000], sse[2000:]], b"text/event-stream", max_bytes=4096)
    assert outcome.truncated and outcome.result is None


def test_an_oversized_event_does_not_hide_the_next_one() -> None:
    sse = sse_event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"pad": "z" * 9000}}) + sse_event(
        RESULT
    )
    outcome, _ = run_tap([sse[i : i + 1000] for i in range(0, len(sse), 1000)], b"text/event-stream", max_bytes=4096)
    assert outcome.truncated
    assert outcome.result == RESULT["result"]


def test_notification_responses_are_not_parsed() -> None:
    notification = McpRequest(kind=RequestKind.NOTIFICATION, era=Era.LEGACY, protocol_version="2025-11-25")
    outcome, _ = run_tap([b"{}"], b"application/json", request=notification)
    assert outcome.result is None and outcome.error is None and outcome.complete


def test_incomplete_stream_reports_so() -> None:
    async def main() -> ResponseOutcome:
        async def send(message: Message) -> None:
            pass

        tap = ResponseTap(send, REQUEST)
        await tap.send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
        )
        await tap.send({"type": "http.response.body", "body": sse_event(PROGRESS), "more_body": True})
        return tap.outcome()

    outcome = anyio.run(main)
    assert not outcome.complete and outcome.result is None and outcome.status == 200


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\ndata: b\n\n", [("message", b"a\nb")]),
        (b"data:no-space\n\n", [("message", b"no-space")]),
        (b"event: custom\ndata: x\n\n", [("custom", b"x")]),
        (b": comment only\n\n", []),
        (b"data: \n\n", [("message", b"")]),
        (b"data\ndata:x\n\n", [("message", b"\nx")]),
        (b"event: custom\nevent\ndata: x\n\n", [("message", b"x")]),
        (b"datum: x\ndata:  two spaces\n\n", [("message", b" two spaces")]),
        (b"id: 1\nretry: 10\n\n", []),
        (b"data: last-without-blank-line\n", []),
    ],
)
def test_sse_parser_follows_the_event_stream_rules(stream: bytes, expected: list[tuple[str, bytes]]) -> None:
    assert SseParser(1024).feed(stream) == expected


def test_only_cr_and_lf_break_lines() -> None:
    """Vertical tab, form feed, file separators, NEL and U+2028 are data, not line ends."""
    data = "a\x0bb\x0cc\x1cd\x1ee\x85f\u2028g".encode()
    assert SseParser(1024).feed(b"data: " + data + b"\r\n\r\n") == [("message", data)]


def test_a_long_line_in_many_chunks() -> None:
    payload = b"y" * 50_000
    stream = b"data: " + payload + b"\n\n"
    parser = SseParser(1 << 20)
    events = [e for i in range(0, len(stream), 100) for e in parser.feed(stream[i : i + 100])]
    assert events == [("message", payload)]
