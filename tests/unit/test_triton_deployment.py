"""Triton Deployments and Services: golden files, Kubernetes schema, probes, labels, security."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from optiserve.api.spec import TritonSpec
from optiserve.resources.job import Owner
from optiserve.resources.triton_deployment import ServingSettings, Variant, build_triton_deployment, build_triton_service

GOLDEN = Path(__file__).parent / "golden"
OWNER = Owner("optiserve.io/v1alpha1", "OptimizedModel", "minilm", "0b7c7d1e-1111-2222-3333-444455556666")


SHA = "ab" * 32


def _deployment(variant: str = "candidate") -> dict[str, Any]:
    return build_triton_deployment(OWNER, "ml", Variant(variant, 3, 1), TritonSpec(), ServingSettings(), SHA)


@pytest.mark.parametrize("kind", ["deployment", "service"])
def test_golden(kind: str) -> None:
    built = _deployment() if kind == "deployment" else build_triton_service(OWNER, "ml", "candidate")
    golden = GOLDEN / f"minilm_candidate_{kind}.yaml"
    rendered = yaml.safe_dump(built, sort_keys=True)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text()


@pytest.mark.parametrize("variant", ["baseline", "candidate"])
def test_valid_for_kubernetes(variant: str) -> None:
    kubernetes_validate.validate(_deployment(variant), "1.33", strict=True)
    kubernetes_validate.validate(build_triton_service(OWNER, "ml", variant), "1.33", strict=True)


def test_ready_means_loaded_and_answering() -> None:
    container = _deployment()["spec"]["template"]["spec"]["containers"][0]
    assert "--model-control-mode=explicit" in container["args"] and "--load-model=minilm" in container["args"]
    assert "--metrics-config=summary_latencies=true" in container["args"]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/models/minilm/ready"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "/v2/models/minilm/infer" in probe and "ready_request.json" in probe


def test_labels_selectors_and_scrape_annotations() -> None:
    deployment = _deployment("baseline")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["optiserve.io/variant"] == "baseline"
    assert template["metadata"]["labels"]["optiserve.io/model"] == "minilm"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert "optiserve.io/generation" not in selector  # a new generation rolls the same Deployment
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert build_triton_service(OWNER, "ml", "baseline")["spec"]["selector"] == selector


def test_restricted_and_read_only_models() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]


def test_the_artifact_is_verified_against_the_jobs_digest_before_triton_starts() -> None:
    from optiserve.cli import build_parser
    from optiserve.resources.pod import restricted_security_context

    pod = _deployment()["spec"]["template"]["spec"]
    (verifier,) = pod["initContainers"]
    assert verifier["image"] == ServingSettings().verifier_image
    assert verifier["command"][:3] == ["optiserve", "verify-artifact", "/models/minilm/g3"]
    args = build_parser().parse_args(verifier["command"][1:])  # the command line the image's CLI accepts
    assert (str(args.directory), args.sha256) == ("/models/minilm/g3", SHA)
    assert verifier["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    assert verifier["securityContext"] == restricted_security_context()
    assert verifier["terminationMessagePolicy"] == "FallbackToLogsOnError"
    triton = pod["containers"][0]
    assert "--model-repository=/models/minilm/g3/model_repository" in triton["args"]
    without = build_triton_deployment(OWNER, "ml", Variant("candidate", 3, 1), TritonSpec(), ServingSettings())
    assert "initContainers" not in without["spec"]["template"]["spec"]


def test_the_python_backend_serves_the_python_model_repository() -> None:
    """A CPU-only Triton (Python backend) cannot load the onnxruntime repository: each backend gets its own."""
    python = TritonSpec(backend="python", image="ghcr.io/optiserve/tritonserver-cpu:2.51")
    deployment = build_triton_deployment(OWNER, "ml", Variant("candidate", 3, 1), python, ServingSettings())
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-repository=/models/minilm/g3/model_repository_python" in args
    assert not any(a.endswith("/model_repository") for a in args)


def test_a_pod_going_away_keeps_serving_while_the_proxies_learn_it_left() -> None:
    """A rolling update or a retired candidate: the pod leaves the endpoints first, and a Gateway
    still sends it requests for a moment; the preStop sleep covers that, within the grace period."""
    pod = build_triton_deployment(OWNER, "ml", Variant("baseline", 3, 2), TritonSpec(), ServingSettings(drain_seconds=7), SHA)
    spec = pod["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 7}}}
    assert spec["terminationGracePeriodSeconds"] > 7
    assert pod["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
