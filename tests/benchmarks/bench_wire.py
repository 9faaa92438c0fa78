"""Instructions per request *over the wire*: callgrind on a uvicorn server process loaded on loopback.

The in-process count (:mod:`.bench_instructions`) leaves out what every request also costs a real
server: uvicorn's h11 parsing, the asyncio transports, the socket calls. A ratio of in-process counts
therefore overstates a middleware's share of a request. Here the server is the one the end-to-end
benchmark runs (`uvicorn --loop asyncio --http h11`, one worker), started under
`valgrind --tool=callgrind`, and loaded by 4 keep-alive connections sending the 1 KB modern
`tools/call`, `low` and then `high` requests in two runs; the difference of the process totals,
divided by `high - low`, is the instructions per request, start-up and shutdown cancelled out.
Deterministic up to the event loop's scheduling (a few hundred instructions a request between runs),
so it resolves differences the wall-clock ratio cannot on a loaded machine.

    python -m tests.benchmarks --only instructions --wire --apps bare,full_stack
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .apps import STACKS, Stack
from .bench_e2e import _FIRST_ID, HOST, Server, Wire, free_port, read_response, uvicorn_command, wait_ready
from .bench_instructions import Count, per_request

ROOT = Path(__file__).resolve().parents[2]
_COLLECTED = re.compile(rb"Collected\s*:\s*(\d+)")
_CONNECTIONS = 4


async def _load(server: Server, requests: int) -> None:
    await wait_ready(server, patience=1200.0)  # valgrind starts a server 50x slower than usual
    wire = Wire(server.port, _stack(server.name).path, _stack(server.name).headers)

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            for i in range(requests // _CONNECTIONS):
                request_id = _FIRST_ID + 1 + index * 100_000 + i
                writer.write(wire.request(request_id))
                status, body = await read_response(reader)
                wire.check(status, body, request_id)
        finally:
            writer.close()

    await asyncio.gather(*(connection(index) for index in range(_CONNECTIONS)))


def _stack(app: str) -> Stack:
    return STACKS[app]


def _callgrind(app: str, requests: int, workdir: Path) -> int:
    port = free_port()
    out = workdir / f"callgrind.{app}.{requests}"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *uvicorn_command(app, port)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(_load(Server(app, port, process, log), requests))
        process.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully; callgrind then writes its total
        process.wait(timeout=600)
        log.seek(0)
        output = log.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    match = _COLLECTED.search(output)
    if match is None:
        raise RuntimeError(
            f"callgrind of {app} x{requests} over the wire failed:\n{output[-2000:].decode(errors='replace')}"
        )
    return int(match.group(1))


def count(apps: Sequence[str], low: int, high: int) -> list[Count]:
    """Callgrind totals of a server loaded with `low` and with `high` requests, per app (two at a time)."""
    return per_request(apps, low, high, _callgrind)
