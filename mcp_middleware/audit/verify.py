"""Check an audit chain: every record's own digest, and each record naming the one before it.

`verify_files([...])` reads the files in the order given (oldest first: `audit.jsonl.2`,
`audit.jsonl.1`, `audit.jsonl`) as one chain and stops at the first record that is wrong, naming
its file and line and what is wrong with it:

- an edited record no longer matches its own `hash`;
- after a deleted record, the next one's `prev` is not the digest of the record before it, and
  its `seq` skips;
- an inserted or reordered record breaks the same links;
- a new chain (`seq` 0, `prev` null) may only begin the first file.

What no chain without a secret can show: a whole chain rewritten by someone who recomputes every
digest. A signed chain (`[audit] key`, verified with `keys=`) shows that too, unless the forger
holds the key. What no chain shows: records cut off the end of the last file. Keep the files where
the gateway can append but not rewrite (append-only attributes, a log shipper, the OpenTelemetry
sink), and compare the last `hash` with a copy kept elsewhere. The first file may continue an
older chain (its first `prev` names a record not given): the summary says so.

>>> import tempfile, pathlib
>>> from .chain import Chain
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> chain = Chain()
>>> _ = (folder / "a.jsonl").write_bytes(b"".join(orjson.dumps(chain.seal({"n": n})) + b"\\n" for n in range(3)))
>>> verify_files([folder / "a.jsonl"]).ok
True
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .chain import AuditKeys, seal_problem

__all__ = ["Break", "Verification", "backup_files", "verify_files"]


@dataclass(frozen=True)
class Break:
    """The first wrong record: where it is and what is wrong."""

    file: Path
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


@dataclass
class Verification:
    """What the verifier found: counts, the chain's ends, and the first break (if any)."""

    files: list[Path] = field(default_factory=list)
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    continues: str | None = None
    """The `prev` of the first record when it continues an earlier chain (not given)."""
    starts: int = 0
    """`audit.start` records: how many times a writer (re)started."""
    dropped: int = 0
    """Operations the writer reported as dropped (`audit.dropped` records): missing, but said so."""
    signed: int = 0
    """Records whose `hash` is an HMAC under one of the keys given."""
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None and self.records > 0

    def summary(self) -> str:
        if self.broken is not None:
            return f"BROKEN at {self.broken}"
        if not self.records:
            return "no records"
        parts = [
            f"OK: {self.records} records in {len(self.files)} file{'s' if len(self.files) != 1 else ''}",
            f"seq {self.first_seq}..{self.last_seq}",
            f"last hash {self.last_hash}",
            f"{self.starts} writer start{'s' if self.starts != 1 else ''}",
        ]
        if self.signed and self.signed != self.records:
            parts.append(f"{self.records - self.signed} unsigned records before the first signed one")
        elif self.signed:
            parts.append("all signed")
        if self.dropped:
            parts.append(f"{self.dropped} operations reported dropped (queue full)")
        if self.continues is not None:
            parts.append(f"continues an earlier chain (first prev {self.continues})")
        return "; ".join(parts)


def verify_files(files: Sequence[Path | str], *, keys: AuditKeys | None = None) -> Verification:
    """Verify `files`, oldest first, as one chain (streaming: memory does not grow with the files).

    `keys`: the chain is signed (`[audit] key`): signed records are checked under them, and once
    one is signed every later record must be.
    """
    found = Verification(files=[Path(f) for f in files])
    prev_hash: str | None = None
    expected_seq: int | None = None
    for path in found.files:
        try:
            lines = _lines(path)
            for number, line in lines:
                problem, record = _check(line, prev_hash, expected_seq, found.records == 0, keys, found.signed > 0)
                if problem is not None:
                    found.broken = Break(path, number, problem)
                    return found
                assert record is not None
                if found.records == 0:
                    found.first_seq = record["seq"]
                    found.continues = record["prev"]
                found.records += 1
                found.signed += record["hash"].startswith("hmac-")
                found.starts += record.get("event") == "audit.start"
                if record.get("event") == "audit.dropped" and type(record.get("count")) is int:
                    found.dropped += record["count"]
                prev_hash, expected_seq = record["hash"], record["seq"] + 1
                found.last_seq, found.last_hash = record["seq"], prev_hash
        except OSError as exc:
            found.broken = Break(path, 0, f"cannot be read: {exc.strerror or exc}")
            return found
    return found


