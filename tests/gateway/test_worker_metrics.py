"""`/metrics` under `--workers N`: whichever worker a scrape reaches, it carries every worker's series.

Real supervisor and workers (the CLI in a subprocess), real scrapes over new connections (each may
reach either worker), parsed with prometheus_client's own parser. The calls the workers served add up
to the calls made, in every scrape; a hung worker (SIGSTOP) is left out within the scrape's bound and
counted as missing; a worker killed with SIGKILL leaves no stale series or failing scrape.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SIGNALS, free_port
from tests.gateway.test_workers import KEY, SERVER, spread, start, wait_for, workers
from tests.support import processes

pytestmark = [pytest.mark.xdist_group(SIGNALS), pytest.mark.anyio]

CALLS = "mcp_server_operation_duration_seconds"


async def scrape(base: str) -> tuple[Counter[str], dict[str, float]]:
    """One scrape on a new connection: tools/call counts by worker, and the workers gauge by state."""
    async with httpx2.AsyncClient(timeout=30) as http:
        answer = await http.get(f"{base}/metrics")
    assert answer.status_code == 200, answer.text[:500]
    calls: Counter[str] = Counter()
    states: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == f"{CALLS}_count" and sample.labels.get("mcp_method_name") == "tools/call":
                calls[sample.labels["worker"]] += int(sample.value)
            if sample.name == "mcp_gateway_metrics_workers":
                states[sample.labels["state"]] = sample.value
    return calls, states


async def test_every_scrape_carries_every_workers_series(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[gateway]\nworkers = 2\n{KEY}{SERVER}[tracing]\n", encoding="utf-8")
    port, log = free_port(), tmp_path / "gateway.log"
    process = await anyio.to_thread.run_sync(start, config, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        pids = workers(process)
        assert len(pids) == 2
        answered: set[int] = set()
        made = 0
        for _ in range(5):  # bounded: until both workers served calls
            answered |= await spread(f"{base}/mcp/w")
            made += 6
            if answered == pids:
                break
        assert answered == pids, (answered, pids)
        for _ in range(6):  # new connections: scrapes reach both workers; each shows both
            calls, states = await scrape(base)
            assert set(calls) == {str(pid) for pid in pids}, calls
            assert sum(calls.values()) == made
            assert states == {"answered": 2, "missing": 0}

        (directory,) = _metrics_dirs(pids)
        assert sorted(p.name for p in directory.iterdir()) == sorted(f"{pid}.sock" for pid in pids)
        assert directory.stat().st_mode & 0o077 == 0  # only the gateway's user opens it
        victim = min(pids)
        os.kill(victim, signal.SIGSTOP)  # hung: the scrape answers without it, within its 1 s, and says so
        try:
            calls, states = await scrape(base)
        finally:
            os.kill(victim, signal.SIGCONT)  # before the supervisor's 10 s health ping replaces it
        assert states == {"answered": 1, "missing": 1}
        assert set(calls) == {str(pid) for pid in pids - {victim}}
        os.kill(victim, signal.SIGKILL)  # a worker of the gateway this test started
        await anyio.to_thread.run_sync(
            wait_for,
            lambda: len(workers(process)) == 2 and victim not in workers(process),
            process,
            log,
            "a new worker",
        )
        for _ in range(30):  # the replacement serves its socket once it has started
            calls, states = await scrape(base)
            if states.get("answered") == 2:
                break
            await anyio.sleep(0.5)
        assert states == {"answered": 2, "missing": 0}  # the dead worker's socket is not a missing worker
        assert str(victim) not in calls  # its series went with it
        survivor = (pids - {victim}).pop()
        assert calls[str(survivor)] > 0  # the survivor's counts are still there
        assert not (directory / f"{victim}.sock").exists()  # the stale socket was removed
    finally:
        processes.stop(process)
    assert not directory.exists()  # the supervisor removed its directory


def _metrics_dirs(pids: set[int]) -> set[Path]:
    """The supervisor's socket directory, as the workers inherited it in their environment."""
    found: set[Path] = set()
    for pid in pids:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"MCP_GATEWAY_WORKER_METRICS="):
                found.add(Path(item.split(b"=", 1)[1].decode()))
    return found
