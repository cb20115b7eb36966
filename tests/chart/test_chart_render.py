"""The Helm chart rendered with `helm template`: lint, Kubernetes schemas, values, and agreement with the operator."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from optiserve.resources.job import JobSettings
from tests.support.chart_workloads import chart_settings, operator_container, operator_env
from tests.support.helm import CHART, FULL_VALUES, RELEASE_NAMESPACE, Object, find, render, run_helm, values_args
from tests.support.models import REPO_ROOT

KUBERNETES_VERSION = "1.33"
# Prometheus Operator kinds: no Kubernetes schema exists for them offline; checked field by field below.
MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}
VALUE_SETS = {"default": [], "full": [FULL_VALUES]}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> list[Object]:
    return render(VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def default_objects() -> list[Object]:
    return render()


@pytest.fixture(scope="module")
def full_objects() -> list[Object]:
    return render([FULL_VALUES])


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_lint_strict(values: str) -> None:
    result = run_helm("lint", "--strict", str(CHART), *values_args(VALUE_SETS[values]))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_every_rendered_object_is_valid_kubernetes(rendered: list[Object]) -> None:
    kinds = {obj["kind"] for obj in rendered}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "NetworkPolicy", "Service"} <= kinds
    for obj in rendered:
        if obj["kind"] in MONITOR_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_an_invalid_object_fails_the_same_validation(default_objects: list[Object]) -> None:
    """The validation above can fail: a misspelt field in the Deployment is refused in strict mode."""
    (deployment,) = find(default_objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_monitors_scrape_the_metrics_port(full_objects: list[Object]) -> None:
    (service,) = find(full_objects, "Service")
    (monitor,) = find(full_objects, "ServiceMonitor")
    (pod_monitor,) = [m for m in find(full_objects, "PodMonitor") if not m["metadata"]["name"].endswith("-models")]
    assert monitor["apiVersion"] == pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "20s"}]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    container_ports = {p["name"]: p["containerPort"] for p in operator_container(full_objects)["ports"]}
    assert container_ports == {"health": 8081, "metrics": 9091}
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9091, "targetPort": "metrics", "protocol": "TCP"}]


def test_the_model_pod_monitor_scrapes_triton_and_the_comparator_with_the_variant_label(full_objects: list[Object]) -> None:
    from optiserve.api.spec import OptimizedModelSpec
    from optiserve.resources.comparator import build_comparator_deployment
    from optiserve.resources.pod import Owner
    from optiserve.resources.triton_deployment import ServingSettings, Variant, build_triton_deployment
    from optiserve.settings import Settings

    (models,) = [m for m in find(full_objects, "PodMonitor") if m["metadata"]["name"].endswith("-models")]
    assert models["spec"]["namespaceSelector"] == {"matchNames": ["ml", "ml-staging"]}
    (endpoint,) = models["spec"]["podMetricsEndpoints"]
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel["variant"] == ["__meta_kubernetes_pod_label_optiserve_io_variant"]
    assert endpoint["honorLabels"] is True, "the comparator's own model label must survive"
    # The pods it must select expose a port of that name and carry the label it selects on.
    spec = OptimizedModelSpec.model_validate(
        {"model": {"uri": "m", "format": "onnx", "task": "embedding"}, "validation": {"datasetUri": "v.txt"}}
    )
    owner = Owner(api_version="optiserve.io/v1alpha1", kind="OptimizedModel", name="m", uid="u")
    triton = build_triton_deployment(owner, "ml", Variant("candidate", 1, 1), spec.serving.triton, ServingSettings())
    comparator = build_comparator_deployment(owner, "ml", 1, spec, Settings().comparator_settings())
    for pod in (triton["spec"]["template"], comparator["spec"]["template"]):
        assert "optiserve.io/model" in pod["metadata"]["labels"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert endpoint["port"] in ports


def test_monitors_are_off_by_default(default_objects: list[Object]) -> None:
    assert not {obj["kind"] for obj in default_objects} & MONITOR_KINDS


def test_operator_deployment_shape(rendered: list[Object]) -> None:
    (deployment,) = find(rendered, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2, "a standby waits to take over"
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = operator_container(rendered)
    assert container["args"][0] == "operator"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_the_operator_reads_the_charts_environment(full_objects: list[Object]) -> None:
    """The rendered env, parsed by the operator's own Settings: names and formats agree."""
    settings = chart_settings(full_objects)
    assert settings.namespaces == ("ml", "ml-staging")
    assert settings.job_image == "ghcr.io/optiserve/optimizer-gpu:0.1.0"
    operator_image = operator_container(full_objects)["image"]
    assert settings.operator_image == operator_image, "the comparator runs from the operator's own image"
    assert settings.allowed_images == (
        operator_image,
        "ghcr.io/optiserve/optimizer-gpu:0.1.0",
        "nvcr.io/nvidia/tritonserver:24.10-py3",
    )
    assert settings.models_pvc == "shared-models"
    assert settings.default_prometheus == "https://prometheus.observability.svc:9443"
    assert settings.resync_seconds == 30
    assert settings.deploy_deadline_seconds == 900
    assert settings.health_port == 8081
    assert settings.metrics_port == 9091
    assert settings.liveness_endpoint() == "http://0.0.0.0:8081/healthz"
    assert all(name.startswith("OPTISERVE_") or name == "HOME" for name in operator_env(full_objects))


