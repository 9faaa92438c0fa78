"""No client-chosen value grows the gateway's metrics, span names or log lines without a bound.

The review's reproduction: a legacy `initialize` body's `params.protocolVersion` became a label of
the duration histogram, and tracing runs before auth, so 150 anonymous requests (all 401) made 150
series and three 1 MiB versions made `/metrics` 54 MB. Here hypothesis plays the attacker against
the reference gateway (tracing, Prometheus, the access log, auth, rate limit, cache, breaker; real
backends): thousands of distinct hostile values (huge, unicode, control characters, look-alikes) as
protocol versions, methods, tool names and session ids, anonymous and with a valid token. Every
label value must come from a known set (or be `_OTHER`), the number of series and the size of
`/metrics` must stay under a fixed ceiling, and no log line may carry a session id or grow with the
input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_middleware.core import KNOWN_METHODS, KNOWN_PROTOCOL_VERSIONS
from mcp_middleware.tracing import ACCESS_LOGGER
from tests.support.requests import initialize_body, modern_body, modern_headers

from .hostile_gateway import TOKEN, HostileGateway, hostile_gateway

ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
BEARER = {"authorization": f"Bearer {TOKEN}"}
TOOLS = frozenset({"echo", "slow", "failing", "large", "lookup"})
SERIES_CEILING = 1000
"""Sample lines `/metrics` may hold, whatever the traffic. Measured: 75 (20 KB) after the legitimate traffic,
≈ 270 (85 KB) after the ≈ 2,100 hostile requests; before the fix, every distinct version was a new series."""
SIZE_CEILING = 320 * 1024
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class AccessLines:
    """Every access line the gateway wrote (a handler on the access logger)."""

    lines: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, into: AccessLines) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.lines.append(record.getMessage())


@dataclass
class Attack:
    gateway: HostileGateway
    http: httpx2.Client
    log: AccessLines
    sessions: list[str] = field(default_factory=list)
    """Hostile session ids sent (none may appear in a log line)."""
    real_sessions: list[str] = field(default_factory=list)
    requests: int = 0


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    logger = logging.getLogger(ACCESS_LOGGER)
    log = AccessLines()
    handler = _Collect(log)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with hostile_gateway(tmp_path_factory.mktemp("gateway")) as running, httpx2.Client(timeout=30) as http:
            attack = Attack(running, http, log)
            _legitimate_traffic(attack)
            yield attack
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _post(attack: Attack, url: str, body: bytes, headers: dict[str, str]) -> httpx2.Response:
    return attack.http.post(url, content=body, headers={**ACCEPT, **headers})


def _modern(method: str, params: dict[str, object], name: str | None = None) -> tuple[bytes, dict[str, str]]:
    if name is not None:
        params = {**params, "name": name}
    return modern_body(method, params), modern_headers(method, name)


def _legitimate_traffic(attack: Attack) -> None:
    """What real clients do: list and call tools on every endpoint, in both eras (the series they make are fine)."""
    for target in ("local", "remote", "aggregate"):
        url = attack.gateway.url(target)
        tools = "local__echo" if target == "aggregate" else "echo"
        for method, params, name in (("tools/list", {}, None), ("tools/call", {"arguments": {"text": "hi"}}, tools)):
            body, headers = _modern(method, params, name)
            assert _post(attack, url, body, {**headers, **BEARER}).status_code == 200
        opened = _post(attack, url, initialize_body("2025-11-25", client="attacker"), BEARER)
        assert opened.status_code == 200
        attack.real_sessions.append(opened.headers["mcp-session-id"])


def _scrape(attack: Attack) -> tuple[int, int, list[tuple[str, str]]]:
    """(sample lines, bytes, every label of every sample) of `/metrics`."""
    response = attack.http.get(attack.gateway.metrics_url)
    assert response.status_code == 200
    samples = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    labels = [pair for line in samples for pair in _LABEL.findall(line.split("} ", 1)[0])]
    return len(samples), len(response.content), labels


def _assert_bounded(attack: Attack) -> None:
    count, size, labels = _scrape(attack)
    assert count <= SERIES_CEILING, count
    assert size <= SIZE_CEILING, size
    for key, value in labels:
        assert len(value) <= 128, (key, value[:80])
        if not value:
            continue  # the exporter writes an attribute a series does not have as ""
        if key == "mcp_method_name":
            assert value in KNOWN_METHODS | {"_OTHER"}, value
        elif key == "mcp_protocol_version":
            assert value in KNOWN_PROTOCOL_VERSIONS | {"_OTHER"}, value
        elif key in ("gen_ai_tool_name", "gen_ai_prompt_name"):
            # Only names the servers listed: theirs and the aggregate's namespaced ones.
            assert value == "_OTHER" or value.split("__")[-1] in TOOLS | {"greet"}, value
    lines = attack.log.lines
    assert all(len(line) <= 8192 for line in lines), max(map(len, lines))


hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "So", "Mn"]), min_size=1, max_size=40),
    st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(1_000, 30_000)),
    st.builds(lambda n: "2025-11-25" + "9" * n, st.integers(0, 5_000)),
    st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True),
)
SHAPES = ("initialize", "call", "method", "session", "modern-call", "era")
TARGETS = ("local", "remote", "aggregate")


def _header_safe(value: str) -> str:
    """A distinct header value made of the hostile one (headers carry only visible ASCII)."""
    if value and len(value) <= 200 and all("!" <= c <= "~" for c in value):
        return value
    return "h" + value.encode("utf-8", "surrogatepass").hex()[:199]


def _attack_once(attack: Attack, shape: str, target: str, value: str, authenticated: bool) -> None:
    attack.requests += 1
    url = attack.gateway.url(target)
    auth = BEARER if authenticated else {}
    name = value if value not in TOOLS else value + "!"  # a real tool's name is no attack
    legacy_call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name}}
    if shape == "initialize":  # the review's reproduction: the version became a label
        _post(attack, url, initialize_body(value, client="attacker"), auth)
    elif shape == "call":
        _post(attack, url, orjson.dumps(legacy_call), auth)
    elif shape == "method":
        _post(attack, url, orjson.dumps({**legacy_call, "method": value}), auth)
    elif shape == "session":
        session = "session-" + _header_safe(value)  # (distinct from the names the other shapes log)
        attack.sessions.append(session)
        legacy = {"mcp-protocol-version": "2025-11-25", "mcp-session-id": session}
        _post(attack, url, b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}', {**legacy, **auth})
    elif shape == "modern-call":  # an unknown tool: an isError result, which vouches for nothing
        body, headers = _modern("tools/call", {"arguments": {}}, _header_safe(name))
        _post(attack, url, body, {**headers, **auth})
    else:  # a version the SDK does not know: the modern era, where GET is 405
        attack.http.get(url, headers={"mcp-protocol-version": _header_safe(value), **auth})


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    batch=st.lists(
        st.tuples(st.sampled_from(SHAPES), st.sampled_from(TARGETS), hostile_text, st.booleans()),
        min_size=20,
        max_size=40,
    )
)
def test_thousands_of_hostile_values_make_no_series_and_no_line_of_their_own(
    attack: Attack, batch: list[tuple[str, str, str, bool]]
) -> None:
    """Anonymous requests (401s, seen by tracing, which sits outside auth) and authenticated ones (the backends
    answer, but vouch for no name they do not have), one distinct hostile value each."""
    for shape, target, value, authenticated in batch:
        _attack_once(attack, shape, target, value, authenticated)
    _assert_bounded(attack)


def test_after_the_attack_the_metrics_are_bounded_and_no_session_id_was_logged(attack: Attack) -> None:
    """After the hypothesis attack (same module; run alone, a plain one of 1,200 requests first): the same
    bounds, and the access log's own promises."""
    index = 0
    while attack.requests < 1200:
        shape, target = SHAPES[index % len(SHAPES)], TARGETS[index % len(TARGETS)]
        _attack_once(attack, shape, target, f"\u202e{index}\x00" * (1 + index % 7), index % 2 == 0)
        index += 1
    _assert_bounded(attack)
    text = "\n".join(attack.log.lines)
    assert attack.log.lines, "the access log wrote nothing: the attack was not observed"
    for session in attack.real_sessions + attack.sessions:
        assert session not in text
    assert '"mcp.session_id":"sha256:' in text
    assert len(attack.log.lines) >= 1200, len(attack.log.lines)  # every request was observed
