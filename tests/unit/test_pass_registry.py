"""Every pass the spec declares has exactly one registered implementation, found by its configuration."""

from __future__ import annotations

import pydantic
import pytest

from optiserve.api.manifest import format_validation_error
from optiserve.api.spec import PASS_CONFIGS, PASS_TYPES, OptimizationSpec, pass_type
from optiserve_jobs.passes import REGISTRY, build_pass


def test_every_pass_of_the_spec_is_registered_and_nothing_else() -> None:
    assert set(REGISTRY) == set(PASS_CONFIGS)
    assert PASS_TYPES == ("prune", "distill", "export", "graph", "fp16", "quantize", "tensorrt", "weightonly")


REQUIRED_FIELDS = {
    "prune": {"heads": 4, "importance": "magnitude"},
    "distill": {"datasetUri": "train.txt", "maxTrainingSeconds": 60},
}
"""The fields a pass cannot do without (a prune target, a distill corpus and budget)."""


def test_each_configuration_builds_its_own_implementation() -> None:
    for config_model, implementation in REGISTRY.items():
        tag = pass_type(config_model)
        config = OptimizationSpec.model_validate({"passes": [{"type": tag, **REQUIRED_FIELDS.get(tag, {})}]}).passes[0]
        assert type(config) is config_model
        built = build_pass(config)
        assert type(built) is implementation
        assert built.name == config.type


def test_a_pass_error_names_the_field_without_the_pass_type() -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        OptimizationSpec.model_validate({"passes": [{"type": "fp16", "keepIoTypes": "maybe"}]})
    (line,) = format_validation_error(refused.value)
    assert line.startswith("passes[0].keepIoTypes: "), line
