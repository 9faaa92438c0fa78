"""A live registry: servers added, removed and refused without a restart, with real gateway processes.

Each test runs `mcp-gateway serve` on loopback with a config file, rewrites the file (as an editor
does: a new file renamed over the old one) and sends SIGHUP, or, with `watch_config`, only writes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.shared.subscriptions import ToolsListChanged

from tests.conftest import free_port
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
STDIO = ROOT / "examples" / "gateway" / "stdio_server.py"

LOCAL = '[[servers]]\nname = "local"\napp = "tests.servers:build_server"\n'
OLD = '[[servers]]\nname = "old"\napp = "tests.servers:build_server"\n'
TEXT = f'[[servers]]\nname = "text"\ncommand = ["{{python}}", "{STDIO}"]\n'
PATIENCE = 30.0
"""Seconds a test waits for something the gateway does in the background (a loaded machine is slow)."""

pytestmark = pytest.mark.anyio


def write(path: Path, text: str | bytes) -> None:
    """Replace the file as editors do: write a new one beside it, rename it over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(fresh, path)


def config(*servers: str, watch: bool = False) -> str:
    return f"[gateway]\nshutdown_timeout = 10\nwatch_config = {'true' if watch else 'false'}\n\n" + "\n".join(servers)


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, text: str) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, Path, Path]]:
    """A gateway process serving `text`: (process, base URL, config file, log file)."""
    path, log, port = tmp_path / "gateway.toml", tmp_path / "gateway.log", free_port()
    write(path, text)
    process = await anyio.to_thread.run_sync(processes.start_gateway, path, port, log)
    try:
        yield process, f"http://127.0.0.1:{port}", path, log
    finally:
        await anyio.to_thread.run_sync(processes.stop, process)


async def logged(log: Path, needle: str, count: int = 1) -> str:
    """Wait until the log holds `needle` `count` times; the log."""
    with anyio.fail_after(PATIENCE):
        while True:
            text = await anyio.Path(log).read_text(errors="replace")
            if text.count(needle) >= count:
                return text
            await anyio.sleep(0.1)


async def tool_names(base: str) -> set[str]:
    async with Client(f"{base}/mcp", cache=None) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


async def post(base: str, path: str, method: str = "tools/list") -> httpx2.Response:
    """A modern request by hand (to see the HTTP status a client does not show)."""
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {"_meta": meta}}
    async with httpx2.AsyncClient(timeout=PATIENCE) as http:
        return await http.post(f"{base}{path}", json=body, headers=headers)