def test_default_settings_watch_everything_and_allow_any_image(default_objects: list[Object]) -> None:
    settings = chart_settings(default_objects)
    assert settings.namespaces == ()
    assert settings.allowed_images == ()
    assert settings.job_image == "ghcr.io/optiserve/optimizer:0.1.0"  # the chart's appVersion
    assert settings.operator_image == "ghcr.io/optiserve/operator:0.1.0"


def test_images_default_to_the_app_version_and_digest_wins() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    objects = render(
        set_json={"image": {"registry": "ghcr.io", "repository": "optiserve/operator", "digest": "sha256:" + "a" * 64}}
    )
    assert operator_container(objects)["image"] == "ghcr.io/optiserve/operator@sha256:" + "a" * 64
    assert operator_container(render())["image"] == f"ghcr.io/optiserve/operator:{chart['appVersion']}"


def test_chart_app_version_is_the_projects_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_optimizer_service_account_is_the_one_jobs_run_as(full_objects: list[Object]) -> None:
    expected = JobSettings(image="any").service_account
    accounts = find(full_objects, "ServiceAccount", expected)
    assert sorted(sa["metadata"]["namespace"] for sa in accounts) == ["ml", "ml-batch", "ml-staging"]
    assert all(sa["automountServiceAccountToken"] is False for sa in accounts)
    # It has no permission of its own: no binding names it.
    bindings = find(full_objects, "RoleBinding") + find(full_objects, "ClusterRoleBinding")
    assert not [b for b in bindings if any(s["name"] == expected for s in b["subjects"])]


def _operator_bindings(objects: list[Object]) -> list[tuple[str, str | None]]:
    return [
        (b["kind"], b["metadata"].get("namespace"))
        for b in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["namespace"] == RELEASE_NAMESPACE for s in b["subjects"])
    ]


LEASE_BINDING = ("RoleBinding", RELEASE_NAMESPACE)
LEASE_GROUP = "coordination.k8s.io"


def _model_roles(objects: list[Object]) -> list[Object]:
    return [r for r in find(objects, "Role") if not r["metadata"]["name"].endswith("-leader-election")]


def test_namespaced_mode_grants_nothing_cluster_wide(full_objects: list[Object]) -> None:
    assert _operator_bindings(full_objects) == [("RoleBinding", "ml"), ("RoleBinding", "ml-staging"), LEASE_BINDING]
    assert not find(full_objects, "ClusterRole")  # aggregateToDefaultRoles is off in the full values
    roles = _model_roles(full_objects)
    assert [r["metadata"]["namespace"] for r in roles] == ["ml", "ml-staging"]
    assert roles[0]["rules"] == roles[1]["rules"]


