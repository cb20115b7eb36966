"""End to end on kind: the digits example from `kubectl apply` to Promoted, and a worse model rolled back.

The digits example is the small one: its optimization Job takes seconds on CPU. The regression is a
real one a team could commit: the same network with untrained weights. Its offline gates pass (they
compare the optimized model with the model it was given, which is just as bad), so only the canary
can catch it: the comparator's accuracy against the golden set's labels fails, and the operator
rolls back while the baseline keeps serving the promoted artifact.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

from e2e.kind import REPO_ROOT
from e2e.steps import Scenario

EXAMPLE = REPO_ROOT / "examples/digits/optimizedmodel.yaml"
OPTIMIZE_AND_SERVE_S = 1800.0
CANARY_S = 1800.0


def digits_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    # Traffic by replica ratio needs no Gateway implementation in the cluster; the comparator's
    # metrics need no client traffic either (it probes both variants with the golden set).
    manifest["spec"]["rollout"]["traffic"] = {"provider": "replicas"}
    manifest["spec"]["rollout"]["analysis"]["metrics"] = [
        {"name": "agreement", "min": 0.97},
        {"name": "accuracy", "min": 0.90},
    ]
    return manifest


def untrained_weights(path: Path) -> Path:
    """The digits network with its initial random weights: a model that serves, and is wrong."""
    import torch  # the developer's environment has it (the optimizer extra); only this test needs it

    spec = importlib.util.spec_from_file_location("digits_model", REPO_ROOT / "examples/digits/model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(1)
    torch.save(module.DigitsCNN().state_dict(), path)
    return path


def test_applied_example_is_promoted(scenario: Scenario) -> None:
    scenario.given_model_files("digits")
    scenario.when_applied(digits_manifest())
    model = scenario.then_phase("digits", "Promoted", within_s=OPTIMIZE_AND_SERVE_S)
    scenario.then_condition("digits", "Ready", "True")
    scenario.then_serving("digits-baseline")
    assert model["status"]["artifact"]["sha256"]
    assert model["status"]["optimization"]["speedup"] > 0


def test_a_worse_model_is_rolled_back(scenario: Scenario, tmp_path: Path) -> None:
    scenario.given_model_files("digits", {"artifacts/untrained.pt": untrained_weights(tmp_path / "untrained.pt")})
    scenario.when_applied(digits_manifest())
    promoted = scenario.then_phase("digits", "Promoted", within_s=OPTIMIZE_AND_SERVE_S)

    scenario.when_spec_changed("digits", {"model": {"uri": "artifacts/untrained.pt"}})
    rolled_back = scenario.then_phase("digits", "RolledBack", within_s=OPTIMIZE_AND_SERVE_S + CANARY_S)

    scenario.then_condition("digits", "Degraded", "True")
    scenario.then_serving("digits-baseline")
    assert rolled_back["status"]["artifact"]["sha256"] == promoted["status"]["artifact"]["sha256"]
    assert rolled_back["status"]["optimization"]  # the Job ran and passed its offline gates: only the canary caught it
