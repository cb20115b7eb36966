"""What the operator would run, with the settings the chart gives it.

`chart_settings` reads the operator container's environment from the rendered chart and parses it
with the operator's own `Settings.from_env`, so the chart and the operator cannot disagree on a
variable's name or format. `operator_workloads` builds the optimization Job and the Triton
Deployments from those settings with the operator's own builders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optiserve.api.job import job_request_from_manifest
from optiserve.api.manifest import load_manifest
from optiserve.api.spec import API_GROUP, API_VERSION, KIND
from optiserve.reconciler import source_dir
from optiserve.resources.comparator import ComparatorDeploymentSettings, build_comparator_deployment, build_comparator_service
from optiserve.resources.job import Owner, build_optimization_job
from optiserve.resources.triton_deployment import Variant, build_triton_deployment, build_triton_service
from optiserve.settings import Settings
from tests.support.helm import Object, find
from tests.support.models import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples/minilm/optimizedmodel.yaml"


def operator_container(objects: Sequence[Object]) -> Object:
    (deployment,) = [
        d for d in find(objects, "Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "optiserve"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


DOWNWARD_API = {"POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}}}
"""The variables the kubelet fills in from the pod itself (nothing else comes from elsewhere)."""


def operator_env(objects: Sequence[Object]) -> dict[str, str]:
    """The operator container's plain-valued environment. Every variable is a plain value or the
    pod's own name: nothing hidden in Secrets or ConfigMaps."""
    env = operator_container(objects)["env"]
    for item in env:
        assert "value" in item or DOWNWARD_API.get(item["name"]) == item.get("valueFrom"), item
    return {item["name"]: item["value"] for item in env if "value" in item}


def chart_settings(objects: Sequence[Object]) -> Settings:
    return Settings.from_env(operator_env(objects))


def operator_workloads(
    settings: Settings, namespace: str, operator_image: str, uid: str = "00000000-0000-0000-0000-000000000001"
) -> list[Any]:
    """The example's optimization Job, Triton Deployments and Services, and the comparator (which runs
    `optiserve comparator` from the operator's image), as the operator builds them."""
    manifest = load_manifest(EXAMPLE)
    owner = Owner(f"{API_GROUP}/{API_VERSION}", KIND, manifest.metadata.name, uid)
    request = job_request_from_manifest(manifest, base_dir=source_dir(owner.name))
    objects: list[Any] = [build_optimization_job(owner, namespace, 1, request, settings.job_settings())]
    for variant in (Variant("baseline", 1, 2), Variant("candidate", 2, 1)):
        objects.append(
            build_triton_deployment(owner, namespace, variant, manifest.spec.serving.triton, settings.serving_settings())
        )
        objects.append(build_triton_service(owner, namespace, variant.name))
    comparator = ComparatorDeploymentSettings(image=operator_image, models_pvc=settings.models_pvc)
    objects.append(build_comparator_deployment(owner, namespace, 2, manifest.spec, comparator))
    objects.append(build_comparator_service(owner, namespace))
    return objects
