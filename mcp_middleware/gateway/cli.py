"""`mcp-gateway` (also `python -m mcp_middleware.gateway`): serve, check a config, list and probe its servers,
get a dev token, write a new server.

Exit codes: 0 success; 1 the gateway failed while running (or, for `health-check`, a required
server is not healthy); 2 bad usage or a config file with problems (each printed with its key and line).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mcp_middleware.logs import configure_logging

from .cli_arguments import (
    HEALTH_CHECK_HELP,
    NEW_SERVER_HELP,
    TOKEN_HELP,
    audit_arguments,
    health_check_arguments,
    new_server_arguments,
    positive_count,
    token_arguments,
)
from .config import ConfigError, GatewayConfig, dev_mode_exposure, dev_mode_problem, load_config

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_DEFAULT_CONFIG_FILE = "gateway.toml"


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
            default=Path(os.environ.get("MCP_GATEWAY_CONFIG", _DEFAULT_CONFIG_FILE)),
            help="the TOML config file (default: $MCP_GATEWAY_CONFIG or ./gateway.toml)",
        )
        return sub

    serve = with_config(commands.add_parser("serve", help="serve the gateway"))
    serve.add_argument("--host", help="override [gateway].host")
    serve.add_argument("--port", type=int, help="override [gateway].port (also $PORT)")
    serve.add_argument("--workers", type=positive_count, help="override [gateway].workers: processes serving the port")
    check = with_config(
        commands.add_parser(
            "check-config", help="run every check serve runs short of binding the port, and print a summary"
        )
    )
    check.add_argument("--workers", type=positive_count, help="check as `serve --workers N` would")
    check.add_argument(
        "--probe",
        action="store_true",
        help="also start every backend and list its tools: unreachable backends are errors (warnings when "
        "optional), selectors naming no tool are warnings",
    )
    with_config(commands.add_parser("list-servers", help="list the configured servers and where they are mounted"))
    health_check_arguments(with_config(commands.add_parser("health-check", help=HEALTH_CHECK_HELP)))
    new_server_arguments(commands.add_parser("new-server", help=NEW_SERVER_HELP))
    token_arguments(with_config(commands.add_parser("token", help=TOKEN_HELP)))
    audit_arguments(commands.add_parser("audit", help="check the audit trail ([audit] file)"))
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
        if server.pool is not None:  # a pool: every URL, or the command and how many processes of it
            target = ", ".join(server.pool.urls) if server.pool.urls else f"{target} (x{server.pool.replicas})"
        where = f"{prefix}/{server.name}" if server.mount else "(not mounted)"
        aggregated = "aggregated" if server.aggregate and config.aggregate.enabled else "-"
        rows.append(f"{server.name:<20} {server.kind:<8} {where:<28} {aggregated:<11} {target}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "new-server":  # the one command with no config to read
        from .scaffold import new_server

        return new_server(args.name, args.dir)
    if args.command == "audit":  # works on the files alone: no config needed
        from mcp_middleware.audit.verify import verify_command

        return verify_command(args.files, with_backups=args.with_backups, key_env=args.key_env)
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    if args.command == "check-config":
        return _check_config(config, args.config, probe=args.probe, workers=args.workers)
    if args.command == "health-check":
        from .health_check import health_check

        _quiet_probe_logs()
        return health_check(config, args.config, timeout=args.timeout, as_json=args.json)
    if args.command == "list-servers":
        print(f"{'name':<20} {'kind':<8} {'mount':<28} {'aggregate':<11} target")
        print("\n".join(_describe(config)))
        return EXIT_OK
    if args.command == "token":
        from .dev_token import token_command

        try:
            port = _env_port(args.port)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        return token_command(config, args, port=port)
    return _serve(config, host=args.host, port=args.port, source=args.config, workers=args.workers)


def _check_config(config: GatewayConfig, source: Path, *, probe: bool, workers: int | None = None) -> int:
    from .config_check import check_config

    _quiet_probe_logs()
    problems, warnings = check_config(config, probe=probe, workers=workers)
    for warning in warnings:
        print(f"{source}: warning: {warning}", file=sys.stderr)
    if problems:
        print(ConfigError(problems, str(source)), file=sys.stderr)
        return EXIT_USAGE
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
    counted = f"; {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""
    print(f"{source}: OK — {len(config.servers)} servers; middlewares: {', '.join(enabled) or 'none'}{counted}")
    return EXIT_OK


def _quiet_probe_logs() -> None:
    """A probe starts servers: their INFO lines are not the command's output, and the gateway's
    warnings (a skipped server) come back as results. A stdio server's own stderr still shows."""
    for chatty in ("mcp", "httpx2"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    logging.getLogger("mcp.client").setLevel(logging.CRITICAL)  # what it fails on is the probe's result
    logging.getLogger("mcp_middleware.gateway").setLevel(logging.ERROR)


def _env_port(port: int | None) -> int | None:
    """`--port`, else `$PORT`; raises ValueError when `$PORT` is not a port number."""
    env_port = os.environ.get("PORT")
    if port is not None or not env_port:
        return port
    if not env_port.isdigit() or not 0 <= int(env_port) <= 65535:
        raise ValueError(f"PORT must be a port number, not {env_port!r}")
    return int(env_port)


def _serve(
    config: GatewayConfig, *, host: str | None, port: int | None, source: Path, workers: int | None = None
) -> int:
    import uvicorn

    from .app import build_gateway
    from .workers import serve_workers, workers_accepted

    exposed = dev_mode_problem(config, host)  # `--host` may differ from the file check-config saw
    if exposed is not None:
        print(f"{source}: 1 problem\n  {exposed}", file=sys.stderr)
        return EXIT_USAGE

    # Before any app is built: one handler and formatter for every record, the SDK's Rich output off.
    configure_logging(config.gateway.log_format, config.gateway.log_level, levels=config.gateway.log_levels)
    for warning in config.warnings:  # deprecated names: accepted, said once at start
        logging.getLogger("mcp_middleware.gateway").warning("%s: %s", source, warning)
    if not workers_accepted(config, workers := workers or config.gateway.workers, source):
        return EXIT_USAGE
    try:
        port = _env_port(port)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    # Bind first: a port in use is one error line, before any backend or stdio child starts.
    bind_host = host or config.gateway.host
    bind_port = config.gateway.port if port is None else port
    try:
        sock = _bind(bind_host, bind_port)
    except OSError as exc:
        print(f"cannot listen on {_authority(bind_host, bind_port)}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    with sock:
        try:  # the bound port (`--port 0` picks one) is the one the gateway's URLs name
            gateway = build_gateway(config, host=host, port=sock.getsockname()[1])
        except (ConfigError, ImportError, ValueError) as exc:
            print(f"cannot build the gateway: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if workers > 1:  # this process supervises; each worker builds its own gateway (workers.py)
            started = serve_workers(gateway, sock, workers=workers, source=source, host=host, banner=_banner)
            return EXIT_OK if started else EXIT_FAILED
        _before_serving(gateway, host)
        sighup = _reload_on_sighup(gateway)
        server = _announcing_server(uvicorn, gateway.uvicorn_config(), lambda: _banner(gateway, source), sighup)
        try:
            server.run(sockets=[sock])
        except Exception:
            logging.getLogger("mcp_middleware.gateway").exception("the gateway stopped on an error")
            return EXIT_FAILED
    return EXIT_OK if server.started else EXIT_FAILED


def _before_serving(gateway: Any, host: str | None) -> None:
    """Export the mcp SDK's own spans too; warn of a dev mode gateway others can reach."""
    if gateway.telemetry is not None:
        gateway.telemetry.install_global()
    where = dev_mode_exposure(gateway.config, host)
    if where is not None:
        logging.getLogger("mcp_middleware.gateway").warning(
            "dev mode on %s (allow_dev_on_public_host = true): the embedded authorization server's login page "
            "accepts any user name from anyone who can reach it; use it for demos only",
            where,
        )


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening (uvicorn listens once the lifespan ran)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reload_on_sighup(gateway: Any) -> Callable[[], None] | None:
    """What installs the SIGHUP handler (reload the servers) in the serving loop; None where there is no SIGHUP."""
    reloader = gateway.reloader
    if reloader is None or not hasattr(signal, "SIGHUP"):
        return None

    def install() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.request)

    return install


def _announcing_server(
    uvicorn: Any, config: Any, announce: Callable[[], None], reload: Callable[[], None] | None = None
) -> Any:
    """A `uvicorn.Server` that calls `announce()` once it listens (after the lifespan started the backends),
    and `reload()` (the SIGHUP handler's installation) as it starts.

    Built here, not at import, so the CLI loads uvicorn only to serve (and tests may replace `uvicorn.Server`).
    """

    class AnnouncingServer(uvicorn.Server):  # type: ignore[misc]
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            if reload is not None:  # before the lifespan: a SIGHUP during start-up must not end the process
                reload()
            await super().startup(sockets)
            if self.started and not self.should_exit:
                announce()

    return AnnouncingServer(config)


def _banner(gateway: Any, source: Path | None = None, *, workers: int = 1) -> None:
    """Where things are, and how to try it (with the `Authorization` header when auth is on)."""
    config, base = gateway.config, gateway.base_url
    prefix = config.gateway.prefix
    lines = [f"mcp-gateway on {base}" + (f" ({workers} workers)" if workers > 1 else "")]
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
    first_mount = next(iter(gateway.router.mounts), "")
    url = f"{base}{prefix}" if config.aggregate.enabled else f"{base}{prefix}/{first_mount}"
    inspector = f"npx @modelcontextprotocol/inspector --cli {url} --transport http --method tools/list"
    mode = config.auth.mode
    if mode == "none":
        lines.append(f"try it:  {inspector}")
    elif mode == "dev":
        where = f" -c {source}" if source is not None else ""
        where += "" if config.aggregate.enabled else f" --resource {first_mount}"
        lines.append(f"try it:  .venv/bin/python examples/gateway/try_it.py {url}")
        lines.append(f"    or:  TOKEN=$(mcp-gateway token{where} --url {base} --subject alice)")
        lines.append(f'         {inspector} --header "Authorization: Bearer $TOKEN"')
    else:  # never the secret itself: a placeholder for the token the operator holds
        held = "one of [auth.tokens]" if mode == "static" else f"a token from {config.auth.issuer or 'your issuer'}"
        lines.append(f'try it:  {inspector} --header "Authorization: Bearer <{held}>"')
    print("\n".join(lines), flush=True)
