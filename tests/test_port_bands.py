"""The test suite's port bands: concurrent child processes of one worker never share a port."""

from __future__ import annotations

import os
import sys

from tests.conftest import _port_band, child_port_band
from tests.docs.blocks import ROOT
from tests.support import processes


def test_child_slices_are_disjoint_and_inside_the_band() -> None:
    band = _port_band()
    slices = []
    for index in range(23):
        start, stop = (int(end) for end in child_port_band(index, 23)["MCP_TEST_PORT_BAND"].split("-"))
        slices.append(range(start, stop))
    taken = [port for piece in slices for port in piece]
    assert len(taken) == len(set(taken)) and min(taken) >= band.start and max(taken) < band.stop
    assert all(len(piece) >= 16 for piece in slices)


def test_a_child_hands_out_ports_from_its_slice_only() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **child_port_band(3, 7)}
    start, stop = (int(end) for end in env["MCP_TEST_PORT_BAND"].split("-"))
    script = "from tests.conftest import free_port\nprint(*(free_port() for _ in range(200)))"
    done = processes.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ports = [int(word) for word in done.stdout.split()]
    assert len(ports) == 200 and all(start <= port < stop for port in ports), (start, stop, ports[:10])
    assert len(set(ports)) >= 190  # it goes round its slice (571 ports), not one port over and over
