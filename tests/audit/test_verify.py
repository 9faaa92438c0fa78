"""`mcp-gateway audit verify`: an intact chain passes; an edit, a deletion, an insertion or a reordering is found.

The files are written by a real `AuditTrail` behind an SDK server under uvicorn; each test then
does to the file what an attacker (or a broken disk) would, and reads what the verifier says.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import anyio
import orjson
import pytest

from mcp_middleware.audit import AuditTrail, JsonlFileSink, backup_files, record_digest, verify_files
from mcp_middleware.gateway.cli import main
from tests.audit.support import call_echo, read_records, served_trail, settled
from tests.support import processes


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    """A file of 1 start record and 6 operations."""
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlFileSink(path)])
    with served_trail(trail) as served:
        anyio.run(call_echo, served, 6)
        anyio.run(settled, trail, 6)
    assert len(read_records(path)) == 7
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", "verify", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_intact_chain_passes_through_the_installed_command(audit_file: Path) -> None:
    done = processes.run(
        [sys.executable, "-m", "mcp_middleware.gateway", "audit", "verify", str(audit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 7 records in 1 file; seq 0..6")
    last = orjson.loads(lines_of(audit_file)[-1])
    assert last["hash"] in done.stdout


def test_an_altered_record_is_named_by_its_line(audit_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(audit_file)
    assert b'"request_id":2,' in lines[3]
    lines[3] = lines[3].replace(b'"request_id":2,', b'"request_id":9,')
    audit_file.write_bytes(b"".join(lines))
    code, said = verify(capsys, str(audit_file))
    assert code == 1
    assert f"{audit_file}:4: record seq 3 was altered" in said


def test_an_altered_record_with_a_recomputed_hash_breaks_the_next_link(
    audit_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(audit_file)
    record = orjson.loads(lines[3])
    record["outcome"]["class"] = "refused"
    record["hash"] = record_digest(record)  # the forger recomputes the record's own digest
    lines[3] = orjson.dumps(record) + b"\n"
    audit_file.write_bytes(b"".join(lines))
    code, said = verify(capsys, str(audit_file))
    assert code == 1
    assert f"{audit_file}:5: record seq 4 does not follow the record before it" in said


def test_a_deleted_record_is_found(audit_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(audit_file)
    del lines[2]
    audit_file.write_bytes(b"".join(lines))
    code, said = verify(capsys, str(audit_file))
    assert code == 1
    assert f"{audit_file}:3: record seq 3 where seq 2 was expected: records are missing before it" in said


def test_reordered_records_are_found(audit_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(audit_file)
    lines[2], lines[3] = lines[3], lines[2]
    audit_file.write_bytes(b"".join(lines))
    code, said = verify(capsys, str(audit_file))
    assert code == 1 and f"{audit_file}:3: record seq 3 where seq 2 was expected" in said


def test_an_inserted_copy_is_found(audit_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(audit_file)
    lines.insert(4, lines[2])  # a replayed record: valid on its own
    audit_file.write_bytes(b"".join(lines))
    code, said = verify(capsys, str(audit_file))
    assert code == 1 and f"{audit_file}:5: record seq 2 where seq 4 was expected: out of order" in said


def test_a_new_chain_spliced_in_the_middle_is_found(audit_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(audit_file)
    forged = {"seq": 0, "prev": None, "event": "audit.start", "resumed": False}
    forged["hash"] = record_digest(forged)
    audit_file.write_bytes(b"".join([*lines[:4], orjson.dumps(forged) + b"\n"]))
    code, said = verify(capsys, str(audit_file))
    assert code == 1 and f"{audit_file}:5: record seq 0 starts a new chain in the middle of this one" in said


def test_a_torn_line_and_a_missing_file(audit_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(audit_file)
    audit_file.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
    code, said = verify(capsys, str(audit_file))
    assert code == 1 and f"{audit_file}:7: not a JSON record" in said
    code, said = verify(capsys, str(audit_file.with_name("absent.jsonl")))
    assert code == 2 and "no such file" in said


@pytest.mark.anyio
async def test_the_chain_goes_on_across_rotated_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlFileSink(path, max_bytes=2048, backups=50)])
    with served_trail(trail) as served:
        await call_echo(served, 30)
        await settled(trail, 30)
    check_rotated(path, capsys)


def check_rotated(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = backup_files(path)[:-1]
    assert len(files) >= 3, files
    assert all(p.stat().st_size <= 2048 for p in [*files, path])
    every = [*files, path]
    records = read_records(*every)
    assert [r["seq"] for r in records] == list(range(len(records))) and len(records) == 31
    # The first record of each newer file names the last record of the file before it.
    for older, newer in itertools.pairwise(every):
        assert read_records(newer)[0]["prev"] == read_records(older)[-1]["hash"]

    code, said = verify(capsys, "--with-backups", str(path))
    assert code == 0 and said.startswith(f"OK: 31 records in {len(every)} files; seq 0..30"), said
    code, said = verify(capsys, str(path))  # the live file alone: it continues an earlier chain, and says so
    assert code == 0 and "continues an earlier chain" in said
    assert not verify_files(every).continues

    files[1].unlink()  # a whole rotated file lost
    code, said = verify(capsys, "--with-backups", str(path))
    assert code == 1 and "records are missing before it" in said


@pytest.mark.anyio
async def test_a_restart_resumes_the_chain_and_a_torn_tail_starts_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for _ in range(2):
        trail = AuditTrail([JsonlFileSink(path)])
        with served_trail(trail) as served:
            await call_echo(served, 2)
            await settled(trail, 2)
    starts = [r for r in read_records(path) if r["event"] == "audit.start"]
    assert [s["resumed"] for s in starts] == [False, True] and starts[1]["seq"] == 3
    assert verify_files([path]).ok and verify_files([path]).starts == 2

    with path.open("ab") as file:
        file.write(b'{"seq": 6, "prev": "sha256:')  # a crash in the middle of a write
    trail = AuditTrail([JsonlFileSink(path)])
    with served_trail(trail) as served:
        await call_echo(served, 1)
        await settled(trail, 1)
    lines = path.read_bytes().splitlines()
    assert lines[6] == b'{"seq": 6, "prev": "sha256:'  # the torn line was closed, not joined to the next record
    restart = orjson.loads(lines[7])
    assert restart["event"] == "audit.start" and restart["resumed"] is False and restart["seq"] == 0
    assert "cannot be resumed" in restart["reason"]
    broken = verify_files([path])
    assert broken.broken is not None and broken.broken.line == 7
    # The new chain on its own is intact.
    rest = tmp_path / "rest.jsonl"
    rest.write_bytes(b"\n".join(lines[7:]) + b"\n")
    assert verify_files([rest]).ok


def test_the_cli_needs_no_config_for_verify(audit_file: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_middleware.gateway", "audit", "verify", str(audit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # no gateway.toml here
        check=False,
    )
    assert done.returncode == 0, done.stderr
