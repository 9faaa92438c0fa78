"""The official conformance suite against the router: bare, a path mount, a remote path mount, the aggregate.

Not a pytest module (the suite needs npm and takes a minute); run it by hand:

    .venv/bin/python -m tests.router.conformance [--output-dir DIR]

Variants, each serving `tests/conformance/server.py`'s conformance server:

* `bare` — the server alone (the baseline);
* `mount` — an in-process path mount `/mcp/conformance` of a router with two other backends;
* `remote` — the server in its own uvicorn, behind an `HttpBackend` path mount (the streaming proxy);
* `aggregate-always` — the aggregate, the conformance server among three backends, `PrefixMode.ALWAYS`;
* `aggregate-never` — the same with `PrefixMode.NEVER` (names unchanged where they do not collide).

Prints the suite's scenario x variant table (cells as in `tests/conformance/run.py`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mcp_middleware.router import HttpBackend, McpRouter, NamingPolicy, PrefixMode
from tests.conformance.run import Report, VariantRun, parse_results
from tests.conformance.server import bare_app
from tests.conformance.suite import ensure_suite, list_scenarios, run_suite
from tests.conftest import serve_app
from tests.router.servers import team_server


def router_with_conformance(naming: NamingPolicy) -> McpRouter:
    router = McpRouter(naming=naming)
    router.mount("alpha", team_server("alpha").streamable_http_app())
    router.mount("conformance", bare_app())
    router.mount("beta", team_server("beta").streamable_http_app())
    return router


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    args = parser.parse_args()
    wanted = [name for name in args.variants.split(",") if name]
    output = args.output_dir or Path(tempfile.mkdtemp(prefix="router-conformance-"))
    suite = ensure_suite()
    report = Report(scenarios=list_scenarios(suite), output_dir=output)
    with serve_app(bare_app()) as remote_origin:
        variants = {
            "bare": (bare_app(), "/mcp"),
            "mount": (router_with_conformance(NamingPolicy()), "/mcp/conformance"),
            "remote": (_remote_router(remote_origin.mcp_url), "/mcp/conformance"),
            "aggregate-always": (router_with_conformance(NamingPolicy(prefix=PrefixMode.ALWAYS)), "/mcp"),
            "aggregate-never": (router_with_conformance(NamingPolicy(prefix=PrefixMode.NEVER)), "/mcp"),
        }
        for name, (app, path) in variants.items():
            if wanted and name not in wanted and name != "bare":
                continue
            started = time.monotonic()
            with serve_app(app) as served:
                error = run_suite(suite, f"{served.base}{path}", output / name)
            report.runs[name] = VariantRun(parse_results(output / name), time.monotonic() - started, error)
    print(report.render())
    print(f"results: {output}")
    return 0


def _remote_router(url: str) -> McpRouter:
    router = McpRouter(aggregate_path=None)
    router.mount("conformance", HttpBackend(url))
    return router


if __name__ == "__main__":
    raise SystemExit(main())
