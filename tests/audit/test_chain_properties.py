"""Properties of the chain: whatever one deletes, inserts, swaps or edits, the verifier finds it, at or just
after the line it touched, except the two cuts no chain without a secret shows: the newest record's removal,
and the oldest's, which the verifier reports as a chain continuing an earlier one."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_middleware.audit import Chain, record_digest, verify_files

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)


def chain_lines(contents: list[dict[str, Any]]) -> list[bytes]:
    chain = Chain()
    return [orjson.dumps(chain.seal({"event": "mcp.operation", **fields})) + b"\n" for fields in contents]


def verified(lines: list[bytes]) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        path.write_bytes(b"".join(lines))
        return verify_files([path])


contents = st.lists(st.dictionaries(st.sampled_from(["a", "b", "target", "n"]), JSON_SCALARS), min_size=3, max_size=12)


@settings(max_examples=30, deadline=None)
@given(contents)
def test_an_untouched_chain_verifies(fields: list[dict[str, Any]]) -> None:
    result = verified(chain_lines(fields))
    assert result.ok and result.records == len(fields) and result.last_seq == len(fields) - 1


@settings(max_examples=80, deadline=None)
@given(contents, st.data())
def test_every_single_tampering_is_found(fields: list[dict[str, Any]], data: st.DataObject) -> None:
    lines = chain_lines(fields)
    last = len(lines) - 1
    kind = data.draw(st.sampled_from(["delete", "swap", "duplicate", "edit", "edit_and_reseal"]))
    if kind == "delete":
        index = data.draw(st.integers(0, last - 1))  # not the newest: a cut-off end is not detectable
        del lines[index]
        if index == 0:  # the oldest: accepted as the continuation of an earlier chain, and said so
            result = verified(lines)
            assert result.ok and result.continues is not None and "continues an earlier chain" in result.summary()
            return
    elif kind == "swap":
        index = data.draw(st.integers(0, last - 1))
        other = data.draw(st.integers(index + 1, last))
        lines[index], lines[other] = lines[other], lines[index]
    elif kind == "duplicate":
        copied = data.draw(st.integers(0, last))
        index = data.draw(st.integers(copied + 1, last + 1))
        lines.insert(index, lines[copied])
    else:
        index = data.draw(st.integers(0, last if kind == "edit" else last - 1))
        record = orjson.loads(lines[index])
        record["target"] = data.draw(st.text(min_size=1, max_size=5).filter(lambda t: t != record.get("target")))
        if kind == "edit_and_reseal":  # the forger recomputes this record's digest: the next link breaks
            record["hash"] = record_digest(record)
        lines[index] = orjson.dumps(record) + b"\n"
    result = verified(lines)
    assert not result.ok and result.broken is not None, (kind, result.summary())
    assert result.broken.line <= index + 2, (kind, index, result.broken)  # lines are 1-based
