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
from optiserve.resources.job import ImageNotAllowedError, JobSettings, Owner, build_optimization_job
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
