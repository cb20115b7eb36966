"""Build every image the real-pod tier runs, with no container registry.

Each image starts from a Debian bookworm root filesystem made here by ``mmdebstrap`` from Debian's
packages and imported with ``docker import``; nothing is pulled. The project's images install wheels
downloaded beforehand on this machine, so no build step needs the network.

Every image is tagged by a content stamp: the sha256 of its Dockerfile, its parent's stamp and the
digests of its inputs (the project's sources, pinned versions, binaries). An image whose stamp tag
exists is not rebuilt; root filesystems, wheels and binaries are cached under
``$OPTISERVE_IMAGES_HOME`` (default ``~/.cache/optiserve/images``), outside the repository.

    python -m e2e.images.build            # build what is missing, print JSON and a table
    python -m e2e.images.build --force    # rebuild all
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("OPTISERVE_IMAGES_HOME", Path.home() / ".cache/optiserve/images"))
TRITON_HOME = Path(os.environ.get("OPTISERVE_TRITON_HOME", Path.home() / ".cache/optiserve/triton"))
CONTROLPLANE_BIN = Path(os.environ.get("OPTISERVE_CONTROLPLANE_HOME", Path.home() / ".cache/optiserve/controlplane")) / "bin"
NODE_BIN = Path(os.environ.get("OPTISERVE_NODE_HOME", Path.home() / ".cache/optiserve/node")) / "bin"
MIRROR = os.environ.get("OPTISERVE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
TRITON_PYTHON_REQUIREMENTS = ("numpy==1.26.4", "onnxruntime==1.32.0")  # as scripts/setup_triton.sh

# Packages of each root filesystem (mmdebstrap's minbase variant plus these).
ROOTFS_PACKAGES: dict[str, tuple[str, ...]] = {
    # libpython3.11: the Triton Python-backend stub links it.
    "base": ("python3", "python3-venv", "libpython3.11", "ca-certificates", "curl"),
    "node": (
        "containerd",
        "runc",
        "containernetworking-plugins",
        "iptables",
        "iproute2",
        "conntrack",
        "openssl",
        "procps",
        "ca-certificates",
        "curl",
        "util-linux",
        "mount",
    ),
}

# The names the suite, the chart values and the node use.
OPERATOR_IMAGE = "ghcr.io/optiserve/operator:e2e"
OPTIMIZER_IMAGE = "ghcr.io/optiserve/optimizer-onnx:e2e"
TRITON_IMAGE = "ghcr.io/optiserve/tritonserver-cpu:2.51-e2e"
PROMETHEUS_IMAGE = "ghcr.io/optiserve/prometheus:e2e"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
LOCAL_PATH_IMAGE = "ghcr.io/optiserve/local-path-provisioner:e2e"
GATEWAY_IMAGE = "ghcr.io/optiserve/traefik:e2e"
NODE_IMAGE = "ghcr.io/optiserve/node:e2e"


class BuildError(RuntimeError):
    """A build step failed; the message names the step and holds its output."""


def run(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout_s: float = 3600) -> str:
    result = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def tree_digest(paths: Iterable[Path]) -> str:
    """Content digest of files and directory trees (``__pycache__`` and ``.pyc`` left out)."""
    h = hashlib.sha256()
    for root in sorted(paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            h.update(str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path).encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def docker_env() -> dict[str, str]:
    # The classic builder: Debian's engine has no buildx plugin beside a newer client.
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0


@dataclass
class Built:
    name: str
    tag: str
    stamp: str
    seconds: float
    cached: bool
    size_mb: float = 0.0


@dataclass
class Builder:
    force: bool = False
    results: list[Built] = field(default_factory=list)

    def _record(self, name: str, tag: str, stamp: str, t0: float, cached: bool) -> str:
        size = json.loads(run(["docker", "image", "inspect", "--format", "{{json .Size}}", tag]))
        self.results.append(Built(name, tag, stamp, round(time.monotonic() - t0, 1), cached, round(size / 1e6, 1)))
        return tag

    def rootfs(self, name: str) -> str:
        """``optiserve-e2e/<name>-rootfs:<stamp>``, from a Debian root filesystem made here."""
        t0 = time.monotonic()
        packages = ROOTFS_PACKAGES[name]
        stamp = digest(SUITE, MIRROR, *packages)[:16]
        tag = f"optiserve-e2e/{name}-rootfs:{stamp}"
        if not self.force and image_exists(tag):
            return self._record(f"{name}-rootfs", tag, stamp, t0, cached=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        tarball = CACHE / f"{name}-rootfs-{stamp}.tar"
        if self.force or not tarball.is_file():
            partial = tarball.with_suffix(".partial")
            run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    "--format=tar",
                    f"--include={','.join(packages)}",
                    '--aptopt=Acquire::Retries "3"',
                    # Documentation and translations: no use in an image.
                    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
                    SUITE,
                    str(partial),
                    MIRROR,
                ],
                timeout_s=1200,
            )
            partial.replace(tarball)
        run(["docker", "import", str(tarball), tag])
        return self._record(f"{name}-rootfs", tag, stamp, t0, cached=False)

    def image(self, name: str, dockerfile: str, tag: str, parent: str, inputs: str, context: Callable[[Path], None]) -> str:
        """Build ``dockerfile`` FROM ``parent`` in a context that ``context`` fills; tag it ``tag``."""
        t0 = time.monotonic()
        text = (HERE / dockerfile).read_text()
        parent_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", parent]).strip() if parent else ""
        stamp = digest(text, parent_id, inputs)[:16]
        stamped = f"optiserve-e2e/{name}:{stamp}"
        if self.force or not image_exists(stamped):
            workdir = CACHE / "context" / name
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            context(workdir)
            (workdir / "Dockerfile").write_text(text)
            build_args = ["--build-arg", f"BASE={parent}"] if parent else []
            run(["docker", "build", "-q", *build_args, "-t", stamped, str(workdir)], env=docker_env())
            shutil.rmtree(workdir, ignore_errors=True)
            cached = False
        else:
            cached = True
        run(["docker", "tag", stamped, tag])
        return self._record(name, tag, stamp, t0, cached)


def project_requirements(extra: str | None) -> list[str]:
    """The project's dependencies (and an extra's), torch left out: it is installed on its own."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    if extra:
        requirements += project["optional-dependencies"][extra]
    return [r for r in requirements if not r.replace(" ", "").startswith("torch")]


