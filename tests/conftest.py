"""Shared fixtures: real servers under uvicorn on 127.0.0.1, real `mcp` SDK clients in both eras."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest
import uvicorn
from hypothesis import settings as hypothesis_settings
from mcp import Client
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support import processes
from tests.support.serving import said, serve_in_thread

# No per-example deadline: the suite asserts behaviour, never time, and a loaded machine is slow.
hypothesis_settings.register_profile("mcp-middleware", deadline=None)
hypothesis_settings.load_profile("mcp-middleware")

Era = Literal["modern", "legacy"]
ERAS: tuple[Era, ...] = ("modern", "legacy")


def require(module: str, why: str) -> ModuleType:
    """Import an optional dependency: skip without it locally, fail without it in CI (CI must not skip)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is required in CI ({why}): {exc}")
        pytest.skip(f"{module} not installed ({why})", allow_module_level=True)


def require_binary(name: str, why: str) -> str:
    """The path of a program: skip without it locally, fail without it in CI (CI must not skip)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI ({why}); .ci/run installs it")
        pytest.skip(f"{name} not installed ({why})")
    return path


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- no process outlives the run (tests/support/processes.py) ------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    processes.begin_run()  # before any test starts a process: they all inherit the run's tag
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    """A run stopped by SIGTERM (a CI job's timeout, `kill` of the run's group) ends as Ctrl-C ends it: the
    fixtures are torn down, so the processes tests started in sessions of their own are stopped, not orphaned."""
    raise KeyboardInterrupt(f"signal {signum}")


# --- pytest-xdist: what must run in one worker ------------------------------------------------------

SIGNALS = "signals"
"""The `xdist_group` of tests that bound a process's shutdown or SIGKILL one under load: pinned to one worker,
so they never run beside each other (`@pytest.mark.xdist_group(SIGNALS)`)."""

_SHARED_SCOPES = ("class", "module", "package")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Under `--dist loadgroup`, the tests of a module that share a module-scoped fixture (a gateway cluster,
    the conformance matrix) go to one worker, so the fixture is built once, not once per worker."""
    for item in items:  # before xdist's own hook turns `xdist_group` marks into scheduling groups
        if item.get_closest_marker("xdist_group") is None and _shares_a_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    result = yield
    if getattr(config.option, "loadgroup", False):  # set in an xdist worker under --dist loadgroup
        for item in items:
            _name_the_group(item)
    return result


def _name_the_group(item: pytest.Item) -> None:
    """Append `@group` to the node id, as pytest-xdist does to schedule a group as one unit.

    pytest-xdist 3.8 writes `item._nodeid`, which pytest 9.2's structured node ids no longer read: its groups
    are silently ignored (pytest-dev/pytest-xdist#1386). Where xdist's suffix took, this leaves it alone.
    """
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    if not names:
        return
    suffix = "@" + "_".join(sorted(names))
    if item.nodeid.endswith(suffix):
        return
    if hasattr(item, "_id"):  # pytest >= 9.2
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(item.nodeid + suffix)
    else:
        item._nodeid = item.nodeid + suffix


def _shares_a_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # doctests have none
    if info is None:
        return False
    return any(defs and defs[-1].scope in _SHARED_SCOPES for defs in info.name2fixturedefs.values())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    try:
        return (yield)
    finally:
        # While the test's processes still run, note the sessions they made for themselves (an SDK
        # stdio client's server, say): an orphan left in one after teardown is still found at the end.
        processes.remember_descendant_groups()


