"""The digits example as the data-plane fault tests run it.

The real optimization job runs once per session into a job cache (as `optiserve run --job-cache`
keeps it); the canary is driven by the local pipeline's own pieces (`start_canary_servers`,
`optiserve.local.run.canary_loop`, the same rollout engine (`optiserve.rollout_engine`) and
`providers.measure` as the operator) against real tritonservers, nginx, the comparator and
Prometheus, with 5 s intervals. A fault is injected from the loop's live-view callback, which
runs after every tick, so the test knows on the run's own clock when it struck.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from optiserve.api.job import JobRequest, job_request_from_manifest
from optiserve.api.spec import OptimizedModel
from optiserve.comparator.compare import agreement_threshold
from optiserve.domain.canary import CanaryPlan
from optiserve.golden import GOLDEN_FILE, load_golden
from optiserve.local.canary_servers import CanaryServers, ComparatorSettings, ServingOptions, start_canary_servers
from optiserve.local.job_cache import JobOutputs, optimization_outputs
from optiserve.local.load import BackgroundLoad, LoadConfig, LoadResult
from optiserve.local.run import CanaryRun, Timeline, canary_loop, rollout_plan
from optiserve.local.run_overrides import local_manifest
from optiserve.rollout_engine import RolloutEngine
from tests.support.models import FAST_BENCHMARK, NO_SPEED_GATE, REPO_ROOT

DIGITS = REPO_ROOT / "examples/digits"
MODEL = "digits"
QUICK_ANALYSIS = {"interval": "5s", "warmup": "5s", "consecutiveErrorLimit": 2}
"""Short intervals; three Error intervals in a row roll back (the limit is exceeded, as in Argo)."""
MAX_CANARY_S = 240.0
Display = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class DigitsWorkspace:
    """A directory that looks like examples/digits (its model code and data linked in) for
    manifest copies; the job request's base directory, so every copy shares one job cache."""

    root: Path
    cache: Path

    def manifest(self, name: str, *, analysis: dict[str, Any] | None = None, validation: dict[str, Any] | None = None) -> Path:
        """A copy of the example with a short benchmark, the quick analysis, and the given overrides."""
        document = yaml.safe_load((DIGITS / "optimizedmodel.yaml").read_text())
        spec = document["spec"]
        spec["benchmark"] = FAST_BENCHMARK | {"batchSizes": spec["benchmark"]["batchSizes"], "profile": False}
        spec["rollout"]["analysis"].update(QUICK_ANALYSIS | (analysis or {}))
        spec["validation"].update(NO_SPEED_GATE | (validation or {}))
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def request(self, manifest: Path) -> JobRequest:
        """The job request `optiserve run` makes from this manifest (same base directory)."""
        return job_request_from_manifest(local_manifest(manifest), base_dir=str(manifest.resolve().parent))


def new_digits_workspace(root: Path) -> DigitsWorkspace:
    for name in ("artifacts", "model.py"):
        if not (DIGITS / name).exists():
            raise FileNotFoundError(f"{DIGITS / name} is missing: run examples/digits/prepare.py (make setup does)")
        (root / name).symlink_to(DIGITS / name)
    return DigitsWorkspace(root=root, cache=root / "job-cache")


def digits_outputs_in(workspace: DigitsWorkspace) -> JobOutputs:
    manifest = workspace.manifest(MODEL)
    outputs = optimization_outputs(workspace.request(manifest), workspace.root / "unused", workspace.cache, lambda _: None)
    if not outputs.result.passed:
        raise AssertionError(f"the digits example no longer passes its gates: {outputs.result.reason}")
    return outputs


def comparator_settings(manifest: OptimizedModel) -> ComparatorSettings:
    """What `optiserve run` gives the comparator for this manifest."""
    spec = manifest.spec
    return ComparatorSettings(task=spec.model.task.value, threshold=agreement_threshold(spec.validation))


@contextmanager
def digits_servers(outputs: JobOutputs, manifest: OptimizedModel, log_dir: Path) -> Iterator[CanaryServers]:
    """Baseline and candidate tritonservers, nginx at weight 0, the comparator and Prometheus."""
    with start_canary_servers(
        MODEL, outputs.baseline_dir, outputs.candidate_dir, log_dir, lambda _: None, ServingOptions(comparator_settings(manifest))
    ) as servers:
        yield servers


@dataclass(frozen=True)
class CanaryResult:
    run: CanaryRun
    timeline: Timeline
    load: LoadResult

    def intervals_between(self, start_s: float, end_s: float = float("inf")) -> list[Any]:
        """The intervals judged after ``start_s`` and up to ``end_s`` (run clock)."""
        return [interval for interval in self.run.intervals if start_s < interval.at_s <= end_s]

    def weights_after(self, start_s: float) -> list[int]:
        return [weight for at_s, weight in self.timeline.weights if at_s > start_s]

    def failed_requests(self) -> int:
        return sum(not record.ok for record in self.load.records)


def run_canary(servers: CanaryServers, plan: CanaryPlan, timeline: Timeline, display: Display) -> CanaryResult:
    """One canary through the local pipeline's loop, under a bounded load (20 requests/s)."""
    samples = load_golden(servers.candidate_dir / GOLDEN_FILE)
    config = LoadConfig(concurrency=4, rate_per_s=20.0, max_duration_s=MAX_CANARY_S + 60)
    with BackgroundLoad(servers.load_target, samples, config) as load:
        try:
            run = canary_loop(RolloutEngine(plan, servers.metrics), servers, timeline, load, display, MAX_CANARY_S)
        finally:
            result = load.stop()
    return CanaryResult(run=run, timeline=timeline, load=result)


def plan_of(manifest: Path) -> tuple[OptimizedModel, CanaryPlan]:
    parsed = local_manifest(manifest)
    return parsed, rollout_plan(parsed)
