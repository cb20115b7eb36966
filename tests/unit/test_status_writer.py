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


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_promoted_is_ready_only_once_the_baseline_serves() -> None:
    promoted = Decision(Phase.PROMOTED, "Initialized", "first candidate promoted")
    first = build_status(promoted, generation=2, previous={"phase": "Deploying", "observedGeneration": 2}, job=None, now=NOW)
    assert first["phase"] == "Promoted"
    assert (_ready(first)["status"], _ready(first)["reason"]) == ("False", "BaselineStarting")

    later = NOW + timedelta(seconds=20)
    serving = Decision(Phase.PROMOTED, "Done", "promoted; the baseline serves", serving=True)
    second = build_status(serving, generation=2, previous=first, job=None, now=later)
    assert (_ready(second)["status"], _ready(second)["lastTransitionTime"]) == ("True", "2026-11-23T12:00:20Z")
    others = {c["type"]: c for c in second["conditions"] if c["type"] != "Ready"}
    assert others == {c["type"]: c for c in first["conditions"] if c["type"] != "Ready"}, "only Ready follows the pods"
    assert "message" not in second, "the promotion's message is kept"

    again = build_status(serving, generation=2, previous={**first, **second}, job=None, now=later + timedelta(seconds=5))
    assert "conditions" not in again, "nothing to write while Ready stays"
