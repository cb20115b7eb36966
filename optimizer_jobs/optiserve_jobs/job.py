"""The optimization job from request to report: passes, validation, benchmark, gates, publish."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from optiserve.api.job import ArtifactRef, JobRequest, JobResult
from optiserve.api.spec import ExportPass, ModelFormat, Task, first_onnx_pass
from optiserve_jobs import repository
from optiserve_jobs.benchmark import evidence, run_benchmark
from optiserve_jobs.datasets import Dataset, load_dataset
from optiserve_jobs.errors import JobError, SourceError
from optiserve_jobs.golden_set import golden_samples
from optiserve_jobs.interference import benchmark_threads
from optiserve_jobs.pass_runner import run_pass
from optiserve_jobs.passes import PassContext
from optiserve_jobs.report import (
    AccuracyReport,
    BenchmarkReport,
    Gate,
    Report,
    SpeedReport,
    machine_report,
    write_report,
)
from optiserve_jobs.runners import OrtRunner, VariantSpec
from optiserve_jobs.source_model import SourceModel, load_source_model
from optiserve_jobs.stability import SpeedEvidence
from optiserve_jobs.validate import accuracy, evaluate_gates, fidelity, run_all, speed_threshold

Progress = Callable[[str], None]
NUMERICAL_CHECK_SAMPLES = 8


class _Job:
    def __init__(self, request: JobRequest, out_dir: Path, work_dir: Path, progress: Progress) -> None:
        self.request = request
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.progress = progress
        self.base_dir = Path(request.base_dir) if request.base_dir else None
        self.threads = benchmark_threads(request.benchmark.threads)
        self.report = Report(model=request.name, passed=False)

    def dataset(self, source: SourceModel, uri: str, limit: int) -> Dataset:
        from optiserve_jobs.sources import resolve_uri

        path = resolve_uri(uri, base_dir=self.base_dir, download_dir=self.work_dir / "downloads")
        return load_dataset(path, source, limit=limit)

    def run(self) -> tuple[Path, Dataset]:
        """The candidate ONNX model that passed every gate, and the validation set it passed on."""
        self.progress("loading the source model")
        source = load_source_model(self.request.model, base_dir=self.base_dir, download_dir=self.work_dir / "downloads")
        if source.format is ModelFormat.ONNX:
            try:
                onnx.checker.check_model(str(source.path))
            except onnx.checker.ValidationError as e:
                raise SourceError(f"{self.request.model.uri}: ONNX checker rejected the model: {e}") from e
        validation = self.dataset(source, self.request.validation.dataset_uri, self.request.validation.samples)
        self.report.validation_samples = len(validation)
        candidate = self._run_passes(source, validation)
        self._validate_and_benchmark(source, validation, candidate)
        return candidate, validation

    def _run_passes(self, source: SourceModel, validation: Dataset) -> Path:
        configs = list(self.request.passes)
        if source.format is not ModelFormat.ONNX and not any(isinstance(c, ExportPass) for c in configs):
            configs.insert(first_onnx_pass(configs), ExportPass(type="export"))
        context = PassContext(
            work_dir=self.work_dir,
            source=source,
            base_dir=self.base_dir,
            threads=self.threads,
            sample=validation.take(NUMERICAL_CHECK_SAMPLES),
            load_dataset=lambda uri, limit: self.dataset(source, uri, limit),
            log_dir=self.out_dir / "logs",
            progress=self.progress,
        )
        current = source.path
        for index, config in enumerate(configs):
            outcome = run_pass(config, current, context, index, len(configs), self.report.passes)
            if outcome.output is not None and outcome.output.suffix == ".onnx":
                current = outcome.output
        if current.suffix != ".onnx":
            raise JobError(f"{source.spec.uri}: no ONNX model to serve (add an export pass)")
        return current

    def _validate_and_benchmark(self, source: SourceModel, validation: Dataset, candidate: Path) -> None:
        spec = self.request.validation
        bench = self.request.benchmark
        baseline_variant = VariantSpec(
            "baseline",
            onnx_path=source.path if source.format is ModelFormat.ONNX else None,
            torch_source=source,
            base_dir=self.base_dir,
        )
        self.progress(f"validating on {len(validation)} samples")
        baseline_out = run_all(baseline_variant.build(self.threads), validation)
        candidate_out = run_all(OrtRunner(candidate, threads=self.threads), validation)
        found = fidelity(source.spec.task, baseline_out, candidate_out)
        self.report.fidelity = found
        accuracy_pair = None
        if validation.labels is not None:
            accuracy_pair = (accuracy(baseline_out, validation.labels), accuracy(candidate_out, validation.labels))
            self.report.accuracy = AccuracyReport(baseline=accuracy_pair[0], candidate=accuracy_pair[1])
        baseline_bytes = _model_bytes(source.path)
        self.report.size_ratio = candidate.stat().st_size / baseline_bytes
        results = run_benchmark(
            [
                (baseline_variant, source.baseline_runtime, source.path),
                (VariantSpec("candidate", onnx_path=candidate), "onnxruntime", candidate),
            ],
            {b: validation.repeat_to(b) for b in bench.batch_sizes},
            bench.model_copy(update={"threads": self.threads}),
            self.progress,
            threshold=speed_threshold(spec),
        )
        self.report.benchmark = BenchmarkReport(
            threads=self.threads,
            batch_sizes=bench.batch_sizes,
            machine=machine_report(),
            variants=results,
        )
        speed = evidence(results[0], results[1], bench.batch_sizes[0], bench)
        self.report.speed = _speed_report(speed, speed_threshold(spec))
        self.report.speedup_p50 = speed.median_ratio
        gates = evaluate_gates(spec, found, accuracy_pair, speed, self.report.size_ratio)
        self.report.gates = gates
        _raise_on_failed(gates)


def _raise_on_failed(gates: list[Gate]) -> None:
    """A failed gate fails the job; a speed gate the machine was too busy to judge fails it as
    inconclusive, naming the machine, never as a verdict on the model."""
    failed = [g for g in gates if not g.passed and not g.inconclusive]
    if failed:
        raise JobError(
            "gate failed: "
            + "; ".join(
                f"{g.name} = {_fmt(g.value)}, needs {g.comparison} {g.threshold:g}" + (f" ({g.detail})" if g.detail else "")
                for g in failed
            )
        )
    undecided = [g for g in gates if g.inconclusive]
    if undecided:
        raise JobError("inconclusive: " + "; ".join(f"{g.name} not judged: {g.detail}" for g in undecided))


def _speed_report(speed: SpeedEvidence, threshold: float | None) -> SpeedReport:
    interval = speed.interval
    return SpeedReport(
        batch_size=speed.batch_size,
        ratios=[round(r, 4) for r in speed.ratios],
        pairs=speed.pairs,
        needed=speed.needed,
        interval=[interval[0], interval[1]] if interval else None,
        coverage=interval[2] if interval else None,
        median_wait_fraction=speed.median_wait_fraction,
        explanation=speed.explain(1.0 if threshold is None else threshold),
    )


def _fmt(value: float | None) -> str:
    return "no value" if value is None else f"{value:.4g}"


def _model_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".onnx", ".pt"))


def run_job(request: JobRequest, out_dir: Path, progress: Progress = lambda _: None) -> tuple[Report, JobResult]:
    """Run the whole job. Always writes report.json; publishes a repository only when everything passed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    repository.remove_published(out_dir)
    started = time.perf_counter()
    work_dir = Path(tempfile.mkdtemp(prefix=".work-", dir=out_dir))
    job = _Job(request, out_dir, work_dir, progress)
    report = job.report
    try:
        run = _run_generative if request.model.task is Task.TEXT_GENERATION else _run_encoder
        report.artifact = run(job)
        report.passed = True
    except JobError as e:
        report.reason = str(e)
    except Exception as e:  # an unexpected failure still ends in a report and a clear reason
        report.reason = f"{type(e).__name__}: {e}"
    return _finish(report, out_dir, work_dir, started)


