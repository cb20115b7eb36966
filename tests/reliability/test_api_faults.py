"""Kubernetes API faults from the emulator: conflicts, throttling, server errors, a silent watch, a cut stream.

Each fault is injected into the operator's own calls (told apart by its token) while one model
goes from applied to Promoted with its candidate retired. The test checks that it converges to
the same end as without the fault, with one Job, and records how long the operator took to retry
the refused call (`FIGURE` lines with -s; docs/reliability.md quotes them). Faults on the operator's client
(`optiserve.kube`) come back as kopf temporary errors with the client's delay; faults on kopf's own
calls (its status-less patches, events, lists and watches) are retried by kopf.

The watch faults check what kopf's watching settings (`handlers.configure_kopf`) are for: a watch
that stays connected but delivers nothing is given up after kopf's inactivity timeout and opened
again, and a stream cut half-way through an event is opened again at once; in both cases the
model created meanwhile is picked up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import kopf
import pytest

from optiserve.handlers import configure_kopf
from optiserve.kube.client import JOBS
from tests.reliability.figures import report_figure
from tests.reliability.harness import MODEL, NAMESPACE, OPTIMIZED_MODELS, Life, emulated_life, first_manifest
from tests.support.fault_emulator import Call, Fault, FaultEmulator

Matcher = Callable[[Call], bool]


def operator_call(method: str, plural: str, subresource: str | None = None, name: str | None = None) -> Matcher:
    def matches(call: Call) -> bool:
        return (
            call.who.startswith("operator-")
            and call.method == method
            and call.plural == plural
            and call.subresource == subresource
            and (name is None or call.target == name)
            and call.action != "WATCH"
        )

    return matches


@dataclass(frozen=True)
class Case:
    label: str
    fault: Fault


CASES = [
    Case("409 on the Job create, nothing there", Fault(operator_call("POST", "jobs"), 409, times=2)),
    Case("409 on the status write", Fault(operator_call("PATCH", "optimizedmodels", "status"), 409, times=2)),
    Case("409 on kopf's finalizer and annotation patch", Fault(operator_call("PATCH", "optimizedmodels"), 409, times=2)),
    Case("429 Retry-After 2 on the Job read", Fault(operator_call("GET", "jobs", name=f"{MODEL}-optimize-g1"), 429, 1, 2.0)),
    Case("429 Retry-After 2 on kopf's list", Fault(operator_call("GET", "optimizedmodels"), 429, 1, 2.0)),
    Case("500 on three Deployment creates", Fault(operator_call("POST", "deployments"), 500, times=3)),
    Case("500 on the fresh read of the model", Fault(operator_call("GET", "optimizedmodels", name=MODEL), 500, times=3)),
    Case("500 after the Job was created (answer lost)", Fault(operator_call("POST", "jobs"), 500, times=1, commit=True)),
    Case("503 on kopf's event posts", Fault(operator_call("POST", "events"), 503, times=3)),
]


def made_again(emulator: FaultEmulator, fault: Fault) -> list[Call]:
    """Calls of the same verb and target as the first refused one, made after it and not refused."""
    first = fault.answered[0]
    return [
        c
        for c in emulator.calls[first.seq + 1 :]
        if c.who == first.who
        and (c.method, c.plural, c.subresource, c.target) == (first.method, first.plural, first.subresource, first.target)
        and c not in fault.answered
    ]


def retry_gap_s(emulator: FaultEmulator, fault: Fault) -> float | None:
    """From the first refused call to the next call of the same verb and target that was not refused
    by the fault; None after a lost answer (the next reconcile observes what was written instead)."""
    if fault.commit:
        return None
    later = made_again(emulator, fault)
    assert later, f"never retried: {fault.answered[0]}"
    return later[0].at - fault.answered[0].at


def await_retry(life: Life, emulator: FaultEmulator, fault: Fault) -> None:
    """Wait until the refused call is made again.

    A real 409 answers a write that lost a race with another writer, and that writer's change
    reaches the operator as a watch event, on which kopf makes its finalizer patch again. An
    injected 409 has no writer behind it: when the model settled before kopf's next event, the
    change that would have come is made here (a label, as another controller might add).
    """
    if fault.commit:
        return
    if fault.status == 409 and not made_again(emulator, fault):
        life.kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"metadata": {"labels": {"example.com/touched": "true"}}})
    life.until(lambda: made_again(emulator, fault), "the refused call made again", timeout_s=30)


def promote_one(life: Life) -> float:
    started = time.monotonic()
    life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
    life.until(lambda: life.settled(1), "generation 1 promoted and the candidate retired", timeout_s=120)
    return time.monotonic() - started


def job_creates(emulator: FaultEmulator, fault: Fault | None = None) -> list[str]:
    """The Job creates that took effect: answered 2xx, or committed with their answer lost."""
    lost = fault.answered if fault is not None and fault.commit else []
    return [
        c.created_name or ""
        for c in emulator.calls
        if c.method == "POST" and c.plural == "jobs" and ((c.status or 500) < 300 or c in lost)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_the_operator_converges_through_api_faults(case: Case) -> None:
    with emulated_life() as (life, emulator):
        fault = emulator.inject(case.fault)
        took = promote_one(life)
        status = life.status()
        events = life.until(lambda: [m for m in life.events() if "-> Promoted" in m], "the Promoted event")
        await_retry(life, emulator, fault)

    assert len(fault.answered) == fault.times, f"the fault was not hit as often as injected: {fault.answered}"
    assert status["phase"] == "Promoted" and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["artifact"]["sha256"] == "ab" * 32
    assert job_creates(emulator, fault) == [f"{MODEL}-optimize-g1"], "one Job, created once (adopted after a lost answer)"
    assert emulator.violations == []
    assert len(events) == 1, events
    gap = retry_gap_s(emulator, fault)
    if fault.retry_after_s is not None:
        assert gap is not None and gap >= fault.retry_after_s, f"retried after {gap} s, before the server's Retry-After"
    report_figure("7-api", fault=case.label, retried_after_s=gap and round(gap, 2), promoted_after_s=round(took, 1))


def watches_of_models(emulator: FaultEmulator, who: str) -> list[Call]:
    return [c for c in emulator.calls_by(who) if c.action == "WATCH" and c.plural == "optimizedmodels"]


def kopf_watch_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    return settings


@pytest.mark.slow
def test_a_silent_watch_is_given_up_and_a_model_created_meanwhile_is_picked_up() -> None:
    watching = kopf_watch_settings().watching
    with emulated_life() as (life, emulator):
        who = life.operators.current.who if life.operators.current else ""
        life.until(lambda: watches_of_models(emulator, who), "the operator watching OptimizedModels")
        silent_since = emulator.silence_watches("optimizedmodels")
        life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
        created = time.monotonic()
        bound = watching.inactivity_timeout + 30
        job = life.until(lambda: life.kube.get(JOBS, NAMESPACE, f"{MODEL}-optimize-g1"), "the Job of the model", timeout_s=bound)
        noticed = time.monotonic() - created
        rewatch = [c for c in watches_of_models(emulator, who) if c.at > silent_since]
        life.until(lambda: life.settled(1), "the model promoted once its watch is back")

    assert rewatch, "the operator never opened its watch again"
    reopened_s = rewatch[0].at - silent_since
    assert rewatch[0].params.get("resourceVersion"), "it resumes from the last resourceVersion it saw"
    assert job["metadata"]["labels"]["optiserve.io/model"] == MODEL
    report_figure(
        "7-api",
        fault="silent watch",
        watch_reopened_after_s=round(reopened_s, 1),
        new_model_noticed_after_s=round(noticed, 1),
        inactivity_timeout_s=watching.inactivity_timeout,
        server_timeout_s=watching.server_timeout,
        client_timeout_s=watching.client_timeout,
    )


@pytest.mark.slow
def test_a_spec_change_during_a_silent_watch_is_read_fresh_by_the_timer() -> None:
    """The timer's reconcile reads the model from the API, so an existing model's change does not
    wait for the watch to come back."""
    with emulated_life() as (life, emulator):
        life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())
        life.until(lambda: life.settled(1), "generation 1 promoted")
        emulator.silence_watches("optimizedmodels")
        changed = time.monotonic()
        life.kube.patch(OPTIMIZED_MODELS, NAMESPACE, MODEL, {"spec": {"validation": {"maxDegradation": 0.02}}})
        life.until(lambda: life.kube.get(JOBS, NAMESPACE, f"{MODEL}-optimize-g2"), "the g2 Job", timeout_s=60)
        noticed = time.monotonic() - changed
        status = life.until(lambda: life.status() if life.status().get("observedGeneration") == 2 else None, "g2 observed")
    assert status["pipelineGeneration"] == 2
    report_figure("7-api", fault="spec change during a silent watch", noticed_after_s=round(noticed, 2))


@pytest.mark.slow
def test_a_stream_cut_midway_is_reopened_and_nothing_is_missed() -> None:
    with emulated_life() as (life, emulator):
        who = life.operators.current.who if life.operators.current else ""
        life.until(lambda: watches_of_models(emulator, who), "the operator watching OptimizedModels")
        opened = len(watches_of_models(emulator, who))
        emulator.cut_watches("optimizedmodels")
        cut_at = time.monotonic()
        life.kube.create(OPTIMIZED_MODELS, NAMESPACE, first_manifest())  # its ADDED event is the one cut in half
        life.until(lambda: len(watches_of_models(emulator, who)) > opened, "the watch opened again")
        reopened_s = watches_of_models(emulator, who)[opened].at - cut_at
        status = life.until(lambda: life.settled(1), "the model promoted")

    assert emulator.cut["optimizedmodels"] == 0, "the stream was cut"
    assert status["phase"] == "Promoted"
    assert job_creates(emulator) == [f"{MODEL}-optimize-g1"]
    report_figure("7-api", fault="stream cut mid-event", watch_reopened_after_s=round(reopened_s, 2))