def test_all_namespaces_mode_uses_one_cluster_role(default_objects: list[Object]) -> None:
    assert _operator_bindings(default_objects) == [LEASE_BINDING, ("ClusterRoleBinding", None)]
    assert not _model_roles(default_objects)
    (binding,) = find(default_objects, "ClusterRoleBinding")
    (role,) = find(default_objects, "ClusterRole", binding["roleRef"]["name"])
    assert role["rules"][0] == {
        "apiGroups": ["optiserve.io"],
        "resources": ["optimizedmodels"],
        "verbs": ["get", "list", "watch", "patch"],
    }
    user_roles = {r["metadata"]["name"]: r["metadata"]["labels"] for r in find(default_objects, "ClusterRole")}
    assert user_roles["optiserve-edit"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert user_roles["optiserve-view"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"


def test_the_operator_reads_pod_logs_and_nothing_else_of_pods(rendered: list[Object]) -> None:
    """A running Job's log says which pass it is in; pods themselves are only listed."""
    roles = [r for r in find(rendered, "Role") + find(rendered, "ClusterRole") if r["metadata"]["name"] == "optiserve"]
    assert roles
    for role in roles:
        core = {resource: rule["verbs"] for rule in role["rules"] if rule["apiGroups"] == [""] for resource in rule["resources"]}
        assert (core["pods"], core["pods/log"]) == (["list"], ["get"])


def test_operator_never_gets_write_access_to_spec_through_update(rendered: list[Object]) -> None:
    """It patches OptimizedModels (finalizer, annotations) but holds no update/create/delete on them."""
    for role in find(rendered, "Role") + find(rendered, "ClusterRole"):
        if role["metadata"]["name"] != "optiserve":
            continue
        for rule in role["rules"]:
            if "optimizedmodels" in rule["resources"]:
                assert not {"update", "create", "delete", "deletecollection"} & set(rule["verbs"])


@pytest.mark.parametrize(
    ("address", "port"),
    [("http://prometheus.monitoring:9090", 9090), ("https://thanos.example.org", 443), ("http://prom.obs.svc", 80)],
)
def test_network_policy_opens_the_prometheus_port(address: str, port: int) -> None:
    (policy,) = find(render(set_json={"prometheus": {"address": address}}), "NetworkPolicy")
    prometheus_rule = policy["spec"]["egress"][2]
    assert prometheus_rule["ports"] == [{"port": port, "protocol": "TCP"}]


def test_network_policy_limits_api_server_and_scrapers(full_objects: list[Object]) -> None:
    (policy,) = find(full_objects, "NetworkPolicy")
    api_rule, dns_rule, _, extra = policy["spec"]["egress"]
    assert api_rule == {"ports": [{"port": 443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}
    assert {"port": 53, "protocol": "UDP"} in dns_rule["ports"]
    assert extra["ports"] == [{"port": 9000, "protocol": "TCP"}]
    metrics_rule = policy["spec"]["ingress"][1]
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]


def test_network_policy_can_be_turned_off() -> None:
    assert not find(render(set_json={"networkPolicy": {"enabled": False}}), "NetworkPolicy")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
        ({"resyncSeconds": 0}, "/resyncSeconds"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"image": {"registry": "ghcr.io", "repository": "x", "digest": "latest"}}, "/image/digest"),
        ({"resources": {"limits": None}}, "/resources"),  # null removes the default
        ({"prometheus": {"address": "prometheus:9090"}}, "/prometheus/address"),
        ({"health": {"port": 80}}, "/health/port"),
    ],
    ids=["unknown-key", "resync-zero", "bad-namespace", "bad-digest", "no-limits", "address-without-scheme", "privileged-port"],
)
def test_bad_values_are_refused_naming_the_field(values: dict[str, Any], field: str) -> None:
    result = run_helm("template", "optiserve", str(CHART), *values_args(set_json=values), check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


def test_service_account_name_is_required_when_not_created() -> None:
    result = run_helm(
        "template", "optiserve", str(CHART), *values_args(set_json={"serviceAccount": {"create": False}}), check=False
    )
    assert result.returncode != 0
    assert "serviceAccount.name: required when serviceAccount.create is false" in result.stderr


def test_generated_files_are_up_to_date() -> None:
    """The chart's CRD copy, its README's values table and the Argo CD snippet match their sources."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts/generate_chart.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_chart_crd_is_the_generated_one(default_objects: list[Object]) -> None:
    (crd,) = find(default_objects, "CustomResourceDefinition")
    source = yaml.safe_load(Path(REPO_ROOT / "crds/optimizedmodels.optiserve.io.yaml").read_text())
    assert crd == source


def test_notes_name_the_mode_and_the_missing_service_account() -> None:
    notes = run_helm("install", "optiserve", str(CHART), "--dry-run=client", "-n", RELEASE_NAMESPACE).stdout
    assert "reconciles OptimizedModels in every namespace" in notes
    assert 'creates the "optiserve-optimizer" ServiceAccount in no namespace' in notes
    namespaced = run_helm(
        "install",
        "optiserve",
        str(CHART),
        "--dry-run=client",
        "-n",
        RELEASE_NAMESPACE,
        *values_args(set_json={"watchNamespaces": ["ml"]}),
    ).stdout
    assert "reconciles OptimizedModels in these namespaces: ml" in namespaced
    assert "in no namespace" not in namespaced


def test_the_leader_election_may_touch_only_its_own_lease(default_objects: list[Object]) -> None:
    (role,) = find(default_objects, "Role", "optiserve-leader-election")
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [LEASE_GROUP], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["optiserve"],
            "verbs": ["get", "update"],
        },
    ]
    settings = chart_settings(default_objects).leader_election
    assert (settings.enabled, settings.namespace, settings.name) == (True, RELEASE_NAMESPACE, "optiserve")


def test_two_replicas_stand_apart_and_a_drain_leaves_one(default_objects: list[Object]) -> None:
    (deployment,) = find(default_objects, "Deployment")
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (budget,) = find(default_objects, "PodDisruptionBudget")
    assert budget["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}


def test_one_replica_without_a_lease_is_recreated_not_rolled() -> None:
    objects = render(set_json={"replicas": 1, "leaderElection": {"enabled": False}})
    (deployment,) = find(objects, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not find(objects, "PodDisruptionBudget")
    assert chart_settings(objects).leader_election.enabled is False


def test_several_replicas_without_a_lease_are_refused() -> None:
    result = run_helm(
        "template", "optiserve", str(CHART), *values_args(set_json={"leaderElection": {"enabled": False}}), check=False
    )
    assert result.returncode != 0
    assert "replicas: more than one operator replica needs leaderElection.enabled" in result.stderr, result.stderr


def test_job_and_triton_resources_reach_what_the_operator_builds() -> None:
    """A 2-core cluster cannot schedule the defaults (2 CPUs requested each): the chart sizes them."""
    small = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    settings = chart_settings(render(set_json={"optimizer": {"resources": small}, "triton": {"resources": small}}))
    assert settings.job_settings().resources.manifest() == small
    assert settings.serving_settings().resources.manifest() == small
    defaults = chart_settings(render())
    assert defaults.job_settings().resources == JobSettings(image="any").resources
    incomplete = {"optimizer": {"resources": {"requests": {"cpu": "1"}}}}
    result = run_helm("template", "x", str(CHART), *values_args(set_json=incomplete), check=False)
    assert result.returncode != 0 and "resources" in result.stderr


def test_training_resources_and_the_deadline_ceiling_reach_what_the_operator_builds() -> None:
    large = {"requests": {"cpu": "8", "memory": "24Gi"}, "limits": {"cpu": "16", "memory": "48Gi"}}
    settings = chart_settings(render(set_json={"optimizer": {"trainingResources": large, "maxDeadlineSeconds": 14400}}))
    assert settings.job_settings().training_resources.manifest() == large
    assert settings.job_settings().resources == JobSettings(image="any").resources, "the plain Job keeps its own"
    assert settings.job_settings().max_deadline_seconds == 14400
    defaults = chart_settings(render()).job_settings()
    assert defaults.training_resources == JobSettings(image="any").training_resources
    assert defaults.max_deadline_seconds == JobSettings(image="any").max_deadline_seconds
    full = chart_settings(render([FULL_VALUES])).job_settings()
    assert (full.max_deadline_seconds, full.training_resources.manifest()["requests"]) == (43200, {"cpu": "4", "memory": "16Gi"})
    for bad in ({"maxDeadlineSeconds": 600}, {"trainingResources": {"limits": {"cpu": "1"}}}):
        result = run_helm("template", "x", str(CHART), *values_args(set_json={"optimizer": bad}), check=False)
        assert result.returncode != 0 and next(iter(bad)) in result.stderr, result.stderr
