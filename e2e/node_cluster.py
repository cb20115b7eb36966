"""A one-node Kubernetes cluster built on this machine, with no registry: the suite's default cluster.

The node is a privileged container of `ghcr.io/optiserve/node:e2e` (e2e/images/build.py) on a Docker
network of its own. Inside it, e2e/node/entrypoint.sh runs containerd, etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, a kubelet, kube-proxy and CoreDNS, every one built from
source here. The images pods run are built here too and imported into the node's containerd
(`docker save | ctr import`), so no pod pulls anything.

What kind's node does with systemd and kubeadm, this node does with one script; docs/e2e.md says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e.cluster import REPO_ROOT, Cluster, E2EError, Images, run, until
from e2e.images.build import (
    GATEWAY_IMAGE,
    LOCAL_PATH_IMAGE,
    NODE_IMAGE,
    OPERATOR_IMAGE,
    OPTIMIZER_IMAGE,
    PAUSE_IMAGE,
    PROMETHEUS_IMAGE,
    TRITON_IMAGE,
)

NETWORK = "optiserve-e2e"
CONTAINER = "optiserve-e2e-node"
IMAGES = Images(
    operator=OPERATOR_IMAGE, optimizer=OPTIMIZER_IMAGE, triton=TRITON_IMAGE, prometheus=PROMETHEUS_IMAGE, gateway=GATEWAY_IMAGE
)
POD_IMAGES = (PAUSE_IMAGE, OPERATOR_IMAGE, OPTIMIZER_IMAGE, TRITON_IMAGE, PROMETHEUS_IMAGE, LOCAL_PATH_IMAGE, GATEWAY_IMAGE)
ADMIN_KUBECONFIG = "/etc/optiserve/admin.kubeconfig"
START_TIMEOUT_S = 240.0
# What `--privileged` gives, less CAP_SYS_RESOURCE: machines of this kind run Docker without it, and
# runc refuses to start a container asking for a capability its parent lacks. Hence the node's
# containerd restricts OOM score adjustments (entrypoint.sh).
NODE_PRIVILEGES = (
    "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined", "--security-opt=apparmor=unconfined", "--security-opt=systempaths=unconfined",
    "--device=/dev/kmsg", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "-v", "/lib/modules:/lib/modules:ro",
    "--tmpfs=/run", "--tmpfs=/tmp", "--label=optiserve.io/e2e=node",
)  # fmt: skip


def missing_requirements() -> list[str]:
    """What this machine lacks for the node cluster (empty: all there)."""
    from e2e.kind import docker_missing, tools_missing

    missing = docker_missing()
    if shutil.which("mmdebstrap") is None:
        missing.append("mmdebstrap (Debian package; scripts/setup_docker.sh installs it)")
    return missing + tools_missing()


@dataclass
class NodeCluster(Cluster):
    container: str = CONTAINER
    created: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds each start-up step took (images, node, image import), for docs/e2e.md."""

    @classmethod
    def start(cls, workdir: Path, name: str = CONTAINER) -> NodeCluster:
        """Build what is missing, start the node, wait until it is Ready and import the pod images."""
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        run([sys.executable, "-m", "e2e.images.build"], timeout_s=3600)
        timings["images"] = time.monotonic() - t0
        _ensure_network()
        run(["docker", "rm", "-f", "-v", name], check=False)
        t0 = time.monotonic()
        run(["docker", "run", "-d", "--name", name, "--hostname", name, "--network", NETWORK, *NODE_PRIVILEGES, NODE_IMAGE])
        cluster = cls(workdir / f"{name}.kubeconfig", IMAGES, name, created=True, timings=timings)
        try:
            cluster._wait_started()
            cluster.kubeconfig.write_text(cluster.exec("cat", ADMIN_KUBECONFIG))
            until("the node to be Ready", cluster._node_ready, timeout_s=START_TIMEOUT_S)
            timings["node"] = time.monotonic() - t0
            t0 = time.monotonic()
            cluster.load_images(POD_IMAGES)
            timings["image import"] = time.monotonic() - t0
            cluster.install_storage()
        except BaseException:
            cluster.print_logs()
            cluster.delete()
            raise
        return cluster

    def exec(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        return run(["docker", "exec", "-i", self.container, *argv], stdin=stdin, check=check)

    def _wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            state = run(["docker", "inspect", "--format", "{{.State.Running}}", self.container], check=False).strip()
            if state != "true":
                raise E2EError(f"the node container stopped while starting:\n{self.logs()}")
            if (
                subprocess.run(["docker", "exec", self.container, "test", "-f", "/run/optiserve/started"], check=False).returncode
                == 0
            ):
                return
            time.sleep(1)
        raise E2EError(f"the node did not start within {START_TIMEOUT_S:.0f} s:\n{self.logs()}")

    def _node_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}", check=False)
        return out.strip() == "True"

    def load_images(self, images: tuple[str, ...] = POD_IMAGES) -> None:
        """Import images into the node's containerd, as kind's `load docker-image` does (no registry)."""
        for image in images:
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            load = subprocess.run(
                ["docker", "exec", "-i", self.container, "ctr", "-n", "k8s.io", "images", "import", "--no-unpack=false", "-"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
            save.wait()
            if save.returncode != 0 or load.returncode != 0:
                raise E2EError(f"importing {image} into the node failed: {load.stderr[-2000:]}")

    def install_storage(self) -> None:
        """The local-path provisioner as the default StorageClass, its helper pods on the project's base image."""
        manifest = (REPO_ROOT / "e2e/manifests/local-path-storage.yaml").read_text()
        self.apply(manifest.replace("image: local-path-provisioner", f"image: {LOCAL_PATH_IMAGE}"))
        self.kubectl("-n", "local-path-storage", "rollout", "status", "deployment/local-path-provisioner", "--timeout=180s")

    def import_image(self, reference: str) -> None:
        self.load_images((reference,))

    def node_address(self) -> str:
        address = run(
            ["docker", "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}', self.container]
        ).strip()
        if not address:
            raise E2EError(f"the node container {self.container} has no address on {NETWORK}")
        return address

    def logs(self) -> str:
        return run(["docker", "logs", "--tail", "60", self.container], check=False)

    def print_logs(self) -> None:
        print(f"\ne2e node {self.container}:\n{self.logs()}")  # noqa: T201

    def component_log(self, name: str, lines: int = 200) -> str:
        return self.exec("tail", "-n", str(lines), f"/var/log/optiserve/{name}.log", check=False)

    def delete(self) -> None:
        if self.created and os.environ.get("E2E_KEEP") != "1":
            run(["docker", "rm", "-f", "-v", self.container], check=False)
            run(["docker", "network", "rm", NETWORK], check=False)


def _ensure_network() -> None:
    if run(["docker", "network", "inspect", NETWORK], check=False).strip() in ("", "[]"):
        run(["docker", "network", "create", "--label", "optiserve.io/e2e=network", NETWORK])
