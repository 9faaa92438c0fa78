"""What may be recorded about a request: known sets, clipped text, session digests, bounded label sets."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from mcp_middleware.core import (
    KNOWN_METHODS,
    KNOWN_PROTOCOL_VERSIONS,
    OTHER,
    BoundedValues,
    SessionIdRedaction,
    clip,
    known_method,
    known_version,
    portable_name,
    session_digest,
)

hostile = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp"]), max_size=50),
    st.sampled_from(["tools/call\x00", "TOOLS/CALL", "tools/call ", "x" * 10_000, "2025-11-25\n", "_OTHER"]),
)


def test_the_known_sets_are_the_specifications() -> None:
    assert {"initialize", "tools/call", "tools/list", "server/discover", "notifications/cancelled"} <= KNOWN_METHODS
    assert set(HANDSHAKE_PROTOCOL_VERSIONS) | set(MODERN_PROTOCOL_VERSIONS) == KNOWN_PROTOCOL_VERSIONS
    assert known_method(None) == OTHER and known_version(None) == OTHER


@given(hostile)
def test_a_label_from_a_known_set_is_known_or_other(value: str) -> None:
    assert known_method(value) in KNOWN_METHODS | {OTHER}
    assert known_version(value) in KNOWN_PROTOCOL_VERSIONS | {OTHER}


@given(hostile, st.integers(min_value=2, max_value=300))
def test_clipped_text_is_bounded_and_marked(value: str, limit: int) -> None:
    clipped = clip(value, limit)
    assert len(clipped) <= limit
    assert clipped == value or (clipped.endswith("…") and value.startswith(clipped[:-1]))


def test_session_digests_correlate_without_revealing() -> None:
    session = "2f6b3c0e9d8a47b1a5c4e3d2f1a0b9c8"
    digest = session_digest(session)
    assert digest == session_digest(session) != session_digest(session[:-1] + "9")
    assert digest.startswith("sha256:") and len(digest) == 23
    assert session not in digest and session[:8] not in digest
    assert session_digest("\ud800").startswith("sha256:")  # any text, even one UTF-8 cannot carry


@settings(max_examples=50)
@given(st.lists(hostile, max_size=200), st.integers(min_value=0, max_value=20))
def test_bounded_values_never_make_more_than_limit_labels(values: list[str], limit: int) -> None:
    bounded = BoundedValues(limit, max_length=64)
    labels = {bounded(value) for value in values}
    assert len(labels - {OTHER}) <= limit
    assert all(len(label) <= 64 for label in labels)
    first = {v for v in values if len(v) <= 64}
    for value in values:  # a value admitted once keeps its label
        if value in bounded:
            assert bounded(value) == value
    assert len(bounded) <= min(limit, len(first))


@pytest.mark.parametrize(
    ("name", "portable"),
    [
        *[("search", True), ("github__search_issues", True), ("a.b-c_9", True), ("x" * 64, True)],
        *[("x" * 65, False), ("", False), ("has space", False), ("naïve", False), ("a/b", False), ("tab\t", False)],
        ("\ud800", False),
    ],
)
def test_portable_names(name: str, portable: bool) -> None:
    assert portable_name(name) is portable


def test_the_sdks_log_lines_name_sessions_by_digest(caplog: pytest.LogCaptureFixture) -> None:
    session = "2f6b3c0e9d8a47b1a5c4e3d2f1a0b9c8"
    logger = logging.getLogger("test.recording.sdk")
    logger.addFilter(SessionIdRedaction())
    with caplog.at_level(logging.INFO, logger="test.recording.sdk"):
        logger.info("Created new transport with session ID: %s", session)
        logger.warning("Rejecting request for session %s: credential does not match", f"g1.{session}"[:64])
        logger.info("nothing to hide: %s", "deadbeef" * 3)
    text = caplog.text
    assert session not in text and text.count(session_digest(session)) == 2
    assert "deadbeef" * 3 in text
