"""The optimization job and the baseline repository for a local run, reused when the request is the same.

The outputs are keyed by the sha256 of the JobRequest's JSON: an identical request (same model,
passes, data, gates, serving settings) reuses them, anything else runs the job again. A cached
output is used only when its report says it passed and every file still matches its manifest's
sha256s, so a half-written or edited cache entry is never served.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optiserve.api.job import JobRequest, JobResult
from optiserve.artifact import CorruptRepositoryError, verify_artifact

Progress = Callable[[str], None]
CANDIDATE_DIR = "candidate"
BASELINE_DIR = "baseline"
RESULT_FILE = "job_result.json"


@dataclass(frozen=True)
class JobOutputs:
    result: JobResult
    candidate_dir: Path
    baseline_dir: Path
    report: dict[str, object]
    """The job's report.json."""
    reused: bool


def request_digest(request: JobRequest) -> str:
    """The request, and the model code the job copies into every repository (a new version re-runs)."""
    from optiserve_jobs import triton_python_model

    text = json.dumps(request.model_dump(mode="json", by_alias=True), sort_keys=True)
    code = Path(triton_python_model.__file__).read_bytes()
    return hashlib.sha256(text.encode() + b"\0" + code).hexdigest()[:16]


def _intact(directory: Path) -> bool:
    try:
        verify_artifact(directory)
    except CorruptRepositoryError:  # a missing file or a wrong digest: run the job again
        return False
    return True


def _load(root: Path, reused: bool) -> JobOutputs | None:
    result_path = root / RESULT_FILE
    if not result_path.is_file():
        return None
    candidate, baseline = root / CANDIDATE_DIR, root / BASELINE_DIR
    try:
        result = JobResult.model_validate_json(result_path.read_text())
        report = json.loads((candidate / "report.json").read_text())
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        if reused:
            return None  # a cache entry written only in part (a crash, a full disk): run the job again
        raise
    if result.passed and not (_intact(candidate) and _intact(baseline)):
        return None
    return JobOutputs(result=result, candidate_dir=candidate, baseline_dir=baseline, report=report, reused=reused)


def _run(request: JobRequest, root: Path, progress: Progress) -> JobOutputs:
    from optiserve_jobs.baseline import publish_baseline
    from optiserve_jobs.job import run_job
    from optiserve_jobs.report import write_json_atomically

    _, result = run_job(request, root / CANDIDATE_DIR, progress=lambda msg: progress(f"optimizing: {msg}"))
    if result.passed:
        progress("publishing the baseline (the unoptimized model, exported to ONNX)")
        publish_baseline(request, root / BASELINE_DIR)
    # Written last, atomically: it marks a finished run.
    write_json_atomically(root / RESULT_FILE, result.model_dump_json(by_alias=True))
    loaded = _load(root, reused=False)
    if loaded is None:
        raise RuntimeError(f"the optimization output under {root} failed its own integrity check")
    return loaded


def optimization_outputs(request: JobRequest, out_dir: Path, cache: Path | None, progress: Progress) -> JobOutputs:
    """Run the job (and publish the baseline) into ``out_dir``, or reuse ``cache``'s identical run."""
    if cache is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        return _run(request, out_dir, progress)
    root = cache / request_digest(request)
    found = _load(root, reused=True)
    if found is not None and found.result.passed:
        progress(f"reusing the optimization output of an identical request ({root.name})")
        return found
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return _run(request, root, progress)
