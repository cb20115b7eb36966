"""The kind cluster of the end-to-end suite: what it needs, how it is made, loaded and torn down.

Everything is driven through the real command-line tools (`docker`, `kind`, and the project's own
`helm` and `kubectl` from scripts/setup_helm.sh), exactly as a person would run them.
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
OPERATOR_IMAGE = "ghcr.io/optiserve/operator:e2e"
OPTIMIZER_IMAGE = "ghcr.io/optiserve/optimizer:e2e"
TRITON_IMAGE = os.environ.get("E2E_TRITON_IMAGE", "nvcr.io/nvidia/tritonserver:24.10-py3")
PROMETHEUS_ADDRESS = "http://prometheus.optiserve-e2e-monitoring:9090"
RELEASE, RELEASE_NAMESPACE = "optiserve", "optiserve-system"

T = TypeVar("T")


class E2EError(RuntimeError):
    """A command of the suite failed; the message has its output."""


def missing_requirements() -> list[str]:
    """What this machine lacks for the kind suite, each with how it was found missing (empty: all there)."""
    missing = []
    if shutil.which("docker") is None:
        missing.append("docker (no `docker` on PATH)")
    elif subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        missing.append("a Docker engine (`docker info` failed)")
    if shutil.which("kind") is None:
        missing.append("kind (no `kind` on PATH; `go install sigs.k8s.io/kind@v0.30.0`)")
    for tool in ("helm", "kubectl"):
        if not (HELM_BIN / tool).is_file():
            missing.append(f"{tool} ({HELM_BIN / tool} missing; run scripts/setup_helm.sh)")
    return missing


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout_s: float = 1800) -> str:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
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


@dataclass
class KindCluster:
    name: str
    kubeconfig: Path
    created: bool
    """False when the suite reuses an existing cluster (E2E_CLUSTER): then it never deletes it."""

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return run([str(HELM_BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args], stdin=stdin, check=check)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def apply(self, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-", stdin=text)

    def helm(self, *args: str) -> str:
        return run([str(HELM_BIN / "helm"), "--kubeconfig", str(self.kubeconfig), *args])

    @classmethod
    def create(cls, name: str, workdir: Path) -> KindCluster:
        kubeconfig = workdir / f"{name}.kubeconfig"
        run(["kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "180s"])
        return cls(name, kubeconfig, created=True)

    @classmethod
    def existing(cls, name: str, workdir: Path) -> KindCluster:
        kubeconfig = workdir / f"{name}.kubeconfig"
        kubeconfig.write_text(run(["kind", "get", "kubeconfig", "--name", name]))
        return cls(name, kubeconfig, created=False)

    def delete(self) -> None:
        if self.created:
            run(["kind", "delete", "cluster", "--name", self.name], check=False)

    def load_images(self) -> None:
        """Build the project's images and load them, and Triton's, into the kind node (no registry needed)."""
        builds = {
            OPERATOR_IMAGE: "docker/Dockerfile.operator",
            OPTIMIZER_IMAGE: "optimizer_jobs/docker/Dockerfile.cpu",
        }
        for tag, dockerfile in builds.items():
            run(["docker", "build", "-f", str(REPO_ROOT / dockerfile), "-t", tag, str(REPO_ROOT)], timeout_s=3600)
        if run(["docker", "image", "inspect", TRITON_IMAGE], check=False).strip() in ("", "[]"):
            run(["docker", "pull", TRITON_IMAGE], timeout_s=3600)
        for tag in (*builds, TRITON_IMAGE):
            run(["kind", "load", "docker-image", "--name", self.name, tag], timeout_s=3600)

    def install_prometheus(self) -> None:
        self.apply((REPO_ROOT / "e2e/manifests/prometheus.yaml").read_text())
        self.kubectl("-n", "optiserve-e2e-monitoring", "rollout", "status", "deployment/prometheus", "--timeout=300s")

    def install_operator(self) -> None:
        """The chart, as a platform team installs it: all namespaces, the images just loaded."""
        values = {
            "image": {"registry": "ghcr.io", "repository": "optiserve/operator", "tag": "e2e", "pullPolicy": "Never"},
            "optimizer": {"image": {"registry": "ghcr.io", "repository": "optiserve/optimizer", "tag": "e2e"}},
            "prometheus": {"address": PROMETHEUS_ADDRESS},
            "resyncSeconds": 5,
        }
        sets = [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]
        self.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(REPO_ROOT / "charts/optiserve"),
            "-n",
            RELEASE_NAMESPACE,
            "--create-namespace",
            *sets,
        )
        self.kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s")