def _lines(path: Path) -> Iterable[tuple[int, bytes]]:
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            yield number, line.rstrip(b"\n")


def _check(
    line: bytes,
    prev_hash: str | None,
    expected_seq: int | None,
    first: bool,
    keys: AuditKeys | None = None,
    signed_before: bool = False,
) -> tuple[str | None, dict[str, Any] | None]:
    """What is wrong with one line given the record before it, or (None, the record)."""
    if not line.strip():
        return "an empty line where a record should be", None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not a JSON record ({exc})", None
    if not isinstance(record, dict):
        return "not a JSON object", None
    seq, prev, sealed = record.get("seq"), record.get("prev"), record.get("hash")
    if type(seq) is not int or not isinstance(sealed, str) or not (prev is None or isinstance(prev, str)):
        return "not an audit record (seq, prev and hash missing or of the wrong type)", None
    problem = seal_problem(record, keys, signed_before=signed_before)
    if problem is not None:
        return problem, None
    if first or expected_seq is None:
        if prev is None and seq != 0:
            return f"record seq {seq} starts a chain but its seq is not 0", None
        return None, record
    if prev is None:
        return f"record seq {seq} starts a new chain in the middle of this one (after seq {expected_seq - 1})", None
    if prev != prev_hash:
        if seq == expected_seq:
            return f"record seq {seq} does not follow the record before it (its prev is not that record's hash)", None
        return (
            f"record seq {seq} where seq {expected_seq} was expected: "
            f"{'records are missing before it' if seq > expected_seq else 'out of order'} (its prev does not match)"
        ), None
    if seq != expected_seq:
        return f"record seq {seq} where seq {expected_seq} was expected (its prev matches)", None
    return None, record


def backup_files(path: Path | str) -> list[Path]:
    """`path`'s rotated files oldest first, then `path` itself: `audit.jsonl.3`, `.2`, `.1`, `audit.jsonl`.

    Every `path.N` found is taken (not only `.1` up to the first gap), so a lost file in the middle
    breaks the chain where it was instead of silently shortening it.
    """
    path = Path(path)
    numbered: list[tuple[int, Path]] = []
    for candidate in path.parent.glob(f"{glob.escape(path.name)}.*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), candidate))
    return [found for _, found in sorted(numbered, reverse=True)] + [path]


def verify_command(files: Sequence[Path], *, with_backups: bool = False, key_env: Sequence[str] = ()) -> int:
    """`mcp-gateway audit verify FILE…`: print the summary; 0 intact, 1 broken, 2 a file or key that cannot be read.

    `key_env`: names of environment variables holding the chain's keys (never the keys themselves
    on a command line, where `ps` and shell histories show them).
    """
    import os
    import sys

    keys: AuditKeys | None = None
    if key_env:
        unset = [name for name in key_env if not os.environ.get(name)]
        if unset:
            print(f"environment variable {unset[0]} (--key-env) is not set", file=sys.stderr)
            return 2
        try:
            keys = AuditKeys([os.environ[name] for name in key_env])
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    chosen = [found for path in files for found in (backup_files(path) if with_backups else [path])]
    missing = [path for path in chosen if not path.is_file()]
    if missing:
        print(f"{missing[0]}: no such file", file=sys.stderr)
        return 2
    verification = verify_files(chosen, keys=keys)
    if verification.ok:
        print(verification.summary())
        return 0
    print(verification.summary(), file=sys.stderr)
    return 1
