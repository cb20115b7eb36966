"""The optimization Job manifest: golden file, Kubernetes schema, restricted security, names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from optiserve.api.job import JobRequest, job_request_from_manifest
from optiserve.api.manifest import load_manifest
from optiserve.resources.job import (
    DeadlineNotAllowedError,
    ImageNotAllowedError,
    JobSettings,
    Owner,
    build_optimization_job,
)
from optiserve.resources.names import MAX_NAME, job_name
from tests.support.models import REPO_ROOT

GOLDEN = Path(__file__).parent / "golden/minilm_job.yaml"
OWNER = Owner("optiserve.io/v1alpha1", "OptimizedModel", "minilm", "0b7c7d1e-1111-2222-3333-444455556666")
SETTINGS = JobSettings(image="ghcr.io/optiserve/optimizer:0.1.0", allowed_images=("ghcr.io/optiserve/optimizer:0.1.0",))


def _job() -> dict[str, object]:
    request = job_request_from_manifest(load_manifest(REPO_ROOT / "examples/minilm/optimizedmodel.yaml"), "/models/minilm/source")
    return build_optimization_job(OWNER, "ml", 3, request, SETTINGS)


def test_golden() -> None:
    rendered = yaml.safe_dump(_job(), sort_keys=True)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text()


def test_valid_for_kubernetes() -> None:
    kubernetes_validate.validate(_job(), "1.33", strict=True)


def test_restricted_pod_security() -> None:
    pod = _job()["spec"]["template"]["spec"]  # type: ignore[index]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "optiserve-optimizer"


def test_request_travels_to_the_job() -> None:
    env = {e["name"]: e["value"] for e in _job()["spec"]["template"]["spec"]["containers"][0]["env"]}  # type: ignore[index]
    request = JobRequest.model_validate(json.loads(env["OPTISERVE_JOB_REQUEST"]))
    assert request.name == "minilm" and request.base_dir == "/models/minilm/source"


def test_owner_and_limits() -> None:
    job = _job()
    owner = job["metadata"]["ownerReferences"][0]  # type: ignore[index]
    assert owner["uid"] == OWNER.uid and owner["controller"] is True
    assert job["spec"]["backoffLimit"] == 1 and job["spec"]["activeDeadlineSeconds"] == 3600  # type: ignore[index]


def test_image_outside_the_allow_list_is_refused() -> None:
    request = job_request_from_manifest(load_manifest(REPO_ROOT / "examples/minilm/optimizedmodel.yaml"))
    settings = JobSettings(image="docker.io/someone/else:latest", allowed_images=SETTINGS.allowed_images)
    with pytest.raises(ImageNotAllowedError, match="allow-list"):
        build_optimization_job(OWNER, "ml", 3, request, settings)


def test_names_are_deterministic_and_short() -> None:
    assert job_name("minilm", 3) == job_name("minilm", 3) == "minilm-optimize-g3"
    long = job_name("m" * 63, 12)
    assert len(long) <= MAX_NAME and long == job_name("m" * 63, 12) and long != job_name("m" * 63, 13)


def _request(passes: list[dict[str, object]]) -> JobRequest:
    return JobRequest.model_validate(
        {
            "name": "minilm",
            "model": {"uri": "model", "format": "huggingface", "task": "embedding"},
            "passes": passes,
            "validation": {"datasetUri": "v.txt"},
        }
    )


PRUNE = {"type": "prune", "heads": 8, "importance": "magnitude"}
DISTILL = {"type": "distill", "datasetUri": "train.txt", "maxTrainingSeconds": 1800}


def _container_resources(job: dict[str, object]) -> object:
    return job["spec"]["template"]["spec"]["containers"][0]["resources"]  # type: ignore[index]


def test_the_deadline_is_the_specs() -> None:
    job = build_optimization_job(OWNER, "ml", 3, _request([DISTILL]), SETTINGS, deadline_seconds=5400)
    assert job["spec"]["activeDeadlineSeconds"] == 5400


def test_a_deadline_over_the_ceiling_is_refused_naming_both() -> None:
    settings = JobSettings(image=SETTINGS.image, max_deadline_seconds=7200)
    assert settings.deadline_error(7200) is None
    with pytest.raises(DeadlineNotAllowedError) as refused:
        build_optimization_job(OWNER, "ml", 3, _request([]), settings, deadline_seconds=7201)
    assert str(refused.value) == (
        "spec.optimization.deadlineSeconds: 7201 s is more than the 7200 s this operator allows an optimization Job "
        "(its OPTISERVE_JOB_MAX_DEADLINE_SECONDS, Helm value optimizer.maxDeadlineSeconds)"
    )


def test_a_job_that_trains_gets_the_training_resources() -> None:
    training = {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "4", "memory": "12Gi"}}
    plain = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}
    assert _container_resources(build_optimization_job(OWNER, "ml", 3, _request([PRUNE, DISTILL]), SETTINGS)) == training
    assert _container_resources(build_optimization_job(OWNER, "ml", 3, _request([PRUNE]), SETTINGS)) == plain, (
        "pruning scores units on calibration data; it does not train"
    )
    assert _container_resources(_job()) == plain


def test_a_training_job_is_valid_for_kubernetes() -> None:
    job = build_optimization_job(OWNER, "ml", 3, _request([PRUNE, DISTILL, {"type": "export"}]), SETTINGS, deadline_seconds=7200)
    kubernetes_validate.validate(job, "1.33", strict=True)
