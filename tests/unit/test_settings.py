"""Operator settings from the environment and from `optiserve operator` flags; bad values name their source."""

from __future__ import annotations

import pytest

from optiserve.cli import _with_flags as with_flags
from optiserve.cli import build_parser
from optiserve.settings import Settings, SettingsError


def test_metrics_and_health_are_off_unless_asked_for() -> None:
    settings = Settings.from_env({})
    assert (settings.metrics_port, settings.health_port) == (None, None)
    assert settings.liveness_endpoint() is None


def test_ports_and_address_from_the_environment() -> None:
    env = {"OPTISERVE_METRICS_PORT": "8080", "OPTISERVE_HEALTH_PORT": "8081", "OPTISERVE_BIND_ADDRESS": "127.0.0.1"}
    settings = Settings.from_env(env)
    assert (settings.metrics_port, settings.health_port, settings.bind_address) == (8080, 8081, "127.0.0.1")
    assert settings.liveness_endpoint() == "http://127.0.0.1:8081/healthz"


def test_an_ipv6_bind_address_is_bracketed_in_the_liveness_url() -> None:
    assert Settings(health_port=8081, bind_address="::").liveness_endpoint() == "http://[::]:8081/healthz"


def test_port_zero_turns_a_server_off() -> None:
    assert Settings.from_env({"OPTISERVE_METRICS_PORT": "0"}).metrics_port is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OPTISERVE_METRICS_PORT": "http"}, "OPTISERVE_METRICS_PORT: expected a port number"),
        ({"OPTISERVE_HEALTH_PORT": "70000"}, "OPTISERVE_HEALTH_PORT: a port is 1-65535"),
        ({"OPTISERVE_METRICS_PORT": "8080", "OPTISERVE_HEALTH_PORT": "8080"}, "OPTISERVE_HEALTH_PORT: 8080 is already"),
    ],
)
def test_a_bad_port_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_flags_override_the_environment() -> None:
    env = Settings.from_env({"OPTISERVE_METRICS_PORT": "8080", "OPTISERVE_HEALTH_PORT": "8081"})
    args = build_parser().parse_args(["operator", "--metrics-port", "9100", "--health-port", "0", "--bind-address", "127.0.0.1"])
    settings = with_flags(env, args)
    assert (settings.metrics_port, settings.health_port, settings.bind_address) == (9100, None, "127.0.0.1")


def test_a_bad_port_flag_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--health-port", "-1"])
    assert "argument --health-port: a port is 1-65535" in capsys.readouterr().err


def test_job_and_triton_resources_come_from_json_and_bad_ones_name_the_variable() -> None:
    small = '{"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": 1, "memory": "2Gi"}}'
    settings = Settings.from_env({"OPTISERVE_JOB_RESOURCES": small, "OPTISERVE_TRITON_RESOURCES": small})
    assert settings.job_settings().resources.manifest()["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert settings.serving_settings().resources.manifest()["requests"] == {"cpu": "250m", "memory": "512Mi"}
    for bad in (
        '{"requests": {"cpu": "1"}}',
        "not json",
        '{"requests": {"cpu": "lots", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}',
    ):
        with pytest.raises(SettingsError, match="OPTISERVE_TRITON_RESOURCES"):
            Settings.from_env({"OPTISERVE_TRITON_RESOURCES": bad})


def test_training_resources_and_the_deadline_ceiling_come_from_the_environment() -> None:
    large = '{"requests": {"cpu": "8", "memory": "24Gi"}, "limits": {"cpu": "16", "memory": "48Gi"}}'
    settings = Settings.from_env({"OPTISERVE_JOB_TRAINING_RESOURCES": large, "OPTISERVE_JOB_MAX_DEADLINE_SECONDS": "14400"})
    job = settings.job_settings()
    assert job.training_resources.manifest()["requests"] == {"cpu": "8", "memory": "24Gi"}
    assert job.resources == Settings().job_settings().resources, "the plain Job keeps its own"
    assert job.max_deadline_seconds == 14400
    defaults = Settings.from_env({}).job_settings()
    assert (defaults.max_deadline_seconds, defaults.training_resources.manifest()["limits"]) == (
        86400,
        {"cpu": "4", "memory": "12Gi"},
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OPTISERVE_JOB_MAX_DEADLINE_SECONDS": "1800"}, "OPTISERVE_JOB_MAX_DEADLINE_SECONDS: at least 3600"),
        ({"OPTISERVE_JOB_MAX_DEADLINE_SECONDS": "a day"}, "OPTISERVE_JOB_MAX_DEADLINE_SECONDS: expected a whole number"),
        ({"OPTISERVE_JOB_TRAINING_RESOURCES": '{"limits": {}}'}, "OPTISERVE_JOB_TRAINING_RESOURCES: requests and limits"),
    ],
)
def test_a_bad_job_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
