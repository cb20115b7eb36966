"""Publish the unoptimized model as a Triton repository: the baseline a first local canary runs against.

In a cluster the baseline is whatever was promoted before. On one machine, with nothing promoted
yet, the baseline is the model as the user gave it: exported to ONNX by the same export pass the
job uses (FP32, no other pass), served the same way as the candidate, so the canary compares the
optimization and nothing else.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from optiserve.api.job import ArtifactRef, JobRequest
from optiserve.api.spec import ExportPass, ModelFormat
from optiserve_jobs import repository
from optiserve_jobs.datasets import Dataset, load_dataset
from optiserve_jobs.errors import JobError
from optiserve_jobs.golden_set import golden_samples
from optiserve_jobs.interference import benchmark_threads
from optiserve_jobs.job import NUMERICAL_CHECK_SAMPLES, job_source_is_text
from optiserve_jobs.passes import PassContext, PassStatus, build_pass
from optiserve_jobs.source_model import load_source_model
from optiserve_jobs.sources import resolve_uri


def _export_config(request: JobRequest) -> ExportPass:
    """The request's own export settings (opset, tolerances), or the defaults."""
    return next((p for p in request.passes if isinstance(p, ExportPass)), ExportPass(type="export"))


def publish_baseline(request: JobRequest, out_dir: Path) -> ArtifactRef:
    """Export (if needed) and publish the FP32 model under ``out_dir``; raises JobError on failure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=".work-", dir=out_dir))
    base_dir = Path(request.base_dir) if request.base_dir else None
    try:
        source = load_source_model(request.model, base_dir=base_dir, download_dir=work_dir / "downloads")

        def dataset(uri: str, limit: int) -> Dataset:
            return load_dataset(resolve_uri(uri, base_dir=base_dir, download_dir=work_dir / "downloads"), source, limit=limit)

        validation = dataset(request.validation.dataset_uri, request.validation.samples)
        model = source.path
        if source.format is not ModelFormat.ONNX:
            context = PassContext(
                work_dir=work_dir,
                source=source,
                base_dir=base_dir,
                threads=benchmark_threads(request.benchmark.threads),
                sample=validation.take(NUMERICAL_CHECK_SAMPLES),
                load_dataset=dataset,
            )
            outcome = build_pass(_export_config(request)).run(model, context, 0)
            if outcome.status is not PassStatus.OK or outcome.output is None:
                raise JobError(f"baseline export failed: {outcome.detail}")
            model = outcome.output
        text_inputs = job_source_is_text(request)
        served_inputs = repository.read_model_io(model, text_inputs).inputs
        settings = repository.PublishSettings(
            name=request.name,
            triton=request.triton,
            benchmark_batch_sizes=request.benchmark.batch_sizes,
            sequence_length=request.model.sequence_length,
            text_inputs=text_inputs,
        )
        return repository.publish(out_dir, model, settings, golden_samples(validation, served_inputs, text_inputs=text_inputs))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
