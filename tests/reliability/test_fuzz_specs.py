"""Fuzzing: specs generated from the CRD's schema, and mutated, through `optiserve validate`'s code path
and through the reconciler against the emulated API.

Nothing may crash. Every spec the API server would refuse (the schema with strict field
validation, or a CEL rule: `spec_fuzzing.api_server_refuses`) must be refused by `optiserve
validate`, and every refusal, of those or of specs that only the models refuse, must name a field
path that exists in the input or in the CRD's schema. The reconciler turns a spec the models refuse
into phase Failed, reason InvalidSpec, with the same field named, and a spec they accept into a Job.
The counts are reported as a `FIGURE` line.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optiserve.api.manifest import ManifestError, parse_manifest
from optiserve.kube.client import KubeClient
from optiserve.reconciler import reconcile
from optiserve.settings import Settings
from tests.reliability.figures import report_figure
from tests.reliability.harness import DISCOVERY, NAMESPACE
from tests.reliability.spec_fuzzing import (
    api_server_refuses,
    manifest,
    mutated_specs,
    names_a_field,
    specs,
    validate_errors,
)
from tests.support.kube_emulator import KubeEmulator, serve_emulator

pytestmark = pytest.mark.slow

GENERATED = 600
MUTATED = 700
RECONCILED = 150
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
SPEC_LIMITS_ONLY = Settings(job_max_deadline_seconds=7 * 86400)
"""An operator whose deadline ceiling is the spec's own bound: the fuzz is about what the models refuse."""


def check_validate(kind: str, spec: Any, tally: Counter[str]) -> None:
    document = manifest(spec)
    errors = validate_errors(document)
    refuses = api_server_refuses(spec)
    tally["specs"] += 1
    tally[f"{kind}: api server refuses" if refuses else f"{kind}: api server accepts"] += 1
    if refuses:
        assert errors, f"optiserve validate accepted a spec the API server refuses ({kind}): {spec!r}"
    elif errors:
        tally["refused by the models only"] += 1
    unnamed = [error for error in errors if not names_a_field(error, document)]
    assert not unnamed, f"errors that name no field of the input or the schema: {unnamed} for {spec!r}"
    tally["refused, naming a field"] += bool(errors)


def test_validate_never_crashes_and_names_the_field_of_every_refusal() -> None:
    tally: Counter[str] = Counter()

    @settings(FUZZ, max_examples=GENERATED)
    @given(specs())
    def generated(spec: Any) -> None:
        check_validate("generated", spec, tally)

    @settings(FUZZ, max_examples=MUTATED)
    @given(mutated_specs())
    def mutated(case: tuple[str, Any]) -> None:
        kind, spec = case
        tally[f"mutation {kind}"] += 1
        check_validate("mutated", spec, tally)

    generated()
    mutated()
    refused = tally["refused, naming a field"]
    assert tally["specs"] >= 1_000 and refused > 0
    assert tally["mutated: api server accepts"] < tally["mutated: api server refuses"], "the mutations break the spec"
    report_figure("9-fuzz", **dict(sorted(tally.items())), crashes=0)


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeClient]:
    with serve_emulator(DISCOVERY, KubeEmulator) as running:
        client = KubeClient.for_host(running.url)
        yield client
        client.close()


def _body(name: str, spec: Any) -> dict[str, Any]:
    document = manifest(spec)
    document["metadata"] = {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1}
    return document


def test_the_reconciler_never_crashes_and_fails_invalid_specs_naming_the_field(kube: KubeClient) -> None:
    names = (f"fuzz-{i}" for i in itertools.count())
    tally: Counter[str] = Counter()

    @settings(FUZZ, max_examples=RECONCILED)
    @given(st.one_of(specs(), mutated_specs().map(lambda case: case[1])))
    def reconciled(spec: Any) -> None:
        name = next(names)
        body = _body(name, spec)
        try:
            parse_manifest(body)
            problems: list[str] = []
        except ManifestError as e:
            problems = e.errors
        status = reconcile(name, NAMESPACE, body, SPEC_LIMITS_ONLY, kube=kube).status
        conditions = {c["type"]: c for c in status["conditions"]}
        if problems:
            tally["failed as InvalidSpec"] += 1
            assert status["phase"] == "Failed" and conditions["Ready"]["reason"] == "InvalidSpec", status
            assert problems[0] in status["message"], (problems, status["message"])
        else:
            tally["optimizing"] += 1
            assert status["phase"] == "Optimizing", status

    reconciled()
    assert tally["failed as InvalidSpec"] > 0 and tally["optimizing"] > 0, tally
    report_figure("9-fuzz-reconciler", **dict(tally), crashes=0)
