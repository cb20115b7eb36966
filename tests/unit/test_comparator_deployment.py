"""The comparator's Deployment and Service: golden files, Kubernetes schema, wiring to the Tritons and the golden set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from optiserve.api.manifest import load_manifest
from optiserve.api.spec import OptimizedModelSpec
from optiserve.cli import build_parser
from optiserve.comparator.command import settings_from_args
from optiserve.resources.comparator import (
    ComparatorDeploymentSettings,
    build_comparator_deployment,
    build_comparator_service,
)
from optiserve.resources.job import Owner
from optiserve.resources.triton_deployment import ServingSettings, Variant, build_triton_deployment, build_triton_service
from tests.support.models import REPO_ROOT

GOLDEN = Path(__file__).parent / "golden"
OWNER = Owner("optiserve.io/v1alpha1", "OptimizedModel", "minilm", "0b7c7d1e-1111-2222-3333-444455556666")
SETTINGS = ComparatorDeploymentSettings(image="ghcr.io/optiserve/operator:0.1.0")


def _spec() -> OptimizedModelSpec:
    return load_manifest(REPO_ROOT / "examples/minilm/optimizedmodel.yaml").spec


def _deployment(spec: OptimizedModelSpec | None = None) -> dict[str, Any]:
    return build_comparator_deployment(OWNER, "ml", 3, spec or _spec(), SETTINGS)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("kind", ["deployment", "service"])
def test_golden(kind: str) -> None:
    built = _deployment() if kind == "deployment" else build_comparator_service(OWNER, "ml")
    golden = GOLDEN / f"minilm_comparator_{kind}.yaml"
    rendered = yaml.safe_dump(built, sort_keys=True)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_valid_for_kubernetes() -> None:
    kubernetes_validate.validate(_deployment(), "1.33", strict=True)
    kubernetes_validate.validate(build_comparator_service(OWNER, "ml"), "1.33", strict=True)


def test_it_probes_the_triton_services_with_the_candidates_golden_set() -> None:
    args = _container(_deployment())["args"]
    for variant in ("baseline", "candidate"):
        service = build_triton_service(OWNER, "ml", variant)
        port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
        assert f"--{variant}=http://{service['metadata']['name']}.ml.svc:{port}" in args
    assert "--golden=/models/minilm/g3/golden.jsonl" in args
    assert "--task=embedding" in args and "--threshold=0.98" in args  # the spec's minWorstFidelity


def test_its_arguments_are_accepted_by_the_command_line() -> None:
    parsed = build_parser().parse_args([*_container(_deployment())["command"][1:], *_container(_deployment())["args"]])
    settings = settings_from_args(parsed)
    assert settings.model == "minilm" and settings.threshold == 0.98 and settings.port == 8080


def test_threshold_follows_max_degradation_without_a_worst_fidelity() -> None:
    spec = _spec().model_copy(update={"validation": _spec().validation.model_copy(update={"min_worst_fidelity": None})})
    assert "--threshold=0.995" in _container(_deployment(spec))["args"]


def test_reads_the_volume_the_triton_pods_mount_read_only() -> None:
    comparator = _deployment()["spec"]["template"]["spec"]
    triton = build_triton_deployment(OWNER, "ml", Variant("candidate", 3, 1), _spec().serving.triton, ServingSettings())
    triton_volumes = triton["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in comparator["volumes"] if v["name"] == "models") == next(
        v for v in triton_volumes if v["name"] == "models"
    )
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in comparator["containers"][0]["volumeMounts"]


def test_labels_selector_scrape_annotations_and_probes() -> None:
    deployment = _deployment()
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["optiserve.io/component"] == "comparator"
    assert template["metadata"]["labels"]["optiserve.io/model"] == "minilm"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert "optiserve.io/generation" not in selector and "optiserve.io/variant" not in selector
    assert build_comparator_service(OWNER, "ml")["spec"]["selector"] == selector
    annotations = template["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    container = _container(deployment)
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


def test_restricted_with_requests_and_limits() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert set(container["resources"]) == {"requests", "limits"}
