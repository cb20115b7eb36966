"""What of the end-to-end suite (e2e/) can be checked without a cluster: how it skips, and what it applies.

The suite itself needs a Docker engine (and kind, with E2E_CLUSTER_TYPE=kind). Here: the default
`pytest` run does not collect it; `make e2e` and `pytest e2e` skip naming exactly what is missing
(and fail with E2E_REQUIRE=1); the manifests the suite applies are valid, restricted and accepted
by `optiserve validate`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from e2e.digits import digits_manifest
from e2e.steps import _loader_pod
from optiserve.cli import main as optiserve
from tests.chart.policy import house_violations, restricted_violations
from tests.support.models import REPO_ROOT


@pytest.fixture
def without_docker_or_kind(tmp_path: Path) -> dict[str, str]:
    """An environment where `docker` answers but its engine does not, and `kind` is absent.

    The suite's own Docker setup is turned off (E2E_SETUP_DOCKER=0): it would start an engine, and
    E2E_REQUIRE is dropped (`make test` sets it for its own e2e run; here the skip is what is checked).
    """
    fake = tmp_path / "bin"
    fake.mkdir()
    docker = fake / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    path = [str(fake), *(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "kind").exists())]
    inherited = {key: value for key, value in os.environ.items() if key != "E2E_REQUIRE"}
    return {**inherited, "PATH": os.pathsep.join(path), "E2E_SETUP_DOCKER": "0"}


def test_the_default_run_does_not_collect_e2e() -> None:
    options = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"]


def test_make_e2e_skips_naming_what_is_missing(without_docker_or_kind: dict[str, str]) -> None:
    result = subprocess.run(
        ["e2e/run.sh"], cwd=REPO_ROOT, env=without_docker_or_kind, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "e2e: SKIPPED, the node cluster needs: a Docker engine (`docker info` failed)" in result.stderr
    with_kind = {**without_docker_or_kind, "E2E_CLUSTER_TYPE": "kind"}
    result = subprocess.run(["e2e/run.sh"], cwd=REPO_ROOT, env=with_kind, capture_output=True, text=True, check=False)
    assert (
        "e2e: SKIPPED, the kind cluster needs: a Docker engine (`docker info` failed); kind (no `kind` on PATH" in result.stderr
    )
    required = {**without_docker_or_kind, "E2E_REQUIRE": "1"}
    result = subprocess.run(["e2e/run.sh"], cwd=REPO_ROOT, env=required, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "a Docker engine" in result.stderr


def test_pytest_e2e_skips_every_test_with_the_reason(without_docker_or_kind: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "e2e"]
    result = subprocess.run(argv, cwd=REPO_ROOT, env=without_docker_or_kind, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert "6 skipped" in result.stdout
    assert "the e2e suite (node cluster) needs a Docker engine (`docker info` failed)" in result.stdout


def test_the_suites_model_manifest_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(digits_manifest()))
    assert optiserve(["validate", "-f", str(path)]) == 0, capsys.readouterr().err


def test_the_loader_pod_is_admissible_in_a_restricted_namespace() -> None:
    pod = _loader_pod("digits-loader", "e2e-ns", "ghcr.io/optiserve/optimizer-onnx:e2e")
    kubernetes_validate.validate(pod, "1.33", strict=True)
    assert restricted_violations("loader", pod["spec"]) == []
    assert [v for v in house_violations("loader", pod["spec"]) if "readOnlyRootFilesystem" not in v] == []  # kubectl cp writes


def test_the_suites_prometheus_is_valid_and_restricted() -> None:
    documents = list(yaml.safe_load_all((REPO_ROOT / "e2e/manifests/prometheus.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, "1.33", strict=True)
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations("prometheus", pod) == [] and house_violations("prometheus", pod) == []


def test_the_suites_gateway_is_valid_and_restricted() -> None:
    documents = list(yaml.safe_load_all((REPO_ROOT / "e2e/manifests/gateway.yaml").read_text()))
    core = [d for d in documents if not d["apiVersion"].startswith("gateway.networking.k8s.io/")]
    for document in core:
        kubernetes_validate.validate(document, "1.33", strict=True)
    (gateway_class,) = [d for d in documents if d["kind"] == "GatewayClass"]
    assert gateway_class["spec"]["controllerName"] == "traefik.io/gateway-controller"
    (deployment,) = [d for d in core if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations("traefik", pod) == [] and house_violations("traefik", pod) == []
    (service,) = [d for d in core if d["kind"] == "Service"]
    listener_ports = {p["port"] for p in service["spec"]["ports"] if p["name"] == "web"}
    assert listener_ports == {8000}  # every test's Gateway listens on the web entry point's port