@pytest.mark.parametrize("trigger", ["sighup", "watch"])
async def test_servers_change_while_clients_stay_connected(trigger: str, tmp_path: Path) -> None:
    watch = trigger == "watch"
    async with gateway(tmp_path, config(LOCAL, OLD, watch=watch)) as (process, base, path, log):
        legacy_heard = anyio.Event()
        modern_heard = anyio.Event()
        progress: list[float] = []
        mount_progress: list[float] = []
        results: dict[str, str] = {}

        async def on_legacy(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                legacy_heard.set()

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        async def on_mount_progress(done: float, total: float | None, message: str | None) -> None:
            mount_progress.append(done)

        async with (
            Client(f"{base}/mcp", mode="legacy", cache=None, message_handler=on_legacy) as legacy,
            Client(f"{base}/mcp", cache=None) as modern,
            Client(f"{base}/mcp/old", cache=None) as at_mount,
        ):
            assert legacy.protocol_version == "2025-11-25"
            assert "old__echo" in {tool.name for tool in (await legacy.list_tools()).tools}
            await modern.list_tools()  # the SDK validates a result against the listed schema: list while it exists
            await at_mount.list_tools()

            async def stream_on_old() -> None:  # through the aggregate, on the server about to be removed
                answer = await modern.call_tool("old__slow", {"steps": 8}, progress_callback=on_progress)
                results["aggregate"] = answer.content[0].text  # type: ignore[union-attr]

            async def stream_at_mount() -> None:  # at the removed server's own mount
                answer = await at_mount.call_tool("slow", {"steps": 8}, progress_callback=on_mount_progress)
                results["mount"] = answer.content[0].text  # type: ignore[union-attr]

            async def listen() -> None:
                async with modern.listen(tools_list_changed=True) as subscription:
                    async for event in subscription:
                        if isinstance(event, ToolsListChanged):
                            modern_heard.set()
                            return

            async with anyio.create_task_group() as group:
                group.start_soon(listen)
                group.start_soon(stream_on_old)
                group.start_soon(stream_at_mount)
                with anyio.fail_after(PATIENCE):
                    while True:  # until both calls are running on "old"
                        if progress and mount_progress:
                            break
                        await anyio.sleep(0.05)
                write(path, config(LOCAL, TEXT, watch=watch))
                if not watch:
                    os.kill(process.pid, signal.SIGHUP)
                with anyio.fail_after(PATIENCE):
                    await legacy_heard.wait()
                    await modern_heard.wait()
            # Both calls finished on the old backend, with every progress notification.
            assert results == {"aggregate": "done after 8 steps", "mount": "done after 8 steps"}
            assert progress == [1, 2, 3, 4, 5, 6, 7, 8]
            assert mount_progress == [1, 2, 3, 4, 5, 6, 7, 8]
            # The new server is callable at once, by both clients, through the aggregate.
            for client in (legacy, modern):
                answer = await client.call_tool("text__reverse", {"text": "reload"})
                assert answer.content[0].text == "daoler"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as gone:
                await modern.call_tool("old__echo", {"text": "x"})
            assert (gone.value.code, gone.value.message) == (-32602, "Unknown tool: old__echo")
        async with Client(f"{base}/mcp/text", cache=None) as at_text:
            answer = await at_text.call_tool("reverse", {"text": "ab"})
            assert answer.content[0].text == "ba"  # type: ignore[union-attr]
        removed = await post(base, "/mcp/old")
        assert removed.status_code == 404
        assert removed.json()["error"]["message"] == "No MCP server is mounted at /mcp/old"
        names = await tool_names(base)
        assert "text__reverse" in names and "local__echo" in names
        assert not any(name.startswith("old__") for name in names)
        text = await logged(log, "config reloaded")
        assert "added text; removed old" in text
        async with httpx2.AsyncClient(timeout=PATIENCE) as http:
            ready = (await http.get(f"{base}/readyz")).json()
        assert ready["status"] == "ready", ready
        assert ready["checks"]["backends"]["detail"] == "2 backends ok", ready


async def test_a_broken_config_changes_nothing_and_names_key_and_line(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(LOCAL, OLD)) as (process, base, path, log):
        before = await tool_names(base)
        broken = config(LOCAL, OLD, TEXT.replace('name = "text"', 'name = "text"\ncolour = "blue"'))
        write(path, broken)
        os.kill(process.pid, signal.SIGHUP)
        text = await logged(log, "config reload refused")
        line = broken.splitlines().index('colour = "blue"') + 1
        assert f"servers[2].colour (line {line}): is not a known setting" in text
        # A file that is not UTF-8 (a binary written over it): refused too, named as such.
        write(path, b"\xff\xfe[gateway]\x00\x9f")
        os.kill(process.pid, signal.SIGHUP)
        text = await logged(log, "config reload refused", 2)
        assert "(file): is not UTF-8 text" in text
        assert await tool_names(base) == before
        assert (await post(base, "/mcp/old")).status_code == 200
        assert (await post(base, "/mcp/text")).status_code == 404
        assert "config reloaded" not in text
        assert process.poll() is None
        # Fixed: the next SIGHUP applies it.
        write(path, config(LOCAL, OLD, TEXT))
        os.kill(process.pid, signal.SIGHUP)
        await logged(log, "config reloaded")
        assert "text__reverse" in await tool_names(base)


async def test_settings_that_need_a_restart_are_named_and_left_alone(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(LOCAL)) as (process, base, path, log):
        changed = config(LOCAL, OLD).replace("shutdown_timeout = 10", "shutdown_timeout = 3\nport = 1")
        write(path, changed + '\n[auth]\nmode = "static"\n[auth.tokens]\n"t0ken-of-ci" = ["mcp"]\n')
        os.kill(process.pid, signal.SIGHUP)
        text = await logged(log, "config reloaded")
        assert "gateway.port, gateway.shutdown_timeout, auth.mode, auth.tokens need a restart, not applied" in text
        assert "t0ken-of-ci" not in text  # a key's name, never a secret's value
        assert "old__echo" in await tool_names(base)  # the servers were applied; auth stays off
        assert (await post(base, "/mcp/old")).status_code == 200


async def test_a_storm_of_sighups_ends_in_the_last_written_state(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(LOCAL, OLD)) as (process, base, path, log):
        for round_ in range(10):  # the file flips between two sets while the signals arrive
            write(path, config(LOCAL, TEXT) if round_ % 2 == 0 else config(LOCAL, OLD))
            os.kill(process.pid, signal.SIGHUP)
            await anyio.sleep(0.02)
        write(path, config(LOCAL, TEXT))
        os.kill(process.pid, signal.SIGHUP)
        with anyio.fail_after(PATIENCE * 2):
            while True:  # reloads coalesce: fewer than eleven, and the last one reads the last file
                names = await tool_names(base)
                if "text__reverse" in names and not any(name.startswith("old__") for name in names):
                    break
                await anyio.sleep(0.2)
        await anyio.sleep(1.0)  # a late reload would show up here
        text = log.read_text(errors="replace")
        assert 1 <= text.count("config reloaded") <= 11
        assert "Traceback" not in text
        assert (await post(base, "/mcp/old")).status_code == 404
        assert (await post(base, "/mcp/text")).status_code == 200
        assert await tool_names(base) == names
        assert process.poll() is None


def stdio_children(process: subprocess.Popen[bytes]) -> list[int]:
    return [child.pid for child in processes.descendants(process.pid) if "stdio_server.py" in child.cmdline]


async def gone(pid: int) -> None:
    with anyio.fail_after(PATIENCE):
        while True:
            if not processes.alive(pid):
                return
            await anyio.sleep(0.1)


async def test_a_changed_stdio_server_is_restarted_and_a_removed_one_stopped(tmp_path: Path) -> None:
    async with (
        gateway(tmp_path, config(LOCAL, TEXT)) as (process, base, path, log),
        Client(f"{base}/mcp", mode="legacy", cache=None) as legacy,
    ):
        assert (await legacy.call_tool("text__reverse", {"text": "ab"})).content[0].text == "ba"  # type: ignore[union-attr]
        [first] = stdio_children(process)
        write(path, config(LOCAL, TEXT + "timeout = 20\n"))
        os.kill(process.pid, signal.SIGHUP)
        assert "changed text" in await logged(log, "config reloaded")
        await gone(first)  # the old process ends once nothing runs on it
        # The legacy session at the aggregate stays; it opens a session at the new process.
        assert (await legacy.call_tool("text__reverse", {"text": "cd"})).content[0].text == "dc"  # type: ignore[union-attr]
        assert (await legacy.call_tool("local__echo", {"text": "kept"})).content[0].text == "kept"  # type: ignore[union-attr]
        [second] = stdio_children(process)
        assert second != first
        write(path, config(LOCAL))
        os.kill(process.pid, signal.SIGHUP)
        assert "removed text" in await logged(log, "config reloaded", 2)
        await gone(second)
        assert stdio_children(process) == []
        assert (await post(base, "/mcp/text")).status_code == 404
        assert (await legacy.call_tool("local__echo", {"text": "still"})).content[0].text == "still"  # type: ignore[union-attr]


async def test_cached_lists_do_not_outlive_a_reload(tmp_path: Path) -> None:
    cached = "[cache]\nttl = 600\nhonor_ttl_ms = false\n"
    async with gateway(tmp_path, config(LOCAL, OLD) + cached) as (process, base, path, log):
        first = await tool_names(base)
        assert await tool_names(base) == first  # served from the cache by now
        write(path, config(LOCAL, TEXT) + cached)
        os.kill(process.pid, signal.SIGHUP)
        await logged(log, "config reloaded")
        names = await tool_names(base)
        assert "text__reverse" in names
        assert not any(name.startswith("old__") for name in names)


async def test_metrics_label_the_new_servers(tmp_path: Path) -> None:
    traced = "[tracing]\naccess_log = false\n"
    async with gateway(tmp_path, config(LOCAL) + traced) as (process, base, path, log):
        write(path, config(LOCAL, TEXT) + traced)
        os.kill(process.pid, signal.SIGHUP)
        await logged(log, "config reloaded")
        async with Client(f"{base}/mcp", cache=None) as client:
            await client.call_tool("text__reverse", {"text": "ab"})
        async with Client(f"{base}/mcp/text", cache=None) as client:
            await client.call_tool("reverse", {"text": "ab"})
        async with httpx2.AsyncClient(timeout=PATIENCE) as http:
            metrics = (await http.get(f"{base}/metrics")).text
        counted = [
            line for line in metrics.splitlines() if line.startswith("mcp_server_operation_duration_seconds_count")
        ]
        assert any('="text"' in line for line in counted), counted
