"""The Python-backend model's `intra_op_spin_us` parameter as onnxruntime session config entries."""

from __future__ import annotations

import pytest

from optiserve_jobs import triton_python_model as tpm


def test_default_sleeps_at_once() -> None:
    assert tpm.spin_config_entries(str(tpm.DEFAULT_SPIN_US)) == {"session.intra_op.allow_spinning": "0"}


def test_a_bounded_spin_and_onnxruntimes_own() -> None:
    assert tpm.spin_config_entries("200") == {
        "session.intra_op.allow_spinning": "1",
        "session.intra_op.spin_duration_us": "200",
    }
    assert tpm.spin_config_entries("-1") == {}


@pytest.mark.parametrize(("value", "message"), [("fast", "expected microseconds"), ("-2", "below -1"), ("1.5", "expected")])
def test_bad_spin_names_the_parameter(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"parameters.intra_op_spin_us: .*{message}"):
        tpm.spin_config_entries(value)


def test_onnxruntime_accepts_the_entries() -> None:
    ort = pytest.importorskip("onnxruntime")
    for value in ("0", "-1", "200"):
        options = ort.SessionOptions()
        for key, entry in tpm.spin_config_entries(value).items():
            options.add_session_config_entry(key, entry)
            assert options.get_session_config_entry(key) == entry
