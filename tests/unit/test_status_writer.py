"""The status writer's `phaseSince`: set when the phase (or the generation) changes, kept otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from optiserve.api.status import OptimizedModelStatus, Phase
from optiserve.domain.lifecycle import Decision, JobObservation, JobState
from optiserve.status_writer import build_status

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EARLIER = "2026-11-23T11:00:00Z"
RUNNING = JobObservation(generation=2, state=JobState.RUNNING)


def status_for(phase: Phase, previous: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    decision = Decision(phase, "Reason", "message")
    return build_status(decision, generation=generation, previous=previous, job=RUNNING, now=NOW)


def test_a_new_phase_starts_now() -> None:
    status = status_for(Phase.OPTIMIZING, {"phase": "Pending", "phaseSince": EARLIER, "observedGeneration": 2})
    assert status["phaseSince"] == "2026-11-23T12:00:00Z"


def test_the_same_phase_keeps_its_start() -> None:
    status = status_for(Phase.OPTIMIZING, {"phase": "Optimizing", "phaseSince": EARLIER, "observedGeneration": 2})
    assert status["phaseSince"] == EARLIER


def test_a_first_status_gets_a_start() -> None:
    assert status_for(Phase.OPTIMIZING, {})["phaseSince"] == "2026-11-23T12:00:00Z"


def test_a_spec_change_restarts_the_phase_clock_even_in_the_same_phase() -> None:
    previous = {"phase": "Optimizing", "phaseSince": EARLIER, "observedGeneration": 1}
    assert status_for(Phase.OPTIMIZING, previous, generation=2)["phaseSince"] == "2026-11-23T12:00:00Z"


def test_a_reconfirmed_terminal_phase_keeps_its_start() -> None:
    previous = {"phase": "Failed", "phaseSince": EARLIER, "observedGeneration": 2, "message": "gone"}
    status = status_for(Phase.FAILED, previous)
    assert status == {"phase": "Failed", "observedGeneration": 2, "pipelineGeneration": 2, "phaseSince": EARLIER}


def test_phase_since_is_part_of_the_status_schema() -> None:
    later = (NOW + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    parsed = OptimizedModelStatus.model_validate({"phase": "Deploying", "phaseSince": later})
    assert parsed.phase_since == later