def download_wheels(name: str, requirements: Sequence[str]) -> Path:
    """Wheels for ``requirements``, cached by their digest."""
    stamp = digest(*requirements, (REPO_ROOT / "constraints.txt").read_text())[:16]
    target = CACHE / "wheels" / f"{name}-{stamp}"
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        pip = [sys.executable, "-m", "pip"]
        constraints = ["-c", str(REPO_ROOT / "constraints.txt")]
        run([*pip, "download", "-q", "--only-binary=:all:", "-d", str(target), *constraints, *requirements], timeout_s=1800)
        (target / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (target / ".complete").write_text(stamp)
    return target


def project_wheel(into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(into), str(REPO_ROOT)])


PROJECT_SOURCES = ("pyproject.toml", "constraints.txt", "README.md", "operator", "optimizer_jobs")


def project_inputs(wheels: Path) -> str:
    return digest(tree_digest(REPO_ROOT / p for p in PROJECT_SOURCES), wheels.name)


def wheel_context(wheels: Path, with_project: bool) -> Callable[[Path], None]:
    def fill(workdir: Path) -> None:
        shutil.copytree(wheels, workdir / "wheels", ignore=shutil.ignore_patterns(".complete"))
        if with_project:
            project_wheel(workdir / "wheels" / "project")

    return fill


def copying(binary: Path) -> Callable[[Path], None]:
    """A context of one file, under its own name."""

    def fill(workdir: Path) -> None:
        shutil.copy2(binary, workdir / binary.name)

    return fill


def build_pause(into: Path) -> None:
    """Kubernetes' pause.c from the module cache of the pinned k8s.io/kubernetes, linked statically."""
    source = kubernetes_module_dir() / "build/pause/linux/pause.c"
    run(["gcc", "-Os", "-static", "-Wall", "-Werror", "-DVERSION=3.10", "-o", str(into / "pause"), str(source)])
    run(["strip", str(into / "pause")])


def kubernetes_module_dir() -> Path:
    out = run(["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"], cwd=REPO_ROOT / "tests/controlplane")
    return Path(out.strip())


