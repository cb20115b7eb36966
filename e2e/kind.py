"""The kind cluster of the end-to-end suite, for machines that can pull from registries.

kind's stock node image and NVIDIA's Triton image are pulled; the project's own images are built from
the repository's Dockerfiles and loaded into the node. Where nothing can be pulled, the suite runs on
`e2e.node.NodeCluster` instead (the default): see e2e/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import HELM_BIN, REPO_ROOT, Cluster, Images, run

IMAGES = Images(
    operator="ghcr.io/optiserve/operator:e2e",
    optimizer="ghcr.io/optiserve/optimizer:e2e",
    triton=os.environ.get("E2E_TRITON_IMAGE", "nvcr.io/nvidia/tritonserver:24.10-py3"),
    prometheus="quay.io/prometheus/prometheus:v2.55.1",
    gateway="docker.io/library/traefik:v3.6",
)


def missing_requirements() -> list[str]:
    """What this machine lacks for the kind suite, each with how it was found missing (empty: all there)."""
    missing = docker_missing()
    if shutil.which("kind") is None:
        missing.append("kind (no `kind` on PATH; `go install sigs.k8s.io/kind@v0.30.0`)")
    return missing + tools_missing()


def docker_missing() -> list[str]:
    if shutil.which("docker") is None:
        return ["docker (no `docker` on PATH)"]
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return ["a Docker engine (`docker info` failed)"]
    return []


def tools_missing() -> list[str]:
    return [
        f"{tool} ({HELM_BIN / tool} missing; run scripts/setup_helm.sh)"
        for tool in ("helm", "kubectl")
        if not (HELM_BIN / tool).is_file()
    ]


@dataclass
class KindCluster(Cluster):
    name: str = "optiserve-e2e"
    created: bool = False
    """False when the suite reuses an existing cluster (E2E_CLUSTER): then it never deletes it."""

    @classmethod
    def create(cls, name: str, workdir: Path) -> KindCluster:
        kubeconfig = workdir / f"{name}.kubeconfig"
        run(["kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "180s"])
        return cls(kubeconfig, IMAGES, name, created=True)

    @classmethod
    def existing(cls, name: str, workdir: Path) -> KindCluster:
        kubeconfig = workdir / f"{name}.kubeconfig"
        kubeconfig.write_text(run(["kind", "get", "kubeconfig", "--name", name]))
        return cls(kubeconfig, IMAGES, name, created=False)

    def delete(self) -> None:
        if self.created:
            run(["kind", "delete", "cluster", "--name", self.name], check=False)

    def import_image(self, reference: str) -> None:
        run(["kind", "load", "docker-image", "--name", self.name, reference], timeout_s=3600)

    def node_address(self) -> str:
        node = f"{self.name}-control-plane"
        return run(["docker", "inspect", "--format", "{{.NetworkSettings.Networks.kind.IPAddress}}", node]).strip()

    def load_images(self) -> None:
        """Build the project's images and load them, and Triton's and Prometheus', into the kind node."""
        builds = {
            self.images.operator: "docker/Dockerfile.operator",
            self.images.optimizer: "optimizer_jobs/docker/Dockerfile.cpu",
        }
        for tag, dockerfile in builds.items():
            run(["docker", "build", "-f", str(REPO_ROOT / dockerfile), "-t", tag, str(REPO_ROOT)], timeout_s=3600)
        for pulled in (self.images.triton, self.images.prometheus, self.images.gateway):
            if run(["docker", "image", "inspect", pulled], check=False).strip() in ("", "[]"):
                run(["docker", "pull", pulled], timeout_s=3600)
        for tag in (*builds, self.images.triton, self.images.prometheus, self.images.gateway):
            run(["kind", "load", "docker-image", "--name", self.name, tag], timeout_s=3600)
