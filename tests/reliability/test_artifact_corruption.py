"""Artifact publishing interrupted or corrupted: never loaded, never served (issue 8, item 5).

Each fault is applied to a real published repository: the process killed between moving the
repositories into place and the manifest's rename (a fresh publish, and a re-publish over a good
repository), a truncated model.onnx, a wrong sha256 in manifest.json, a missing config.pbtxt, a
half-written manifest. Every consumer must refuse it, naming the file:

- `verify_artifact` (tests/unit/test_repository.py covers truncation, an edited config, a missing
  file or manifest one by one; here the same faults as the consumers below meet them);
- the local pipeline's job cache, which must run the job again rather than reuse the output;
- the local pipeline's serving (`start_canary_servers`, and the injected candidate's copy), which
  must refuse before any tritonserver starts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from optiserve.api.job import JobRequest, job_request_from_manifest
from optiserve.api.manifest import parse_manifest
from optiserve.api.spec import TritonSpec
from optiserve.artifact import CorruptRepositoryError, verify_artifact
from optiserve.local.canary_servers import start_canary_servers
from optiserve.local.injected_candidate import VariantDirs, served_candidate
from optiserve.local.job_cache import optimization_outputs, request_digest
from optiserve_jobs import repository
from tests.reliability.figures import report_figure
from tests.support.models import FAST_BENCHMARK, NO_SPEED_GATE, manifest, tiny_dataset, tiny_mlp

MODEL = "tiny"
PYTHON_MODEL = f"model_repository_python/{MODEL}/1/model.onnx"
ONNX_MODEL = f"model_repository/{MODEL}/1/model.onnx"
PYTHON_CONFIG = f"model_repository_python/{MODEL}/config.pbtxt"

CRASHING_PUBLISH = """
import os, sys
from pathlib import Path
from optiserve.api.spec import TritonSpec
from optiserve_jobs import repository

moved = Path.rename
def rename(self, target):
    if Path(target).name == repository.MANIFEST:
        os._exit(137)  # killed after the repositories were moved into place, before the manifest
    return moved(self, target)