_workers_left_behind: list[str] = []
"""Under pytest-xdist, in the controller: what each worker's check found (its own output is not shown)."""


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: the controller hears a worker has finished
def pytest_testnodedown(node: Any, error: object) -> None:
    _workers_left_behind.extend(getattr(node, "workeroutput", {}).get("processes_left_behind", []))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process it started is still alive, naming each one, and end them.

    Last of all sessionfinish hooks: session-scoped fixtures (pytest's runner tears them down in its
    own sessionfinish) have stopped what they share by then. An xdist worker hands its findings to the
    controller (whose exit status is the run's), which reports them with its own.
    """
    leaked = processes.leftovers()
    report = [f"left behind: {proc.describe()}" for proc in leaked]
    processes.end(leaked)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # in an xdist worker: sent with the worker's "finished" event
        workeroutput["processes_left_behind"] = report
        return
    report += _workers_left_behind
    if not report:
        return
    count = sum(line.startswith("left behind: ") for line in report)
    report.append(f"{count} process(es) outlived the test run (now stopped): start and stop test processes")
    report.append("through tests/support/processes.py, which ends a process with its whole group")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("\n".join(report), file=sys.stderr)
    else:
        reporter.line("")
        reporter.write_sep("=", "processes left behind", red=True)
        for line in report:
            reporter.write_line(line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@dataclass
class Served:
    """An app running under uvicorn in a background thread."""

    base: str
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    def tasks(self) -> int:
        """How many tasks the server's event loop is running right now."""
        assert self.loop is not None
        return len(asyncio.all_tasks(self.loop))


_PORT_BAND = 4000
"""Ports each pytest process hands out, in a band of its own below the kernel's ephemeral range."""

_PORT_BAND_ENV = "MCP_TEST_PORT_BAND"
"""`start-stop`: the band a child process of a test hands out (`child_port_band`), instead of its worker's."""


def _port_band() -> range:
    given = os.environ.get(_PORT_BAND_ENV, "")
    if given:
        start, stop = (int(end) for end in given.split("-"))
        return range(start, stop)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = 10_000 + (int(worker) % 5 if worker.isdigit() else 0) * _PORT_BAND
    return range(start, start + _PORT_BAND)


def child_port_band(index: int, children: int) -> dict[str, str]:
    """The environment that gives the `index`-th of `children` concurrent child processes a slice of this band.

    Children that import this module would otherwise all hand out ports from their worker's one band (the
    environment says the same worker), each checking a port is free and binding it a moment later: two
    of them could pick the same port in between (seen in CI: `address already in use`). Slices do not
    overlap; the parent should not hand out ports while its children run.
    """
    band = _port_band()
    size = len(band) // children
    assert 0 <= index < children and size >= 16, (index, children, band)
    start = band.start + index * size
    return {_PORT_BAND_ENV: f"{start}-{start + size}"}


_ports = itertools.cycle(_port_band())
_ports_lock = threading.Lock()
for _ in range(random.randrange(_PORT_BAND)):  # a new run does not start where the last one ended
    next(_ports)


def free_port() -> int:
    """A loopback port nothing listens on, from this test process's own band, in turn.

    Not the kernel's choice (`bind(0)`): that comes from the ephemeral range every process shares, so a
    port one xdist worker's test just released could be handed to another worker's test, whose server
    would then receive what a client or pool of the first test still sent there (a request of another
    test recorded as this one's). Each worker has its own band, and goes round it before reusing a port.
    """
    with _ports_lock:
        for _ in range(_PORT_BAND):
            port = next(_ports)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:  # in use, or still closing: the next one
                    continue
                return port
    raise RuntimeError(f"no free loopback port in {_port_band()}")


class _LoopProbe:
    """Records the server's event loop (for task-leak checks) and otherwise stays out of the way."""

    def __init__(self, app: ASGIApp, served: Served) -> None:
        self.app = app
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.served.loop is None:
            self.served.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


@contextlib.contextmanager
def serve_app(app: ASGIApp, port: int | None = None, *, root_path: str = "") -> Iterator[Served]:
    """Serve `app` (lifespan on) on a free loopback port (or `port`) until the block ends (`uvicorn --root-path`)."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", root_path=root_path)
    server = uvicorn.Server(config)
    served = Served(base=f"http://127.0.0.1:{port}", server=server)
    config.app = _LoopProbe(app, served)
    with serve_in_thread(server, name=f"uvicorn-{port}"):  # one that does not start raises, naming the cause
        yield served


@pytest.fixture
def serve() -> Iterator[Callable[[ASGIApp], Served]]:
    """`serve(app)` starts a server for the test; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_app(app))


@contextlib.asynccontextmanager
async def connect(url: str, era: Era, **kwargs: Any) -> AsyncIterator[Client]:
    """An `mcp.Client` in the given era, with the client-side cache off (it would hide requests)."""
    mode = "legacy" if era == "legacy" else "auto"
    async with Client(url, mode=mode, cache=None, **kwargs) as client:
        expected = "2025-11-25" if era == "legacy" else "2026-07-28"
        assert client.protocol_version == expected
        yield client


@dataclass
class RedisServer:
    """A real `redis-server` on a free loopback port, no persistence; `stop()`/`start()` for outage tests."""

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, patience: float = 10.0) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        assert self.process is None, "already running"
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.directory), "--loglevel", "warning"]
        log = self.directory / f"redis-server-{self.port}.log"
        with log.open("ab") as output:  # what it says goes to a file: a failure to start quotes it
            self.process = processes.start(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"redis-server exited with {code}; it said:\n{said(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {patience:g} s; it said:\n{said(log)}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL); clients see connection errors until `start()`."""
        if self.process is None:
            return
        processes.stop(self.process, patience=5)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real `redis-server` for the test (fails in CI if it is not installed, skips locally)."""
    server = RedisServer(require_binary("redis-server", "Redis store tests"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 (it is its own CA): `(cert.pem, key.pem)` in `directory`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


class OutcomeLog:
    """An `on_outcome` hook for tests that records `(request, outcome)` pairs and lets a test wait for one.

    The hook runs on the server's thread once the app has returned, which can be just after the
    client has read its last answer: assert on an outcome only after `wait_for` has seen it.
    """

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any]] = []
        self._changed = threading.Condition()

    def __call__(self, request: Any, outcome: Any) -> None:
        with self._changed:
            self.items.append((request, outcome))
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Any, Any], bool], patience: float = 10.0) -> None:
        import anyio

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: any(predicate(r, o) for r, o in self.items), patience)

        assert await anyio.to_thread.run_sync(wait), f"no matching outcome within {patience} s: {self.items}"
