"""The helm binary (installed by scripts/setup_helm.sh) and the chart rendered into Python objects.

Shared by the chart tests and the cluster tier. Where helm is missing the tests FAIL and name the
script that installs it: a chart test that silently does not run proves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.models import REPO_ROOT

CHART = REPO_ROOT / "charts" / "optiserve"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
HELM_HOME = Path(os.environ.get("OPTISERVE_HELM_HOME", Path.home() / ".cache/optiserve/helm"))
SETUP_SCRIPT = "scripts/setup_helm.sh"
RELEASE = "optiserve"
RELEASE_NAMESPACE = "optiserve-system"

Object = dict[str, Any]


def tool(name: str) -> Path:
    """`helm` or `kubectl` from the project's cache; fails the test (never skips) when missing."""
    path = HELM_HOME / "bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: run `{SETUP_SCRIPT}` (seconds) or set OPTISERVE_HELM_HOME.", pytrace=False)
    return path


def run_helm(*args: str, env: Mapping[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """helm with its caches and config in a throw-away home, so it reads no user settings."""
    helm_env = {**os.environ, **(env or {})}
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        helm_env.setdefault(var, str(HELM_HOME / "state" / sub))
    result = subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, env=helm_env, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result


def values_args(values_files: Sequence[Path] = (), set_json: Mapping[str, Any] | None = None) -> list[str]:
    args = []
    for path in values_files:
        args += ["-f", str(path)]
    for key, value in (set_json or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def render(
    values_files: Sequence[Path] = (),
    set_json: Mapping[str, Any] | None = None,
    *,
    namespace: str = RELEASE_NAMESPACE,
    include_crds: bool = True,
    release: str = RELEASE,
) -> list[Object]:
    """`helm template` of the chart: every object it would install, in order."""
    args = ["template", release, str(CHART), "--namespace", namespace, *values_args(values_files, set_json)]
    if include_crds:
        args.append("--include-crds")
    return [doc for doc in yaml.safe_load_all(run_helm(*args).stdout) if doc]


def find(objects: Sequence[Object], kind: str, name: str | None = None) -> list[Object]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def pod_templates(objects: Sequence[Object]) -> Iterator[tuple[str, Object]]:
    """(`Kind/name`, pod spec) of every workload among `objects`."""
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield f"{kind}/{name}", spec["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield f"{kind}/{name}", spec
