"""The running pass as the operator reads it from the optimization Job's log, and what the status and
the decision make of it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from optiserve.api.job import RunningPass, pass_line, running_pass
from optiserve.api.status import OptimizedModelStatus, Phase
from optiserve.domain.lifecycle import Decision, JobObservation, JobState, Observed, decide
from optiserve.merge_patch import apply_merge_patch, compose_merge_patches
from optiserve.status_writer import build_status, wanted_conditions
from tests.support.job_results import PASSED

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LOG = """\
2026-12-04 02:37:39,101 INFO loading the source model
2026-12-04 02:37:41,512 INFO pass 1/4: prune
2026-12-04 02:37:52,007 INFO pass 2/4: distill
2026-12-04 02:38:30,440 INFO distill: step 200/4000, loss 0.412
Some weights of BertModel were not initialized from the model checkpoint
"""


def test_the_last_pass_line_is_the_running_pass() -> None:
    found = running_pass(LOG)
    assert found == RunningPass(2, 4, "distill")
    assert found is not None and found.label == "2/4 distill"


def test_the_line_the_job_writes_is_the_line_the_operator_reads() -> None:
    assert running_pass(f"2026-12-04 02:37:39,101 INFO {pass_line(3, 5, 'quantize')}\n") == RunningPass(3, 5, "quantize")
    assert running_pass(pass_line(1, 1, "export")) == RunningPass(1, 1, "export"), "no logging prefix needed"


@pytest.mark.parametrize(
    "log",
    [
        "",
        "2026-12-04 02:37:39,101 INFO loading the source model\n",
        "2026-12-04 INFO distill: epoch 1/3 done\n",
        "bypass 1/2: export\n",
        "pass 0/3: prune\n",
        "pass 4/3: prune\n",
        "pass 1/3: Prune\n",
        "pass 1/3: prune and more\n",
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}',
    ],
    ids=[
        "empty",
        "no pass yet",
        "training progress",
        "another word",
        "index 0",
        "past the total",
        "not a type",
        "trailing",
        "json",
    ],
)
def test_a_log_without_a_pass_line_says_nothing(log: str) -> None:
    assert running_pass(log) is None


def test_a_malformed_line_after_a_good_one_leaves_the_good_one() -> None:
    assert running_pass("pass 2/3: graph\npass 9/3: graph\n") == RunningPass(2, 3, "graph")


def _running(current_pass: str | None, generation: int = 1) -> JobObservation:
    return JobObservation(generation, JobState.RUNNING, current_pass=current_pass)


def _status(job: JobObservation, previous: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    decision = Decision(Phase.OPTIMIZING, "JobRunning", "running")
    return build_status(decision, generation=generation, previous=previous, job=job, now=NOW)


OPTIMIZING = {"phase": "Optimizing", "observedGeneration": 1, "pipelineGeneration": 1}


def test_the_status_names_the_running_pass() -> None:
    assert _status(_running("2/4 distill"), OPTIMIZING)["optimization"] == {"currentPass": "2/4 distill"}


def test_an_unknown_pass_leaves_the_status_as_it_is() -> None:
    previous = OPTIMIZING | {"optimization": {"currentPass": "2/4 distill"}}
    assert "optimization" not in _status(_running(None), previous), "a merge patch without the field keeps it"


def test_a_finished_job_replaces_the_pass_with_its_summary() -> None:
    previous = OPTIMIZING | {"optimization": {"currentPass": "4/4 quantize"}}
    finished = JobObservation(1, JobState.SUCCEEDED, result=PASSED)
    optimization = _status(finished, previous)["optimization"]
    assert optimization["currentPass"] is None and optimization["speedup"] == 2.5
    failed = JobObservation(1, JobState.FAILED, failure="DeadlineExceeded")
    assert _status(failed, previous)["optimization"] == {"currentPass": None}


def test_a_summary_without_a_pass_before_it_is_written_as_it_was() -> None:
    finished = JobObservation(1, JobState.SUCCEEDED, result=PASSED)
    assert "currentPass" not in _status(finished, OPTIMIZING)["optimization"]


def test_a_new_generation_drops_the_last_ones_pass() -> None:
    previous = OPTIMIZING | {"optimization": {"currentPass": "2/4 distill"}}
    assert _status(_running("1/2 export", generation=2), previous, generation=2)["optimization"] is None


def test_the_pass_is_part_of_the_status_schema() -> None:
    status = OptimizedModelStatus.model_validate(OPTIMIZING | {"optimization": {"currentPass": "2/4 distill"}})
    assert status.optimization is not None and status.optimization.current_pass == "2/4 distill"


def test_the_message_and_the_optimized_condition_name_the_pass() -> None:
    observed = Observed(generation=1, phase=Phase.OPTIMIZING, observed_generation=1, phase_since=None, promoted_sha256=None)
    with_pass = decide(replace(observed, job=_running("2/4 distill")), NOW)
    assert with_pass.message == "optimization job for generation 1 is running: pass 2/4 distill"
    assert decide(replace(observed, job=_running(None)), NOW).message == "optimization job for generation 1 is running"
    optimized = wanted_conditions(with_pass, _running("2/4 distill"))["Optimized"]
    assert (optimized.status, optimized.message) == ("Unknown", "the optimization job is running: pass 2/4 distill")


def test_the_passes_of_one_reconcile_compose_into_the_patch_they_applied_one_after_the_other() -> None:
    """A finished Job is read in one pass (the pass removed) and its summary written in the next:
    the one patch written must remove the pass too."""
    base = {"phase": "Optimizing", "optimization": {"currentPass": "3/3 quantize"}, "canary": {"weight": 10, "step": 1}}
    first = {"phase": "Validating", "optimization": {"speedup": 2.5, "currentPass": None}, "canary": {"weight": 50}}
    then = {"phase": "Deploying", "optimization": {"speedup": 2.5, "sizeRatio": 0.26}, "canary": None}
    composed = compose_merge_patches(first, then)
    assert apply_merge_patch(base, composed) == apply_merge_patch(apply_merge_patch(base, first), then)
    assert apply_merge_patch(base, composed) == {"phase": "Deploying", "optimization": {"speedup": 2.5, "sizeRatio": 0.26}}
