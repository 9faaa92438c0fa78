"""A signed audit chain (`[audit] key`): whoever rewrites the file without the key is caught.

A plain chain shows an edit, but a forger who can write the file can recompute every digest.
These tests do exactly that to a chain written by a real `AuditTrail` behind an SDK server under
uvicorn, and read what `mcp-gateway audit verify --key-env` says.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson
import pytest

from mcp_middleware.audit import AuditKeys, AuditTrail, JsonlFileSink, record_digest, verify_files
from mcp_middleware.gateway.cli import main
from mcp_middleware.gateway.config import ConfigError, load_config
from tests.audit.support import call_echo, read_records, served_trail, settled

KEY = "k" * 32 + "-the-current-audit-key"
OLD = "o" * 32 + "-the-retired-audit-key"


def write_trail(path: Path, keys: AuditKeys | None, calls: int) -> None:
    trail = AuditTrail([JsonlFileSink(path)], keys=keys)
    with served_trail(trail) as served:
        anyio.run(call_echo, served, calls)
        anyio.run(settled, trail, calls)


def rewrite(path: Path, change: dict[str, object], at: int, keys: AuditKeys | None = None) -> None:
    """What a forger does: change one record, then recompute every digest after it (without the real key)."""
    records = read_records(path)
    records[at].update(change)
    prev = records[at - 1]["hash"] if at else None
    for record in records[at:]:
        record["prev"] = prev
        record["hash"] = record_digest(record, keys)
        prev = record["hash"]
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))


def verify(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("AUDIT_KEY", KEY)
    monkeypatch.setenv("OLD_AUDIT_KEY", OLD)
    code = main(["audit", "verify", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_signed_chain_verifies_with_its_key_and_not_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, AuditKeys([KEY]), 3)
    records = read_records(path)
    assert all(record["hash"].startswith("hmac-sha256:") for record in records)
    assert KEY not in path.read_text()

    code, said = verify(capsys, monkeypatch, "--key-env", "AUDIT_KEY", str(path))
    assert code == 0 and "OK: 4 records" in said and "all signed" in said
    code, said = verify(capsys, monkeypatch, str(path))
    assert code == 1 and "is signed (key id" in said and "give its key" in said


def test_a_forger_without_the_key_is_caught_even_recomputing_every_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, AuditKeys([KEY]), 4)
    # 1. Plain SHA-256 digests recomputed from the edit on: the first rewritten record is named.
    rewrite(path, {"principal": {"sub": "mallory"}}, 2)
    code, said = verify(capsys, monkeypatch, "--key-env", "AUDIT_KEY", str(path))
    assert code == 1 and ":3: record seq 2 is not signed, after signed records" in said

    # 2. Signed again, under a key the forger made up: a key not given.
    write_trail(path := tmp_path / "second.jsonl", AuditKeys([KEY]), 4)
    rewrite(path, {"outcome": "ok"}, 1, AuditKeys(["f" * 40]))
    code, said = verify(capsys, monkeypatch, "--key-env", "AUDIT_KEY", str(path))
    assert code == 1 and "record seq 1 is signed with a key not given" in said

    # 3. The same rewrite of a plain chain passes a plain verification: why the key matters.
    write_trail(path := tmp_path / "plain.jsonl", None, 4)
    rewrite(path, {"outcome": "ok"}, 1)
    assert verify_files([path]).ok


def test_a_forged_key_id_with_a_real_one_does_not_help(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, AuditKeys([KEY]), 2)
    records = read_records(path)
    key_id = records[1]["hash"].split(":")[1]
    records[1]["outcome"] = "forged"
    records[1]["hash"] = f"hmac-sha256:{key_id}:" + "0" * 64
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    found = verify_files([path], keys=AuditKeys([KEY]))
    assert found.broken is not None and found.broken.line == 2 and "was altered" in found.broken.problem


def test_rotation_and_signing_an_existing_plain_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, None, 1)  # before the operator set a key: plain
    write_trail(path, AuditKeys([OLD]), 1)  # then signed: the chain continues, signed from here on
    write_trail(path, AuditKeys([KEY, OLD]), 1)  # then rotated: the old key still verifies
    starts = [record for record in read_records(path) if record["event"] == "audit.start"]
    assert [start["resumed"] for start in starts] == [False, True, True]

    code, said = verify(capsys, monkeypatch, "--key-env", "AUDIT_KEY", "--key-env", "OLD_AUDIT_KEY", str(path))
    assert code == 0 and "2 unsigned records before the first signed one" in said
    code, said = verify(capsys, monkeypatch, "--key-env", "AUDIT_KEY", str(path))
    assert code == 1 and "signed with a key not given" in said


def test_a_writer_without_the_key_does_not_continue_a_signed_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, AuditKeys([KEY]), 1)
    write_trail(path, None, 1)
    restart = read_records(path)[-2]
    assert restart["event"] == "audit.start" and restart["resumed"] is False
    assert "give its key" in restart["reason"]


def test_the_verifier_refuses_unset_or_weak_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, AuditKeys([KEY]), 1)
    code, said = verify(capsys, monkeypatch, "--key-env", "NO_SUCH_VARIABLE", str(path))
    assert code == 2 and "NO_SUCH_VARIABLE (--key-env) is not set" in said
    monkeypatch.setenv("WEAK", "short")
    code, said = verify(capsys, monkeypatch, "--key-env", "WEAK", str(path))
    assert code == 2 and "at least 32" in said


def test_config_key_is_read_from_the_environment_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.toml"
    server = '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n\n'
    config.write_text(server + '[audit]\nfile = "audit.jsonl"\nkey = "${env:AUDIT_KEY}"\n')
    monkeypatch.setenv("AUDIT_KEY", KEY)
    assert load_config(config).audit.keys == (KEY,)
    assert KEY not in repr(load_config(config).audit)  # never printed with the settings

    config.write_text(server + '[audit]\nfile = "audit.jsonl"\nkey = ["too short", "${env:AUDIT_KEY}"]\n')
    with pytest.raises(ConfigError) as failed:
        load_config(config)
    assert "audit.key[0] (line 7): must be at least 32 characters" in str(failed.value)
