"""`mcp-gateway` (also `python -m mcp_middleware.gateway`): serve, check a config, list its servers.

Exit codes: 0 success; 1 the gateway failed while running; 2 bad usage or a config
file with problems (each printed with its key and line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp_middleware.core import SessionIdRedaction

from .config import ConfigError, GatewayConfig, dev_mode_exposure, dev_mode_problem, load_config

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_CONFIG = "gateway.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-gateway",
        description="The mcp-middleware reference gateway: many MCP servers behind one endpoint, with auth, "
        "rate limits, circuit breakers, caching and tracing from one config file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--config",
            "-c",
            type=Path,
            default=Path(os.environ.get("MCP_GATEWAY_CONFIG", DEFAULT_CONFIG)),
            help="the TOML config file (default: $MCP_GATEWAY_CONFIG or ./gateway.toml)",
        )
        return sub

    serve = with_config(commands.add_parser("serve", help="serve the gateway"))
    serve.add_argument("--host", help="override [gateway].host")
    serve.add_argument("--port", type=int, help="override [gateway].port (also $PORT)")
    with_config(commands.add_parser("check-config", help="validate the config file and print a summary"))
    with_config(commands.add_parser("list-servers", help="list the configured servers and where they are mounted"))
    return parser


def _load(path: Path) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _describe(config: GatewayConfig) -> list[str]:
    prefix = config.gateway.prefix
    rows = []
    for server in config.servers:
        target = server.app or server.url or " ".join(server.command)
        where = f"{prefix}/{server.name}" if server.mount else "(not mounted)"
        aggregated = "aggregated" if server.aggregate and config.aggregate.enabled else "-"
        rows.append(f"{server.name:<20} {server.kind:<8} {where:<28} {aggregated:<11} {target}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    if args.command == "check-config":
        enabled = [
            name
            for name, on in (
                ("auth", config.auth.mode != "none"),
                ("ratelimit", config.ratelimit.enabled),
                ("cache", config.cache.enabled),
                ("breaker", config.breaker.enabled),
                ("tracing", config.tracing.enabled),
            )
            if on
        ]
        print(f"{args.config}: OK — {len(config.servers)} servers; middlewares: {', '.join(enabled) or 'none'}")
        return EXIT_OK
    if args.command == "list-servers":
        print(f"{'name':<20} {'kind':<8} {'mount':<28} {'aggregate':<11} target")
        print("\n".join(_describe(config)))
        return EXIT_OK
    return _serve(config, host=args.host, port=args.port, source=args.config)


def _serve(config: GatewayConfig, *, host: str | None, port: int | None, source: Path) -> int:
    import uvicorn

    from .app import build_gateway

    exposed = dev_mode_problem(config, host)  # `--host` may differ from the file check-config saw
    if exposed is not None:
        print(f"{source}: 1 problem\n  {exposed}", file=sys.stderr)
        return EXIT_USAGE

    logging.basicConfig(level=config.gateway.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("httpx2", "mcp.server.streamable_http_manager", "mcp.client"):  # one line per backend call
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    for sdk in ("mcp.server.streamable_http_manager", "mcp.server.streamable_http"):  # they log session ids
        logging.getLogger(sdk).addFilter(SessionIdRedaction())
    env_port = os.environ.get("PORT")
    if port is None and env_port:
        if not env_port.isdigit() or not 0 <= int(env_port) <= 65535:
            print(f"PORT must be a port number, not {env_port!r}", file=sys.stderr)
            return EXIT_USAGE
        port = int(env_port)
    try:
        gateway = build_gateway(config, host=host, port=port)
    except (ConfigError, ImportError, ValueError) as exc:
        print(f"cannot build the gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if gateway.telemetry is not None:
        gateway.telemetry.install_global()  # the mcp SDK's own spans are exported too
    where = dev_mode_exposure(config, host)
    if where is not None:
        logging.getLogger("mcp_middleware.gateway").warning(
            "dev mode on %s (allow_dev_on_public_host = true): the embedded authorization server's login page "
            "accepts any user name from anyone who can reach it; use it for demos only",
            where,
        )
    _banner(gateway)
    server = uvicorn.Server(gateway.uvicorn_config())
    try:
        server.run()
    except Exception:
        logging.getLogger("mcp_middleware.gateway").exception("the gateway stopped on an error")
        return EXIT_FAILED
    return EXIT_OK if server.started else EXIT_FAILED


def _banner(gateway: Any) -> None:
    """Where things are, and one command to try it."""
    config, base = gateway.config, gateway.base_url
    prefix = config.gateway.prefix
    lines = [f"mcp-gateway on {base}"]
    if config.aggregate.enabled:
        lines.append(f"  aggregate:   {base}{prefix}")
    for name in gateway.router.mounts:
        lines.append(f"  mount:       {base}{prefix}/{name}")
    for skipped in gateway.skipped:
        lines.append(f"  skipped:     {skipped}")
    if gateway.authorization_server is not None:
        lines.append(
            f"  login (dev): the embedded authorization server at {base} (its page opens when a client signs in)"
        )
    lines.append(
        f"  health:      {base}/healthz  {base}/readyz"
        + (f"  {base}{config.tracing.metrics_path}" if config.tracing.enabled else "")
    )
    if config.auth.mode == "dev":
        lines.append(f"try it:  .venv/bin/python examples/gateway/try_it.py {base}{prefix}")
    else:
        lines.append(
            f"try it:  npx @modelcontextprotocol/inspector --cli {base}{prefix} --transport http --method tools/list"
        )
    print("\n".join(lines), flush=True)
