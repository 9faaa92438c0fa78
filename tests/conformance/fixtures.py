"""What the conformance server serves that the suite checks byte for byte or keyword for keyword:
binary fixtures, JSON Schemas, completion values, and the event store that makes SSE streams resumable.
"""

import base64
import io
import struct
import wave
import zlib
from collections import OrderedDict
from typing import Any

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCMessage

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


# --- Schemas the suite checks verbatim ------------------------------------------

JSON_SCHEMA_2020_12_INPUT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    # 0.2 checks that composition, conditional and anchor keywords survive too (SEP-2106).
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
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
