"""Policy on everything the chart installs and everything the operator then creates.

Every pod template (the chart's Deployment, and the Job and Triton Deployments the operator builds
with the chart's settings) meets the `restricted` Pod Security level and the house rules; no RBAC
rule has a wildcard; images come only from the allowed registries. Each check is also shown to
catch what it looks for, on a manifest broken on purpose.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.chart.policy import house_violations, image_violations, rbac_violations, restricted_violations
from tests.support.chart_workloads import chart_settings, operator_container, operator_workloads
from tests.support.helm import FULL_VALUES, Object, find, pod_templates, render

VALUE_SETS = {"default": [], "full": [FULL_VALUES]}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def installed(request: pytest.FixtureRequest) -> list[Object]:
    """The chart's objects plus the workloads the operator would create with its settings."""
    objects = render(VALUE_SETS[request.param])
    return [*objects, *operator_workloads(chart_settings(objects), "ml", operator_container(objects)["image"])]


def _pods(objects: list[Object]) -> list[tuple[str, Object]]:
    pods = list(pod_templates(objects))
    assert {name.split("/")[0] for name, _ in pods} == {"Deployment", "Job"}
    # operator, optimization Job, Triton baseline and candidate, comparator
    assert len(pods) == 5, [name for name, _ in pods]
    return pods


@pytest.mark.parametrize(
    "check", [restricted_violations, house_violations, image_violations], ids=["restricted", "house-rules", "images"]
)
def test_every_pod_template_passes(installed: list[Object], check: Callable[[str, Object], list[str]]) -> None:
    violations = [v for name, pod in _pods(installed) for v in check(name, pod)]
    assert violations == []


def test_no_wildcards_or_escalating_verbs_in_rbac(installed: list[Object]) -> None:
    roles = find(installed, "Role") + find(installed, "ClusterRole")
    assert roles
    assert rbac_violations(roles) == []


def test_operator_rules_list_only_known_verbs(installed: list[Object]) -> None:
    known = {"get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"}
    for role in find(installed, "Role") + find(installed, "ClusterRole"):
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= known, rule
            assert len(rule["verbs"]) == len(set(rule["verbs"])), rule


def _operator_pod(objects: list[Object]) -> Object:
    return next(pod for name, pod in pod_templates(objects) if name.startswith("Deployment/optiserve"))


BREAKAGES: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("privileged", lambda pod: pod["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (
        "escalation",
        lambda pod: pod["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation",
    ),
    ("caps", lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "capabilities.add"),
    ("root", lambda pod: pod["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    ("host-network", lambda pod: pod.update(hostNetwork=True), "hostNetwork"),
    ("host-path", lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    (
        "no-seccomp",
        lambda pod: (pod["securityContext"].pop("seccompProfile"), pod["containers"][0]["securityContext"].pop("seccompProfile")),
        "seccompProfile",
    ),
    ("host-port", lambda pod: pod["containers"][0]["ports"][0].update(hostPort=8080), "hostPort"),
]


@pytest.mark.parametrize(("case", "breakage", "expected"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_restricted_check_catches(case: str, breakage: Callable[[dict[str, Any]], object], expected: str) -> None:
    pod = copy.deepcopy(_operator_pod(render()))
    assert restricted_violations(case, pod) == []
    breakage(pod)
    assert any(expected in v for v in restricted_violations(case, pod))


def test_house_rules_catch_writable_root_and_missing_limits() -> None:
    pod = copy.deepcopy(_operator_pod(render()))
    container = pod["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    del container["resources"]["limits"]["memory"]
    assert house_violations("op", pod) == [
        "op containers[operator]: readOnlyRootFilesystem is not true",
        "op containers[operator]: no limits.memory",
    ]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("docker.io/library/python:3.11", "is not from"),
        ("ghcr.io/optiserve-fork/operator:1", "is not from"),
        ("ghcr.io/optiserve/operator", "neither tag nor digest"),
    ],
)
def test_image_check_catches(image: str, expected: str) -> None:
    pod = copy.deepcopy(_operator_pod(render()))
    pod["containers"][0]["image"] = image
    (violation,) = image_violations("op", pod)
    assert expected in violation


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"apiGroups": ["*"], "resources": ["jobs"], "verbs": ["get"]}, "apiGroups: wildcard"),
        ({"apiGroups": ["batch"], "resources": ["*"], "verbs": ["get"]}, "resources: wildcard"),
        ({"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["*"]}, "verbs: wildcard"),
        ({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}, "resources: wildcard"),
        ({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["bind"]}, "['bind']"),
        ({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}, "secrets"),
    ],
)
def test_rbac_check_catches(rule: dict[str, Any], expected: str) -> None:
    role = {"kind": "Role", "metadata": {"name": "r"}, "rules": [rule]}
    (violation,) = rbac_violations([role])
    assert expected in violation