Path.rename = rename
settings = repository.PublishSettings(sys.argv[3], TritonSpec(), [1, 4], 16, text_inputs=False)
repository.publish(Path(sys.argv[1]), Path(sys.argv[2]), settings)
"""


def _publish(out: Path, model: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    repository.publish(out, model, repository.PublishSettings(MODEL, TritonSpec(), [1, 4], 16, text_inputs=False))
    return out


def _crash_while_publishing(out: Path) -> None:
    """Publish a model into ``out`` in a process that dies just before the manifest is renamed."""
    model = tiny_mlp(out.parent / f"{out.name}-next.onnx", seed=3)
    done = subprocess.run([sys.executable, "-c", CRASHING_PUBLISH, str(out), str(model), MODEL], check=False)
    assert done.returncode == 137, "the publishing process was not killed where intended"
    assert list(out.glob(".staging-*")), "a killed process leaves its staging directory"


def _truncate(relative: str) -> Callable[[Path], None]:
    def apply(out: Path) -> None:
        path = out / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return apply


def _wrong_sha256(out: Path) -> None:
    manifest_path = out / repository.MANIFEST
    document = json.loads(manifest_path.read_text())
    document["files"][ONNX_MODEL]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(document))


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda out: (out / relative).unlink()


def _half_written_manifest(out: Path) -> None:
    path = out / repository.MANIFEST
    path.write_text(path.read_text()[:40])


FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "crash-before-manifest": (_crash_while_publishing, "no manifest.json: the artifact was never completely published"),
    "truncated-model": (_truncate(PYTHON_MODEL), f"{PYTHON_MODEL}: sha256 differs"),
    "wrong-sha256": (_wrong_sha256, f"{ONNX_MODEL}: sha256 differs"),
    "missing-config": (_remove(PYTHON_CONFIG), f"{PYTHON_CONFIG}: listed in the manifest but missing"),
    "half-written-manifest": (_half_written_manifest, "manifest.json: unreadable manifest"),
}
IDS = sorted(FAULTS)


@pytest.fixture
def published(tmp_path: Path) -> Path:
    return _publish(tmp_path / "artifact", tiny_mlp(tmp_path / "m.onnx"))


@pytest.mark.parametrize("fault", IDS)
def test_verify_refuses_each_fault_naming_the_file(published: Path, fault: str) -> None:
    apply, names = FAULTS[fault]
    apply(published)
    with pytest.raises(CorruptRepositoryError) as refused:
        verify_artifact(published)
    assert names in str(refused.value)


def test_a_crash_while_re_publishing_leaves_nothing_trusted(published: Path) -> None:
    """The old manifest goes before the old repositories: a crash leaves new files and no manifest."""
    verify_artifact(published)
    _crash_while_publishing(published)
    assert (published / "model_repository_python").is_dir()
    with pytest.raises(CorruptRepositoryError, match="never completely published"):
        verify_artifact(published)


@pytest.mark.parametrize("fault", IDS)
def test_local_serving_refuses_before_any_server_starts(tmp_path: Path, published: Path, fault: str) -> None:
    baseline = _publish(tmp_path / "baseline", tiny_mlp(tmp_path / "b.onnx", seed=1))
    apply, names = FAULTS[fault]
    apply(published)
    logs = tmp_path / "logs"
    with pytest.raises(CorruptRepositoryError) as refused, start_canary_servers(MODEL, baseline, published, logs, print):
        pytest.fail("servers started on a corrupt candidate")
    assert "refusing to serve the candidate" in str(refused.value) and names in str(refused.value)
    assert not logs.exists(), "nothing was started (a tritonserver writes its log there first)"


def test_the_injected_candidate_is_copied_only_from_an_intact_artifact(tmp_path: Path, published: Path) -> None:
    baseline = _publish(tmp_path / "baseline", tiny_mlp(tmp_path / "b.onnx", seed=1))
    _truncate(PYTHON_MODEL)(published)
    with pytest.raises(CorruptRepositoryError, match=PYTHON_MODEL):
        served_candidate(["accuracy-drop"], VariantDirs(MODEL, baseline, published), tmp_path / "work", 1, print)


def test_the_injected_candidate_is_sealed_and_checked_like_a_published_one(tmp_path: Path, published: Path) -> None:
    baseline = _publish(tmp_path / "baseline", tiny_mlp(tmp_path / "b.onnx", seed=1))
    served = served_candidate(["accuracy-drop"], VariantDirs(MODEL, baseline, published), tmp_path / "work", 1, print)
    verify_artifact(served)  # the injected config.pbtxt is in its manifest
    assert "inject_output_noise" in (served / PYTHON_CONFIG).read_text()
    _truncate(PYTHON_MODEL)(served)
    with (
        pytest.raises(CorruptRepositoryError, match="refusing to serve the candidate"),
        start_canary_servers(MODEL, baseline, served, tmp_path / "logs", print),
    ):
        pytest.fail("servers started on a corrupt injected candidate")


# ---------------------------------------------------------------- the job cache


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobRequest, Path]:
    """A real (small) optimization job's output in a job cache, kept pristine for each test to copy."""
    root = tmp_path_factory.mktemp("tiny-job")
    tiny_mlp(root / "model.onnx")
    tiny_dataset(root / "validation.npz")
    spec = {
        "model": {"uri": "model.onnx", "format": "onnx"},
        "optimization": {"passes": [{"type": "quantize", "mode": "dynamic"}]},
        "validation": {"datasetUri": "validation.npz", "maxDegradation": 0.2, **NO_SPEED_GATE},
        "benchmark": FAST_BENCHMARK | {"profile": False},
    }
    request = job_request_from_manifest(parse_manifest(manifest(spec, name=MODEL)), base_dir=str(root))
    cache = root / "cache"
    outputs = optimization_outputs(request, root / "unused", cache, lambda _: None)
    assert outputs.result.passed, outputs.result.reason
    return request, cache


def _truncated_result(entry: Path) -> None:
    path = entry / "job_result.json"
    path.write_text(path.read_text()[:20])


def _inside(directory: str, apply: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda entry: apply(entry / directory)


CACHE_FAULTS: dict[str, Callable[[Path], None]] = {
    **{f"candidate-{name}": _inside("candidate", FAULTS[name][0]) for name in IDS},
    "baseline-truncated-model": _inside("baseline", _truncate(PYTHON_MODEL)),
    "half-written-job-result": _truncated_result,
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(CACHE_FAULTS))
def test_the_job_cache_runs_the_job_again_instead_of_reusing_a_broken_output(
    tiny_job: tuple[JobRequest, Path], tmp_path: Path, fault: str
) -> None:
    request, pristine = tiny_job
    key = request_digest(request)
    cache = tmp_path / "cache"
    shutil.copytree(pristine / key, cache / key)
    CACHE_FAULTS[fault](cache / key)
    said: list[str] = []

    outputs = optimization_outputs(request, tmp_path / "unused", cache, said.append)

    assert not outputs.reused and not any("reusing" in line for line in said), said
    assert any(line.startswith("optimizing:") for line in said), "the job ran again"
    verify_artifact(outputs.candidate_dir)
    verify_artifact(outputs.baseline_dir)
    again = optimization_outputs(request, tmp_path / "unused", cache, said.append)
    assert again.reused, "the re-run left a reusable entry"
    report_figure(f"5-cache-{fault}", reused=outputs.reused, rerun=True)
