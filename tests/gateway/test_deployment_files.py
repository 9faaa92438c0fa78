"""The deployment files shipped in examples/gateway/ are well-formed and agree with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcp_middleware.gateway.config import parse_config
from tests.conftest import require, require_binary
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "examples" / "gateway" / "k8s"


def manifests() -> list[dict]:  # type: ignore[type-arg]
    yaml = require("yaml", "reading the Kubernetes manifests")
    return [doc for path in sorted(K8S.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_manifests_have_every_kind_the_deployment_needs() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in manifests()}
    assert {
        ("Deployment", "mcp-gateway"),
        ("Service", "mcp-gateway"),
        ("Service", "mcp-gateway-pods"),
        ("ConfigMap", "mcp-gateway"),
        ("HorizontalPodAutoscaler", "mcp-gateway"),
        ("Deployment", "redis"),
        ("Service", "redis"),
    } <= kinds


def test_the_configmap_holds_a_valid_gateway_config(monkeypatch: pytest.MonkeyPatch) -> None:
    [configmap] = [d for d in manifests() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mcp-gateway"]
    monkeypatch.setenv("SEARCH_TOKEN", "t")
    monkeypatch.setenv("MCP_GATEWAY_SESSION_KEY", "k" * 43)  # secrets.token_urlsafe(32) is 43 characters
    config = parse_config(configmap["data"]["gateway.toml"])
    assert config.gateway.session_key == ("k" * 43,)  # sealed handles: any pod resumes any session
    assert config.ratelimit.store.startswith("redis://") and config.cache.store.startswith("redis://")


def test_probes_and_grace_period_match_the_gateway() -> None:
    [deployment] = [d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mcp-gateway"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > 20  # > shutdown_timeout in the ConfigMap


def test_the_dockerfile_copies_files_that_exist() -> None:
    text = (ROOT / "examples" / "gateway" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(?:--chown=\S+ )?(.+)$", text, flags=re.MULTILINE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source


@pytest.mark.parametrize("name", ["nginx.conf", "nginx-affinity.conf"])
def test_nginx_accepts_the_shipped_config(tmp_path: Path, name: str) -> None:
    nginx = require_binary("nginx", f"checking examples/gateway/{name}")
    text = (ROOT / "examples" / "gateway" / name).read_text()
    text = text.replace("/tmp/mcp-gateway-nginx", str(tmp_path / "nginx"))
    (tmp_path / "nginx.conf").write_text(text)
    done = processes.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
