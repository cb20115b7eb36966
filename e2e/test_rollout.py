"""End to end on real pods: the digits example from `kubectl apply` to Promoted, and a worse model rolled back.

The digits example is the small one: its optimization Job takes seconds on CPU. The suite gives it as
ONNX (exported here from the trained network), so the Job runs in the optimizer image without torch,
and serves it on the cluster's Triton (the CPU image, Python backend, on the node cluster). The regression is a
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

from e2e.cluster import REPO_ROOT, Cluster
from e2e.steps import Scenario

EXAMPLE = REPO_ROOT / "examples/digits/optimizedmodel.yaml"
OPTIMIZE_AND_SERVE_S = 1800.0
CANARY_S = 1800.0


ONNX_MODEL = "artifacts/digits_cnn.onnx"


def digits_manifest(triton_image: str = "ghcr.io/optiserve/tritonserver-cpu:2.51-e2e") -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    model = manifest["spec"]["model"]
    model.update({"uri": ONNX_MODEL, "format": "onnx"})
    del model["entrypoint"]
    manifest["spec"]["optimization"]["passes"] = [p for p in manifest["spec"]["optimization"]["passes"] if p["type"] != "export"]
    triton = manifest["spec"]["serving"]["triton"]
    triton.update({"image": triton_image, "backend": "python" if "cpu" in triton_image else "onnxruntime"})
    # Traffic by replica ratio needs no Gateway implementation in the cluster; the comparator's
    # metrics need no client traffic either (it probes both variants with the golden set).
    manifest["spec"]["rollout"]["traffic"] = {"provider": "replicas"}
    manifest["spec"]["rollout"]["analysis"]["metrics"] = [
        {"name": "agreement", "min": 0.97},
        {"name": "accuracy", "min": 0.90},
    ]
    return manifest


def export_onnx(path: Path, trained: bool = True) -> Path:
    """The digits network as ONNX: with its trained weights, or its initial random ones (it serves, and is wrong)."""
    import torch  # the developer's environment has it (the optimizer extra); the cluster's images need none

    spec = importlib.util.spec_from_file_location("digits_model", REPO_ROOT / "examples/digits/model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(1)
    network = module.build(str(REPO_ROOT / "examples/digits/artifacts/digits_cnn.pt") if trained else None)
    torch.onnx.export(
        network,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def test_applied_example_is_promoted(scenario: Scenario, cluster: Cluster, tmp_path: Path) -> None:
    scenario.given_model_files("digits", {ONNX_MODEL: export_onnx(tmp_path / "digits_cnn.onnx")})
    scenario.when_applied(digits_manifest(cluster.images.triton))
    model = scenario.then_phase("digits", "Promoted", within_s=OPTIMIZE_AND_SERVE_S)
    scenario.then_condition("digits", "Ready", "True")
    scenario.then_serving("digits-baseline")
    assert model["status"]["artifact"]["sha256"]
    assert model["status"]["optimization"]["speedup"] > 0


def test_a_worse_model_is_rolled_back(scenario: Scenario, cluster: Cluster, tmp_path: Path) -> None:
    untrained = export_onnx(tmp_path / "untrained.onnx", trained=False)
    scenario.given_model_files(
        "digits", {ONNX_MODEL: export_onnx(tmp_path / "digits_cnn.onnx"), "artifacts/untrained.onnx": untrained}
    )
    scenario.when_applied(digits_manifest(cluster.images.triton))
    promoted = scenario.then_phase("digits", "Promoted", within_s=OPTIMIZE_AND_SERVE_S)

    scenario.when_spec_changed("digits", {"model": {"uri": "artifacts/untrained.onnx"}})
    rolled_back = scenario.then_phase("digits", "RolledBack", within_s=OPTIMIZE_AND_SERVE_S + CANARY_S)

    scenario.then_condition("digits", "Degraded", "True")
    scenario.then_serving("digits-baseline")
    assert rolled_back["status"]["artifact"]["sha256"] == promoted["status"]["artifact"]["sha256"]
    assert rolled_back["status"]["optimization"]  # the Job ran and passed its offline gates: only the canary caught it
