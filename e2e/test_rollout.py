"""End to end on real pods: a new candidate promoted through the Gateway, and a worse model rolled back.

Both start from the digits example applied and Promoted (`e2e.digits`), then roll out a second
candidate while clients send requests through the test's Gateway (Traefik). The regression is a real
one a team could commit: the same network with untrained weights. Its offline gates pass (they
compare the optimized model with the model it was given, which is just as bad), so only the canary
can catch it: the comparator's accuracy against the golden set's labels fails, and the operator
rolls back while the baseline keeps serving the promoted artifact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.cluster import Cluster
from e2e.digits import CANARY_S, OPTIMIZE_AND_SERVE_S, SERVE_S, export_onnx, given_digits_promoted, without_quantization
from e2e.steps import Scenario

# A scenario optimizes, serves and rolls out twice on a 2-core node: far past the unit tiers' timeout.
pytestmark = pytest.mark.timeout(3600)


def test_applied_example_is_promoted_through_the_gateway(scenario: Scenario, cluster: Cluster, tmp_path: Path) -> None:
    # Given the digits example applied and serving
    manifest = given_digits_promoted(scenario, cluster.images.triton, tmp_path)
    first = scenario.model("digits")

    # When a new candidate is rolled out while clients send requests through the Gateway
    with scenario.when_clients_send_through_the_gateway("digits") as (load, meter):
        scenario.when_spec_changed("digits", without_quantization(manifest))
        promoted = scenario.then_phase("digits", "Promoted", within_s=OPTIMIZE_AND_SERVE_S + CANARY_S)

    # Then it is promoted, the Gateway split the requests as status said, and no request failed
    scenario.then_condition("digits", "Ready", "True", within_s=SERVE_S)
    scenario.then_serving("digits-baseline")
    assert promoted["status"]["artifact"]["sha256"] != first["status"]["artifact"]["sha256"]
    assert promoted["status"]["optimization"]["fidelityMean"] >= 0.995  # the Job's offline proof, reported in status
    scenario.then_split_follows_the_weights(meter.split(), [10, 50, 100])
    scenario.then_no_request_failed(load.result)


def test_a_worse_model_is_rolled_back_with_no_failed_request(scenario: Scenario, cluster: Cluster, tmp_path: Path) -> None:
    # Given the digits example promoted, and an untrained network of the same shape on the volume
    untrained = {"artifacts/untrained.onnx": export_onnx(tmp_path / "untrained.onnx", trained=False)}
    manifest = given_digits_promoted(scenario, cluster.images.triton, tmp_path, untrained)
    promoted = scenario.model("digits")

    # When the model is changed to the untrained one while clients send requests through the Gateway
    with scenario.when_clients_send_through_the_gateway("digits") as (load, _meter):
        # Unquantized, as the first candidate was: INT8 moves an untrained network's outputs past the
        # fidelity gate (measured 0.952 against 0.995), and the point is a model only the canary can catch.
        worse = {"model": {"uri": "artifacts/untrained.onnx"}, **without_quantization(manifest)}
        scenario.when_spec_changed("digits", worse)
        rolled_back = scenario.then_phase("digits", "RolledBack", within_s=OPTIMIZE_AND_SERVE_S + CANARY_S)
        time.sleep(10)  # requests keep coming while the candidate is retired

    # Then the canary caught it, the baseline keeps serving the promoted artifact, and no request failed
    scenario.then_condition("digits", "Degraded", "True")
    scenario.then_serving("digits-baseline")
    assert rolled_back["status"]["artifact"]["sha256"] == promoted["status"]["artifact"]["sha256"]
    assert rolled_back["status"]["optimization"]  # the Job ran and passed its offline gates: only the canary caught it
    scenario.then_no_request_failed(load.result)
