"""What every cluster of the end-to-end suite offers the tests: kubectl, helm, images, Prometheus, the chart.

Two clusters implement it: `e2e.node.NodeCluster`, a single node built here from source with every
image built here (no registry: what CI runs), and `e2e.kind.KindCluster`, kind with its stock node
image and images pulled from registries (for machines that can pull). Everything is driven through
the real command-line tools (`docker`, the project's own `helm` and `kubectl` from
scripts/setup_helm.sh), exactly as a person would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
HELM_BIN = Path(os.environ.get("OPTISERVE_HELM_HOME", Path.home() / ".cache/optiserve/helm")) / "bin"
PROMETHEUS_NAMESPACE = "optiserve-e2e-monitoring"
PROMETHEUS_ADDRESS = f"http://prometheus.{PROMETHEUS_NAMESPACE}:9090"
RELEASE, RELEASE_NAMESPACE = "optiserve", "optiserve-system"
GATEWAY_NAMESPACE, GATEWAY_CLASS = "optiserve-e2e-gateway", "optiserve-e2e"
GATEWAY_NODE_PORT, GATEWAY_METRICS_NODE_PORT = 30080, 30091
GATEWAY_MODULE_DIR = REPO_ROOT / "e2e/node/traefik"

T = TypeVar("T")


class E2EError(RuntimeError):
    """A command of the suite failed; the message has its output."""


def run(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout_s: float = 1800, cwd: Path | None = None
) -> str:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=cwd)
    if check and result.returncode != 0:
        raise E2EError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def until(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 2.0) -> T:
    """Poll `probe` until it returns something truthy; raise naming `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every_s)
    raise E2EError(f"timed out after {timeout_s:.0f} s waiting for {what}; last seen: {last!r}")


@dataclass(frozen=True)
class Images:
    """The images a cluster runs the project with."""

    operator: str
    optimizer: str
    triton: str
    prometheus: str
    gateway: str
    """Traefik, the Gateway API data plane."""


@dataclass
class Cluster:
    kubeconfig: Path
    images: Images

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout_s: float = 1800) -> str:
        return run(
            [str(HELM_BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            stdin=stdin,
            check=check,
            timeout_s=timeout_s,
        )

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def apply(self, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-", stdin=text)

    def helm(self, *args: str) -> str:
        return run([str(HELM_BIN / "helm"), "--kubeconfig", str(self.kubeconfig), *args])

    def install_prometheus(self) -> None:
        manifest = (REPO_ROOT / "e2e/manifests/prometheus.yaml").read_text()
        self.apply(manifest.replace("image: prometheus", f"image: {self.images.prometheus}"))
        self.kubectl("-n", PROMETHEUS_NAMESPACE, "rollout", "status", "deployment/prometheus", "--timeout=300s")

    def install_gateway(self) -> None:
        """The Gateway API CRDs (standard channel, from the module Traefik is built with) and Traefik."""
        for crd in sorted((gateway_api_dir() / "config/crd/standard").glob("*.yaml")):
            self.apply(crd.read_text())
        self.kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io", "--timeout=60s")
        manifest = (REPO_ROOT / "e2e/manifests/gateway.yaml").read_text()
        self.apply(manifest.replace("image: traefik", f"image: {self.images.gateway}"))
        self.kubectl("-n", GATEWAY_NAMESPACE, "rollout", "status", "deployment/traefik", "--timeout=180s")

    def node_address(self) -> str:
        """The address of the node, where NodePorts answer from this machine."""
        raise NotImplementedError

    def import_image(self, reference: str) -> None:
        """Put an image of this machine's Docker engine into the cluster's node (no registry)."""
        raise NotImplementedError

    def operator_values(self) -> dict[str, Any]:
        """The chart's values, as a platform team sets them: all namespaces, the images this cluster holds."""
        operator = _image_values(self.images.operator)
        # Sized for a 2-core node: the defaults (2 CPUs requested each) would never schedule.
        small = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
        return {
            "image": {**operator, "pullPolicy": "IfNotPresent"},
            "optimizer": {"image": _image_values(self.images.optimizer), "resources": small},
            "triton": {"resources": small},
            "prometheus": {"address": PROMETHEUS_ADDRESS},
            "resyncSeconds": 5,
        }

    def install_operator(self, values: dict[str, Any] | None = None) -> None:
        merged = {**self.operator_values(), **(values or {})}
        sets = [arg for key, value in merged.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]
        chart = str(REPO_ROOT / "charts/optiserve")
        self.helm("upgrade", "--install", RELEASE, chart, "-n", RELEASE_NAMESPACE, "--create-namespace", *sets)
        self.kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s")

    def delete(self) -> None:
        raise NotImplementedError


def gateway_api_dir() -> Path:
    """Where the Go module cache holds sigs.k8s.io/gateway-api at the version Traefik is built with."""
    go = "go" if shutil.which("go") else "/usr/local/go/bin/go"
    out = run([go, "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api"], cwd=GATEWAY_MODULE_DIR).strip()
    if not out:
        raise E2EError("sigs.k8s.io/gateway-api is not in the Go module cache: run e2e/node/build.sh")
    return Path(out)


def _image_values(reference: str) -> dict[str, str]:
    """`registry/repository:tag` as the chart's image values."""
    name, _, tag = reference.rpartition(":")
    registry, _, repository = name.partition("/")
    return {"registry": registry, "repository": repository, "tag": tag}
