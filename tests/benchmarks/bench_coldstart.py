"""Cold start to first answer of the serverless profile (AWS Lambda), as a fresh process lives it.

    python -m tests.benchmarks --only coldstart [--quick]

Each repeat starts a fresh Python process in `examples/gateway/` (the function's task root) with
`MCP_GATEWAY_CONFIG=serverless.toml`, which does what the Lambda runtime does: import
`mcp_middleware.gateway.serverless`, read `handler` (the config is loaded and checked, the gateway
built, its lifespan started, the issuer's keys fetched), and call it with one API Gateway (HTTP API
2.0) event: a modern `tools/list` at the aggregate. Then 20 warm invocations of a `tools/call`.

Two configurations of the example: `none` (`MCP_GATEWAY_AUTH_MODE=none`) and `jwt` (its JWKS served
on loopback by this process, a signed token on the event). Figures per phase, medians of the repeats:
interpreter start, imports, building and starting the gateway, the first answer; the total wall time
(target: ≤ 1 s) and the CPU time the process spent to its first answer (user + system), which a loaded
machine disturbs less than wall time; without `--quick`, one more process per configuration under
valgrind's callgrind counts the instructions from exec to the first answer (hash seed fixed), which
load cannot move (~1 minute of CPU each). What is not here: the Lambda runtime's own init, the download
of the deployment package, and a cold file cache (the repeats run on the files the first one read).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._common import median, section, table

ROOT = Path(__file__).resolve().parents[2]
TASK_ROOT = ROOT / "examples" / "gateway"
HOST = "bench.execute-api.eu-west-1.amazonaws.com"
TARGET_SECONDS = 1.0
WARM_CALLS = 20
ISSUER = "https://issuer.bench.test"

_CHILD = r"""
import json, os, resource, sys, time
began = time.time()
import mcp_middleware.gateway.serverless as serverless
imported = time.time()
handler = serverless.handler
ready = time.time()
first, warm = json.loads(sys.argv[1]), json.loads(sys.argv[2])
answer = handler(first, None)
answered = time.time()
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
took = []
for _ in range(int(sys.argv[3])):
    started = time.perf_counter()
    again = handler(warm, None)
    took.append(time.perf_counter() - started)
    assert again["statusCode"] == 200 and '"isError":true' not in again["body"], again
print(json.dumps({"began": began, "imported": imported, "ready": ready, "answered": answered, "cpu": cpu,
                  "status": answer["statusCode"], "body": answer["body"][:200], "warm": took,
                  "tools": len(json.loads(answer["body"]).get("result", {}).get("tools", []))}))
"""


_COUNTED = r"""
import json, os, sys
import mcp_middleware.gateway.serverless as serverless
answer = serverless.handler(json.loads(sys.argv[1]), None)
print(answer["statusCode"], flush=True)
os._exit(0)  # the count ends at the first answer: no interpreter teardown
"""
_COLLECTED = re.compile(rb"Collected : (\d+)")


def _instructions(env: dict[str, str], token: str | None) -> int:
    """Instructions from exec to the first answer, counted by callgrind (hash seed fixed): load cannot move it."""
    first = _event(_request("tools/list", {}, 1), "tools/list", None, token)
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", _COUNTED,
         json.dumps(first)],
        cwd=TASK_ROOT,
        env={**env, "PYTHONHASHSEED": "0"},
        capture_output=True,
        timeout=1800,
        check=False,
    )  # fmt: skip
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None or not done.stdout.startswith(b"200"):
        raise RuntimeError(f"callgrind of the cold start failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return int(match.group(1))


def _event(body: dict[str, Any], method: str, name: str | None, token: str | None) -> dict[str, Any]:
    headers = {
        "host": HOST,
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
        "x-forwarded-proto": "https",
        "x-forwarded-port": "443",
    }
    if name is not None:
        headers["mcp-name"] = name
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/mcp",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": HOST,
            "http": {"method": "POST", "path": "/mcp", "protocol": "HTTP/1.1", "sourceIp": "198.51.100.7"},
            "requestId": "bench",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "isBase64Encoded": True,
    }


def _request(method: str, params: dict[str, Any], request_id: int) -> dict[str, Any]:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": meta}}


@contextlib.contextmanager
def _jwks() -> Iterator[tuple[str, str]]:
    """(jwks_url, token): a JWKS served on loopback and a token it verifies for the aggregate."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "bench-1", "use": "sig"})
    document = json.dumps({"keys": [key.as_dict(private=False)]}).encode()

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": f"https://{HOST}/mcp", "sub": "bench", "iat": now, "exp": now + 3600}
    token = jwt.encode({"alg": "RS256", "kid": "bench-1"}, claims, key)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks", token
    finally:
        server.shutdown()
        server.server_close()