def build_all(builder: Builder, with_node: bool = True) -> dict[str, str]:
    base = builder.rootfs("base")
    operator_wheels = download_wheels("operator", project_requirements(None))
    optimizer_wheels = download_wheels("optimizer", project_requirements("optimizer"))
    triton_wheels = download_wheels("triton", TRITON_PYTHON_REQUIREMENTS)
    triton_dist = TRITON_HOME / "dist"
    if not (triton_dist / "pytriton/tritonserver/bin/tritonserver").is_file():
        raise BuildError(f"{triton_dist} has no tritonserver: run scripts/setup_triton.sh (make setup) first")
    # Built from its Go module: Debian's package leaves out Kubernetes service discovery.
    prometheus = NODE_BIN / "prometheus"
    if not prometheus.is_file():
        raise BuildError(f"{prometheus} missing; run e2e/node/build.sh first")

    def triton_context(workdir: Path) -> None:
        wheel_context(triton_wheels, with_project=False)(workdir)
        shutil.copytree(triton_dist, workdir / "dist", symlinks=True)
        shutil.copy2(HERE / "tritonserver", workdir / "tritonserver")

    tags = {
        "operator": builder.image(
            "operator",
            "operator.Dockerfile",
            OPERATOR_IMAGE,
            base,
            project_inputs(operator_wheels),
            wheel_context(operator_wheels, with_project=True),
        ),
        "optimizer": builder.image(
            "optimizer",
            "optimizer.Dockerfile",
            OPTIMIZER_IMAGE,
            base,
            project_inputs(optimizer_wheels),
            wheel_context(optimizer_wheels, with_project=True),
        ),
        "triton": builder.image(
            "triton",
            "triton-cpu.Dockerfile",
            TRITON_IMAGE,
            base,
            digest(triton_wheels.name, tree_digest([triton_dist, HERE / "tritonserver"])),
            triton_context,
        ),
        "prometheus": builder.image(
            "prometheus",
            "prometheus.Dockerfile",
            PROMETHEUS_IMAGE,
            base,
            tree_digest([prometheus]),
            copying(prometheus),
        ),
        "pause": builder.image(
            "pause",
            "pause.Dockerfile",
            PAUSE_IMAGE,
            "",
            tree_digest([kubernetes_module_dir() / "build/pause/linux/pause.c"]),
            build_pause,
        ),
    }
    provisioner = NODE_BIN / "local-path-provisioner"
    if not provisioner.is_file():
        raise BuildError(f"{provisioner} missing; run e2e/node/build.sh first")
    tags["local-path-provisioner"] = builder.image(
        "local-path-provisioner",
        "local-path-provisioner.Dockerfile",
        LOCAL_PATH_IMAGE,
        base,
        tree_digest([provisioner]),
        copying(provisioner),
    )
    traefik = NODE_BIN / "traefik"
    if not traefik.is_file():
        raise BuildError(f"{traefik} missing; run e2e/node/build.sh first")
    tags["gateway"] = builder.image(
        "gateway", "traefik.Dockerfile", GATEWAY_IMAGE, base, tree_digest([traefik]), copying(traefik)
    )
    if with_node:
        tags["node"] = build_node(builder)
    return tags


NODE_BINARIES = {
    "etcd": CONTROLPLANE_BIN,
    "kube-apiserver": CONTROLPLANE_BIN,
    "kube-controller-manager": CONTROLPLANE_BIN,
    "kube-scheduler": CONTROLPLANE_BIN,
    "kubelet": CONTROLPLANE_BIN,
    "kube-proxy": CONTROLPLANE_BIN,
    "coredns": NODE_BIN,
}


def build_node(builder: Builder) -> str:
    node_rootfs = builder.rootfs("node")
    missing = [name for name, where in NODE_BINARIES.items() if not (where / name).is_file()]
    if missing:
        raise BuildError(f"node binaries missing: {', '.join(missing)}; run e2e/node/build.sh first")
    files = [where / name for name, where in NODE_BINARIES.items()] + [REPO_ROOT / "e2e/node/entrypoint.sh"]

    def context(workdir: Path) -> None:
        (workdir / "bin").mkdir()
        for name, where in NODE_BINARIES.items():
            shutil.copy2(where / name, workdir / "bin" / name)
        shutil.copy2(REPO_ROOT / "e2e/node/entrypoint.sh", workdir / "entrypoint.sh")

    return builder.image("node", "node.Dockerfile", NODE_IMAGE, node_rootfs, tree_digest(files), context)


def table(results: Sequence[Built]) -> str:
    lines = ["| image | tag | cached | seconds | size MB |", "|---|---|---|---:|---:|"]
    lines += [f"| {r.name} | `{r.tag}` | {'yes' if r.cached else 'no'} | {r.seconds} | {r.size_mb} |" for r in results]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild every image")
    parser.add_argument("--without-node", action="store_true", help="only the images pods run, not the node's")
    args = parser.parse_args(argv)
    builder = Builder(force=args.force)
    t0 = time.monotonic()
    try:
        tags = build_all(builder, with_node=not args.without_node)
    except BuildError as e:
        print(f"e2e images: {e}", file=sys.stderr)  # noqa: T201
        return 1
    report = {"images": tags, "total_seconds": round(time.monotonic() - t0, 1), "steps": [vars(r) for r in builder.results]}
    print(json.dumps(report, indent=2))  # noqa: T201
    print(table(builder.results))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
