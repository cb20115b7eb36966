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
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import (
    GATEWAY_CLASS,
    GATEWAY_METRICS_NODE_PORT,
    GATEWAY_NAMESPACE,
    GATEWAY_NODE_PORT,
    REPO_ROOT,
    Cluster,
    E2EError,
    until,
)
from e2e.gateway_traffic import GatewayLoad, GatewayRequest, LoadResult, Split, SplitMeter, backend_counts, infer_body

MODELS_PVC = "optiserve-models"
OPTIMIZER_ACCOUNT = "optiserve-optimizer"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
TEST_LABEL = "optiserve.io/e2e-test"
GATEWAY = "gateway"


@dataclass
class Scenario:
    cluster: Cluster
    namespace: str
    test: str
    log: list[str] = field(default_factory=list)
    """What the scenario did, step by step: printed with the dump when a test fails."""

    @property
    def hostname(self) -> str:
        """The host name of this test's Gateway listener: requests with it reach this namespace's routes only."""
        return f"{self.namespace}.e2e.optiserve.test"

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
        self.cluster.apply(_gateway(self.namespace, self.hostname))
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
        loader = self._with_loader(f"{example}-loader")
        sources = {"": REPO_ROOT / "examples" / example, **{name: path for name, path in (files or {}).items()}}
        for name, path in sources.items():
            target = f"/models/{example}/{name}".rstrip("/")
            self.cluster.kubectl("-n", self.namespace, "cp", str(path), f"{loader}:{target}")
        self.cluster.kubectl("-n", self.namespace, "delete", "pod", loader, "--wait=true")

    def _with_loader(self, name: str) -> str:
        self.cluster.apply(_loader_pod(name, self.namespace, self.cluster.images.optimizer))
        self.cluster.kubectl("-n", self.namespace, "wait", f"pod/{name}", "--for=condition=Ready", "--timeout=300s")
        return name

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

    @contextmanager
    def when_clients_send_through_the_gateway(self, name: str, *, rate: float = 20.0) -> Iterator[tuple[GatewayLoad, SplitMeter]]:
        """Clients send inference requests to `name` through the Gateway while the body runs; the split is metered."""
        self._step(f"when clients send requests to {name} through the Gateway ({rate:.0f}/s)")
        node = self.cluster.node_address()
        model = self._served_model(name)
        body = infer_body(model["input"], model["shape"])
        request = GatewayRequest((node, GATEWAY_NODE_PORT), self.hostname, f"/v2/models/{model['name']}/infer", body)
        load = GatewayLoad(request, threads=2, rate_per_thread=rate / 2)
        services = {"baseline": f"{name}-baseline", "candidate": f"{name}-candidate"}
        metrics_url = f"http://{node}:{GATEWAY_METRICS_NODE_PORT}/metrics"

        def counts() -> dict[str, float]:
            with urllib.request.urlopen(metrics_url, timeout=5) as response:
                return backend_counts(response.read().decode(), self.namespace, services)

        meter = SplitMeter(lambda: self._canary_weight(name), counts)
        try:
            with load, meter:
                yield load, meter
        finally:
            self.log.extend(f"{change} (status.canary, as the split meter read it)" for change in meter.changes)
            self._step(f"clients stopped: {load.result.sent} sent, {len(load.result.failures)} failed")

    def _served_model(self, name: str) -> dict[str, Any]:
        """The Triton model name the baseline loads and its first input, from the model's spec."""
        deployment = self.cluster.kubectl_json("-n", self.namespace, "get", "deployment", f"{name}-baseline")
        container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
        loaded = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--load-model="))
        first = self.model(name)["spec"]["model"]["inputs"][0]
        return {"name": loaded, "input": first["name"], "shape": [1, *first["shape"]]}

    def _canary_weight(self, name: str) -> int | None:
        status = self.model(name).get("status") or {}
        canary = status.get("canary") or {}
        if status.get("phase") != "Canary" or "weight" not in canary:
            return 0 if status.get("phase") in ("Promoted", "RolledBack") else None
        return int(canary["weight"])

    def when_a_file_is_corrupted(self, directory: str, pattern: str = "*.onnx") -> str:
        """Append bytes to the first file matching `pattern` under `directory` of the models volume; its path there."""
        loader = self._with_loader("corrupter")
        find = f'find "/models/{directory}" -type f -name "{pattern}" | sort | head -n 1'
        script = f'f=$({find}); test -n "$f"; printf corrupt >> "$f"; echo "$f"'
        path = self.cluster.kubectl("-n", self.namespace, "exec", loader, "--", "sh", "-c", script).strip()
        self.cluster.kubectl("-n", self.namespace, "delete", "pod", loader, "--wait=true")
        self._step(f"when {path} on {MODELS_PVC} is corrupted")
        return path

    def when_pods_deleted(self, selector: str, namespace: str | None = None) -> list[str]:
        """Delete the pods `selector` matches at once (no grace), as a node failure or an eviction would."""
        where = namespace or self.namespace
        names = self.cluster.kubectl("-n", where, "get", "pods", "-l", selector, "-o", "name").split()
        self._step(f"when pods {names} in {where} are deleted")
        if not names:
            raise E2EError(f"no pod in {where} matches {selector}")
        self.cluster.kubectl("-n", where, "delete", *names, "--grace-period=0", "--force", "--wait=false")
        return names

    def then_canary_at_step(self, name: str, step: int, *, within_s: float) -> dict[str, Any]:
        self._step(f"then {name} is in its canary at step {step} or later within {within_s:.0f} s")

        def reached() -> dict[str, Any] | None:
            model = self.model(name)
            status = model.get("status") or {}
            if (
                status.get("phase") in ("Promoted", "RolledBack", "Failed")
                and status.get("observedGeneration") == model["metadata"]["generation"]
            ):
                raise E2EError(f"{name} ended {status['phase']} before step {step}: {status.get('message')}")
            canary = status.get("canary") or {}
            return model if status.get("phase") == "Canary" and int(canary.get("step") or 0) >= step else None

        return until(f"{name} at canary step {step}", reached, timeout_s=within_s, every_s=1.0)

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

    def then_terminal(self, name: str, *, within_s: float) -> dict[str, Any]:
        """Wait for Promoted or RolledBack at the current generation (Failed raises)."""
        self._step(f"then {name} ends Promoted or RolledBack within {within_s:.0f} s")

        def ended() -> dict[str, Any] | None:
            model = self.model(name)
            status = model.get("status") or {}
            if status.get("observedGeneration") != model["metadata"]["generation"]:
                return None
            if status.get("phase") == "Failed":
                raise E2EError(f"{name} Failed: {status.get('message')}")
            return model if status.get("phase") in ("Promoted", "RolledBack") else None

        return until(f"{name} to end its rollout", ended, timeout_s=within_s, every_s=5.0)

    def then_condition_says(self, name: str, kind: str, text: str, *, within_s: float) -> str:
        """Wait until condition `kind` is True with `text` in its message (or in status.message); that message."""
        self._step(f"then {name} has {kind}=True saying {text!r} within {within_s:.0f} s")

        def says() -> str | None:
            status = self.model(name).get("status") or {}
            found: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})
            message = f"{found.get('message') or ''} | {status.get('message') or ''}"
            return message if found.get("status") == "True" and text in message else None

        return until(f"{name} {kind} naming {text}", says, timeout_s=within_s, every_s=2.0)

    def then_condition(self, name: str, kind: str, status: str, within_s: float = 60) -> None:
        self._step(f"then {name} has condition {kind}={status}")
        wait = ("wait", f"optimizedmodel/{name}", f"--for=condition={kind}={status}", f"--timeout={within_s:.0f}s")
        self.cluster.kubectl("-n", self.namespace, *wait)

    def then_serving(self, deployment: str) -> None:
        self._step(f"then Deployment {deployment} has a ready replica")
        self.cluster.kubectl("-n", self.namespace, "rollout", "status", f"deployment/{deployment}", "--timeout=600s")

    def then_only_the_baseline_serves(self, name: str, within_s: float = 300) -> None:
        """The rollout has settled: the baseline's pods are ready and the candidate's Deployment is gone.

        Ready already says the baseline's pods serve; this waits for the candidate's to be gone too, so
        that the clients a scenario starts next meet only the baseline.
        """
        self.then_serving(f"{name}-baseline")
        self._step(f"then Deployment {name}-candidate is gone")

        def candidate_gone() -> bool:
            found = self.cluster.kubectl("-n", self.namespace, "get", "deployments", "-o", "name", check=False)
            return f"deployment.apps/{name}-candidate" not in found.split()

        until(f"Deployment {name}-candidate to be removed", candidate_gone, within_s)

    def then_no_request_failed(self, result: LoadResult) -> None:
        self._step(f"then none of the {result.sent} requests through the Gateway failed")
        if result.failures or result.succeeded == 0:
            when = Counter(failure.split(" ", 2)[0] + " " + failure.split(" ", 2)[-1][:40] for failure in result.failures)
            summary = "; ".join(f"{count} x {what}" for what, count in sorted(when.items()))
            raise E2EError(f"{len(result.failures)} of {result.sent} requests failed, by second: {summary}")

    def when_time_passes(self, seconds: float) -> None:
        self._step(f"when {seconds:.0f} s pass")
        time.sleep(seconds)

    def then_no_request_failed_after(self, result: LoadResult, since: float, what: str) -> None:
        """No request failed after `since` (`time.time()`); those before it are reported, not failed on."""
        self._step(f"then none of the {result.sent} requests through the Gateway failed after {what}")
        late = [line for line, at in zip(result.failures, result.failed_at, strict=True) if at > since]
        early = len(result.failures) - len(late)
        print(f"e2e: {early} of {result.sent} requests failed before {what}")  # noqa: T201
        if late or result.succeeded == 0:
            raise E2EError(f"{len(late)} of {result.sent} requests failed after {what}: {late[:10]}")

    def then_split_follows_the_weights(self, split: Split, weights: list[int], min_requests: int = 30) -> None:
        """At each canary weight, the candidate's share of what the Gateway forwarded is the weight (binomial error)."""
        self._step(f"then the Gateway's split follows the weights {weights}:\n{split.table()}")
        print(f"\ne2e: the split the Gateway made\n{split.table()}")  # noqa: T201
        for weight in weights:
            share = split.shares.get(weight)
            if share is None or share.total < min_requests:
                raise E2EError(f"too few requests were metered at weight {weight} to judge the split:\n{split.table()}")
            if not share.within():
                raise E2EError(f"at weight {weight} the candidate got {share.share:.3f} of the requests:\n{split.table()}")

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
        # Every replica's log: the Deployment's log is one pod's, often the standby's.
        (into / "operator.log").write_text(
            kubectl(
                "-n", "optiserve-system", "logs", "-l", "app.kubernetes.io/name=optiserve", "--prefix", "--tail=2000", check=False
            )
        )
        self._dump_gateway(into)
        return into

    def _dump_gateway(self, into: Path) -> None:
        """The Gateway's side: its pods (restarts included), its log, and the route status it wrote."""
        kubectl = self.cluster.kubectl
        gateway = ("-n", GATEWAY_NAMESPACE)
        (into / "gateway-pods.txt").write_text(kubectl(*gateway, "get", "pods", "-o", "wide", check=False))
        (into / "gateway.log").write_text(kubectl(*gateway, "logs", "deployment/traefik", "--tail=2000", check=False))
        (into / "gateway-previous.log").write_text(
            kubectl(*gateway, "logs", "deployment/traefik", "--previous", "--tail=500", check=False)
        )


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


def _gateway(namespace: str, hostname: str) -> dict[str, Any]:
    """A Gateway of the suite's class in the test's namespace, its listener on the test's own hostname."""
    listener = {
        "name": "http",
        "protocol": "HTTP",
        "port": 8000,
        "hostname": hostname,
        "allowedRoutes": {"namespaces": {"from": "Same"}},
    }
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": GATEWAY, "namespace": namespace},
        "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [listener]},
    }
