"""Given / When / Then steps for the kind suite, on one test's own namespace.

Each step is one thing a user or the cluster does, named so that a test reads as its scenario:

    scenario.given_model_files("digits")
    scenario.when_applied(manifest)
    scenario.then_phase("digits", "Promoted", within_s=1800)
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import REPO_ROOT, Cluster, E2EError, until

MODELS_PVC = "optiserve-models"
OPTIMIZER_ACCOUNT = "optiserve-optimizer"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
TEST_LABEL = "optiserve.io/e2e-test"


@dataclass
class Scenario:
    cluster: Cluster
    namespace: str
    test: str
    log: list[str] = field(default_factory=list)
    """What the scenario did, step by step: printed with the dump when a test fails."""

    def _step(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {text}")

    # --- Given -----------------------------------------------------------------------------------

    def given_namespace(self) -> None:
        """A namespace enforcing the restricted Pod Security level, with what the chart expects in it."""
        self._step(f"given namespace {self.namespace}")
        labels = {**RESTRICTED, TEST_LABEL: self.test[:63].strip("-_.")}
        self.cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace, "labels": labels}})
        # In all-namespaces mode the chart cannot know the namespaces: the optimizer's account is made here.
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": OPTIMIZER_ACCOUNT, "namespace": self.namespace},
                "automountServiceAccountToken": False,
            }
        )
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": MODELS_PVC, "namespace": self.namespace},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
            }
        )

    def given_model_files(self, example: str, files: dict[str, Path] | None = None) -> None:
        """The example's folder (and extra files) on the models volume, where the operator resolves relative URIs."""
        self._step(f"given the {example} example's files on {MODELS_PVC}")
        loader = f"{example}-loader"
        self.cluster.apply(_loader_pod(loader, self.namespace, self.cluster.images.optimizer))
        self.cluster.kubectl("-n", self.namespace, "wait", f"pod/{loader}", "--for=condition=Ready", "--timeout=300s")
        sources = {"": REPO_ROOT / "examples" / example, **{name: path for name, path in (files or {}).items()}}
        for name, path in sources.items():
            target = f"/models/{example}/{name}".rstrip("/")
            self.cluster.kubectl("-n", self.namespace, "cp", str(path), f"{loader}:{target}")
        self.cluster.kubectl("-n", self.namespace, "delete", "pod", loader, "--wait=true")

    # --- When ------------------------------------------------------------------------------------

    def when_applied(self, manifest: dict[str, Any]) -> None:
        body = copy.deepcopy(manifest)
        body["metadata"]["namespace"] = self.namespace
        self._step(f"when OptimizedModel {body['metadata']['name']} is applied")
        self.cluster.apply(body)

    def when_spec_changed(self, name: str, patch: dict[str, Any]) -> None:
        self._step(f"when the spec of {name} changes: {json.dumps(patch)}")
        self.cluster.kubectl(
            "-n", self.namespace, "patch", "optimizedmodel", name, "--type=merge", "-p", json.dumps({"spec": patch})
        )

    # --- Then ------------------------------------------------------------------------------------

    def model(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.kubectl_json("-n", self.namespace, "get", "optimizedmodel", name)
        return found

    def then_phase(self, name: str, phase: str, *, within_s: float, generation: int | None = None) -> dict[str, Any]:
        """Wait for `phase` at `generation` (default: the current one); fail at once on another terminal phase."""
        self._step(f"then {name} reaches {phase} within {within_s:.0f} s")
        terminal = {"Promoted", "RolledBack", "Failed"} - {phase}

        def reached() -> dict[str, Any] | None:
            model = self.model(name)
            status = model.get("status") or {}
            wanted = generation if generation is not None else model["metadata"]["generation"]
            if status.get("observedGeneration") != wanted:
                return None
            if status.get("phase") in terminal:
                raise E2EError(f"{name} ended {status['phase']} instead of {phase}: {status.get('message')}")
            return model if status.get("phase") == phase else None

        return until(f"{name} in phase {phase}", reached, timeout_s=within_s, every_s=5.0)

    def then_condition(self, name: str, kind: str, status: str) -> None:
        self._step(f"then {name} has condition {kind}={status}")
        self.cluster.kubectl(
            "-n", self.namespace, "wait", f"optimizedmodel/{name}", f"--for=condition={kind}={status}", "--timeout=60s"
        )

    def then_serving(self, deployment: str) -> None:
        self._step(f"then Deployment {deployment} has a ready replica")
        self.cluster.kubectl("-n", self.namespace, "rollout", "status", f"deployment/{deployment}", "--timeout=600s")

    # --- on failure ------------------------------------------------------------------------------

    def dump(self, into: Path) -> Path:
        """Everything worth reading after a failure: the steps, the resources, their events, the pods' and operator's logs."""
        into.mkdir(parents=True, exist_ok=True)
        (into / "steps.txt").write_text("\n".join(self.log) + "\n")
        kubectl = self.cluster.kubectl
        ns = ("-n", self.namespace)
        (into / "resources.yaml").write_text(
            kubectl(*ns, "get", "optimizedmodels,jobs,deployments,services,pods,pvc,httproutes", "-o", "yaml", check=False)
        )
        (into / "describe.txt").write_text(kubectl(*ns, "describe", "optimizedmodels,jobs,deployments,pods", check=False))
        (into / "events.txt").write_text(kubectl(*ns, "get", "events", "--sort-by=.lastTimestamp", check=False))
        for pod in yaml.safe_load(kubectl(*ns, "get", "pods", "-o", "yaml", check=False) or "{}").get("items") or []:
            name = pod["metadata"]["name"]
            (into / f"pod-{name}.log").write_text(kubectl(*ns, "logs", name, "--all-containers", "--tail=500", check=False))
        (into / "operator.log").write_text(
            kubectl("-n", "optiserve-system", "logs", "deployment/optiserve", "--tail=2000", check=False)
        )
        return into


def _loader_pod(name: str, namespace: str, image: str) -> dict[str, Any]:
    """A pod that only holds the models volume open for `kubectl cp` (the optimizer image has tar)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "loader",
                    "image": image,
                    "command": ["sleep", "3600"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                    "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                }
            ],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": MODELS_PVC}}],
        },
    }