def _run_encoder(job: _Job) -> ArtifactRef:
    request = job.request
    candidate, validation = job.run()
    job.progress("publishing the Triton model repository")
    text_inputs = job_source_is_text(request)
    served_inputs = repository.read_model_io(candidate, text_inputs).inputs
    return repository.publish(
        job.out_dir,
        candidate,
        repository.PublishSettings(
            name=request.name,
            triton=request.triton,
            benchmark_batch_sizes=request.benchmark.batch_sizes,
            sequence_length=request.model.sequence_length,
            text_inputs=text_inputs,
        ),
        golden_samples(validation, served_inputs, text_inputs=text_inputs),
    )


def _finish(report: Report, out_dir: Path, work_dir: Path, started: float) -> tuple[Report, JobResult]:
    shutil.rmtree(work_dir, ignore_errors=True)
    report.seconds = round(time.perf_counter() - started, 2)
    report_path = write_report(report, out_dir)
    return report, _job_result(report, report_path)


def _run_generative(job: _Job) -> ArtifactRef:
    """The text-generation job (`generative.job`); its gates decide like the encoder job's."""
    from optiserve_jobs.generative.job import GenerativeRun, run_generative_job
    from optiserve_jobs.generative.publish import publish_generative

    run = GenerativeRun(job.request, job.out_dir, job.work_dir, job.threads, job.report, job.progress)
    candidate = run_generative_job(run)
    _raise_on_failed(job.report.gates)
    job.progress("publishing the generative model repository")
    greedy = job.report.generation.greedy if job.report.generation else None
    return publish_generative(job.out_dir, job.request.name, candidate.model, run.spec, greedy)


def job_source_is_text(request: JobRequest) -> bool:
    return request.model.format is ModelFormat.HUGGINGFACE or request.model.tokenizer_uri is not None


def _job_result(report: Report, report_path: Path) -> JobResult:
    delta = None if report.accuracy is None else report.accuracy.candidate - report.accuracy.baseline
    return JobResult(
        passed=report.passed,
        reason=report.reason,
        artifact=report.artifact,
        speedup_p50=report.speedup_p50,
        size_ratio=report.size_ratio,
        fidelity_mean=report.fidelity.mean if report.fidelity else None,
        fidelity_min=report.fidelity.min if report.fidelity else None,
        accuracy_delta=delta,
        failed_gates=[g.name for g in report.gates if not g.passed],
        report_uri=str(report_path.resolve()),
    )
