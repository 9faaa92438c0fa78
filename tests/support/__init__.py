"""Shared test support: helpers more than one test package needs (fixtures stay in conftest.py).

- `processes`: processes started by tests, each stopped with its whole process group;
- `waiting`: `until` / `held_within`, polling state the server's thread changes;
- `sse`: `sse_messages` / `json_of`, the JSON-RPC messages of an answer (JSON or event stream);
- `decisions`: `DecisionRecorder`, an outer layer keeping the decisions (and scopes) of every request;
- `requests`: raw 2026-07-28 and 2025-11-25 request bodies and headers, and a raw legacy handshake.
"""
