"""The routing headers' values as text: each decoded once into a bounded table (`core.headers._TEXTS`), the same
text `bytes.decode("latin-1")` gives (as Starlette decodes headers), None for an absent header."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_middleware.core import headers as module
from mcp_middleware.core.headers import RequestHeaders


@settings(max_examples=300, deadline=None)
@given(version=st.binary(max_size=200) | st.none(), method=st.binary(max_size=40) | st.none(), name=st.binary())
def test_each_value_reads_as_its_latin1_text_every_time(
    version: bytes | None, method: bytes | None, name: bytes
) -> None:
    raw = [(b"mcp-name", name)]
    raw += [(b"mcp-protocol-version", version)] if version is not None else []
    raw += [(b"mcp-method", method)] if method is not None else []
    for _ in range(2):  # decoded, then found
        headers = RequestHeaders(raw)
        assert headers.protocol_version == (version.decode("latin-1") if version is not None else None)
        assert headers.method == (method.decode("latin-1") if method is not None else None)
        assert headers.name == name.decode("latin-1")


def test_the_table_keeps_short_values_only_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_REMEMBERED_TEXTS", len(module._KNOWN_TEXT) + 50)
    texts = module._TEXTS
    texts.clear()
    texts.update(module._KNOWN_TEXT)
    long = b"n" * (module._REMEMBERED_TEXT_LENGTH + 1)
    assert RequestHeaders([(b"mcp-name", long)]).name == long.decode() and long not in texts
    for n in range(500):  # a flood of distinct names
        value = f"tool-{n}".encode()
        assert RequestHeaders([(b"mcp-name", value)]).name == f"tool-{n}"
        assert len(texts) <= module._REMEMBERED_TEXTS
    assert b"2026-07-28" in texts and texts[None] is None  # the usual ones stay
    assert RequestHeaders([]).protocol_version is None