def _one(env: dict[str, str], token: str | None) -> dict[str, Any]:
    first = _event(_request("tools/list", {}, 1), "tools/list", None, token)
    call = _request("tools/call", {"name": "demo__echo", "arguments": {"text": "warm"}}, 2)
    warm = _event(call, "tools/call", "demo__echo", token)
    spawned = time.time()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(first), json.dumps(warm), str(WARM_CALLS)],
        cwd=TASK_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the cold start failed: {done.stderr.decode()[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if figures["status"] != 200 or not figures["tools"]:
        raise RuntimeError(f"the first answer was not a tools/list: {figures}")
    figures["spawned"] = spawned
    return figures


def _case(name: str, env: dict[str, str], token: str | None, repeats: int, *, count: bool) -> dict[str, Any]:
    _one(env, token)  # unmeasured: writes the bytecode (a deployment package ships it) and warms the file cache
    runs = [_one(env, token) for _ in range(repeats)]
    instructions = _instructions(env, token) if count else None

    def phase(start: str, end: str) -> float:
        return median([run[end] - run[start] for run in runs])

    warm = [took for run in runs for took in run["warm"]]
    return {
        "config": name,
        "interpreter_s": phase("spawned", "began"),
        "imports_s": phase("began", "imported"),
        "build_and_start_s": phase("imported", "ready"),
        "first_answer_s": phase("ready", "answered"),
        "total_s": phase("spawned", "answered"),
        "total_max_s": max(run["answered"] - run["spawned"] for run in runs),
        "cpu_s": median([run["cpu"] for run in runs]),
        "warm_ms": median(warm) * 1000,
        "repeats": repeats,
        "instructions": instructions,
    }


def main(quick: bool = False) -> dict[str, Any]:
    repeats = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="coldstart-pycache-") as cache, tempfile.TemporaryDirectory() as empty:
        return _run(repeats, quick, Path(cache), Path(empty))


def _run(repeats: int, quick: bool, cache: Path, empty: Path) -> dict[str, Any]:
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    base = {
        **environ,
        "MCP_GATEWAY_CONFIG": "serverless.toml",
        "MCP_GATEWAY_HOST": HOST,
        "MCP_GATEWAY_PUBLIC_URL": f"https://{HOST}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONPYCACHEPREFIX": str(cache),  # bytecode as a package ships it, written outside the repository
    }
    count = not quick and shutil.which("valgrind") is not None  # ~1 min of CPU per count
    none = {**base, "MCP_GATEWAY_AUTH_MODE": "none"}
    cases = [_case("none", none, None, repeats, count=count)]
    # A package shipped without bytecode: every module compiled at every cold start (read-only task root).
    bare = {**none, "PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"}
    cases.append(_case("none, no .pyc", bare, None, repeats, count=False))
    with _jwks() as (jwks_url, token):
        jwt_env = {
            **base,
            "MCP_GATEWAY_AUTH_MODE": "jwt",
            "MCP_GATEWAY_ISSUER": ISSUER,
            "MCP_GATEWAY_JWKS_URL": jwks_url,
        }
        cases.append(_case("jwt", jwt_env, token, repeats, count=count))
    print(
        section(f"serverless cold start to first answer (examples/gateway/serverless.toml, {repeats} fresh processes)")
    )
    rows = [
        [
            case["config"],
            case["interpreter_s"] * 1000,
            case["imports_s"] * 1000,
            case["build_and_start_s"] * 1000,
            case["first_answer_s"] * 1000,
            case["total_s"] * 1000,
            case["total_max_s"] * 1000,
            case["cpu_s"] * 1000,
            case["warm_ms"],
            f"{case['instructions'] / 1e9:.3f}" if case["instructions"] else "-",
        ]
        for case in cases
    ]
    headers = ["auth", "python ms", "imports ms", "build+start ms", "1st answer ms", "total ms", "max ms", "CPU ms"]
    print(table([*headers, "warm call ms", "G instructions"], rows))
    print("  medians; wall time on a shared machine is noise: the CPU column is steadier, the instruction count")
    print("  (callgrind, exec to first answer, hash seed 0; not with --quick) does not move with load")
    targets = [
        [f"serverless cold start to first answer ({case['config']}), median", case["total_s"], "s",
         f"≤ {TARGET_SECONDS:g} s", case["total_s"] <= TARGET_SECONDS]
        for case in cases
        if "no .pyc" not in case["config"]
    ]  # fmt: skip
    return {"cases": cases, "targets": targets}


if __name__ == "__main__":
    main()
