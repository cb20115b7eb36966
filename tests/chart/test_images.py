"""The Dockerfiles, checked without a Docker engine (none runs here): parsed, then held to what they must do.

Each image copies only files that exist, runs as the numeric non-root user the pod specs expect, and
starts what the chart or the Job builder runs. The operator image installs the project's base
dependencies only (no torch); the GPU optimizer image installs every optimizer dependency its base
image does not already carry. Building them needs a Docker engine (`docker build -f ...`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from optiserve.resources.comparator import COMPARATOR_UID
from optiserve.resources.job import JOB_UID
from tests.support.chart_workloads import operator_container
from tests.support.helm import CHART, render
from tests.support.models import REPO_ROOT

OPERATOR = REPO_ROOT / "docker/Dockerfile.operator"
OPTIMIZER_CPU = REPO_ROOT / "optimizer_jobs/docker/Dockerfile.cpu"
OPTIMIZER_GPU = REPO_ROOT / "optimizer_jobs/docker/Dockerfile.gpu"
ALL = [OPERATOR, OPTIMIZER_CPU, OPTIMIZER_GPU]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
HEAVY = ("torch", "onnxruntime", "tensorrt", "transformers")
GPU_BASE_PROVIDES = {"torch", "numpy", "tensorrt"}
"""What NVIDIA's PyTorch base image (nvcr.io/nvidia/pytorch) ships, so Dockerfile.gpu keeps its build."""


def parse(path: Path) -> DockerfileParser:
    parser = DockerfileParser(fileobj=path.open("rb"))
    assert parser.structure, f"{path}: no instructions"
    return parser


def instructions(path: Path, name: str) -> list[str]:
    return [i["value"] for i in parse(path).structure if i["instruction"] == name]


def final_stage(path: Path) -> list[dict[str, Any]]:
    structure: list[dict[str, Any]] = parse(path).structure
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    return structure[last_from:]


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


@pytest.mark.parametrize("dockerfile", ALL, ids=lambda p: p.name)
def test_every_copied_path_exists(dockerfile: Path) -> None:
    for value in instructions(dockerfile, "COPY"):
        parts = value.split()
        if any(p.startswith("--from=") for p in parts):
            continue
        for source in [p for p in parts[:-1] if not p.startswith("--")]:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path in the repository"


@pytest.mark.parametrize(
    ("dockerfile", "uid"), [(OPERATOR, 10001), (OPTIMIZER_CPU, JOB_UID), (OPTIMIZER_GPU, JOB_UID)], ids=lambda x: str(x)
)
def test_runs_as_the_non_root_user_the_pods_expect(dockerfile: Path, uid: int) -> None:
    (user,) = [i["value"] for i in final_stage(dockerfile) if i["instruction"] == "USER"]
    assert user.split(":")[0] == str(uid), f"{dockerfile.name}: USER {user}"
    useradd = " ".join(instructions(dockerfile, "RUN"))
    assert f"--uid {uid}" in useradd


def test_operator_image_user_is_the_charts_and_the_comparators() -> None:
    values_uid = yaml.safe_load((CHART / "values.yaml").read_text())["runAsUser"]
    (user,) = [i["value"] for i in final_stage(OPERATOR) if i["instruction"] == "USER"]
    assert int(user.split(":")[0]) == values_uid == COMPARATOR_UID


def test_operator_image_starts_the_operator_the_chart_runs() -> None:
    entrypoint = instructions(OPERATOR, "ENTRYPOINT")[-1]
    cmd = instructions(OPERATOR, "CMD")[-1]
    assert entrypoint == '["optiserve"]'
    assert "optiserve" in PYPROJECT["project"]["scripts"]
    assert operator_container(render())["args"][0] == cmd.strip('[]"')  # the chart's args replace CMD: `operator`


def test_operator_image_has_no_heavy_dependencies() -> None:
    runs = " ".join(instructions(OPERATOR, "RUN"))
    assert "pip wheel" in runs and " -c constraints.txt ." in runs
    assert "[" not in runs.split("pip wheel", 1)[1].split("\n", 1)[0], "no extras: base dependencies only"
    for heavy in HEAVY:
        assert not re.search(rf"\b{heavy}[=<>\[]", runs), heavy
    base = requirement_names(PYPROJECT["project"]["dependencies"])
    assert not base & set(HEAVY), "the project's base dependencies must stay light: the operator image installs them"


def test_optimizer_images_start_the_job_entry_point() -> None:
    for dockerfile in (OPTIMIZER_CPU, OPTIMIZER_GPU):
        assert instructions(dockerfile, "ENTRYPOINT")[-1] == '["python", "-m", "optiserve_jobs"]'
    assert (REPO_ROOT / "optimizer_jobs/optiserve_jobs/__main__.py").is_file()


def test_gpu_image_installs_what_its_base_does_not_carry() -> None:
    installed: set[str] = set()
    for run in instructions(OPTIMIZER_GPU, "RUN"):
        installed |= requirement_names(re.findall(r'"([A-Za-z0-9_.\-\[\],]+[<>=!~][^"]*)"', run))
    extras = PYPROJECT["project"]["optional-dependencies"]
    needed = requirement_names(extras["optimizer"] + extras["llm"]) - GPU_BASE_PROVIDES
    needed = (needed - {"onnxruntime"}) | {"onnxruntime-gpu"}
    assert needed <= installed, f"Dockerfile.gpu misses {sorted(needed - installed)}"
    assert {"pydantic", "tritonclient"} <= installed  # what optiserve.api and the Triton config need at import


def test_cpu_image_pins_torch_as_the_project_does() -> None:
    runs = " ".join(instructions(OPTIMIZER_CPU, "RUN"))
    pinned = next(line for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    assert pinned in runs
    assert "-c constraints.txt '.[optimizer,llm]'" in runs


@pytest.mark.parametrize("dockerfile", ALL, ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_tag(dockerfile: Path) -> None:
    parser = parse(dockerfile)
    for image in parser.parent_images:
        resolved = image
        for name, default in re.findall(r"ARG (\w+)=(\S+)", parser.content):
            resolved = resolved.replace(f"${{{name}}}", default)
        if resolved in ("build",):
            continue
        assert ":" in resolved.rsplit("/", 1)[-1] and not resolved.endswith(":latest"), f"{dockerfile.name}: FROM {image}"
