"""The comparator against real Triton servers and a real Prometheus, judged through PrometheusMetrics.

The digits example is optimized for real (its golden set comes from that job). One Triton serves
it as the baseline; a second serves the same repository (agreement must be about 1); a third
serves the same model with its logits perturbed by a fixed random bias (agreement must be clearly
lower). Each comparator is scraped by its own Prometheus, so `comparator_counts` reads exactly
one pair. A candidate that refuses connections, or never answers, must show up as candidate
errors and never as compared samples.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from optiserve.api.job import job_request_from_manifest
from optiserve.api.spec import OptimizedModel, TritonSpec
from optiserve.artifact import verify_artifact
from optiserve.golden import GOLDEN_FILE, load_golden
from optiserve.local.comparator import ComparatorArgs, ComparatorProcess
from optiserve.local.prometheus import PrometheusServer
from optiserve.local.triton import TritonInstall, TritonServer, free_port
from optiserve.providers.metrics import Counts
from optiserve.providers.prometheus import PrometheusMetrics, TritonSelector
from optiserve_jobs import repository
from optiserve_jobs.job import run_job
from tests.support.eventually import eventually
from tests.support.models import FAST_BENCHMARK, NO_SPEED_GATE, REPO_ROOT

pytestmark = pytest.mark.slow
DIGITS = REPO_ROOT / "examples/digits"
MODEL = "digits"
PERTURBATION_SCALE = 12.0
"""A bias of this scale on the logits flips about 40 % of the top-1 answers (measured offline: 0.6 agreement)."""
ENOUGH_SAMPLES = 64


@pytest.fixture(scope="module")
def digits_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example optimized by the real job (short benchmark, no speed gate)."""
    document = yaml.safe_load((DIGITS / "optimizedmodel.yaml").read_text())
    document["spec"]["benchmark"] = FAST_BENCHMARK | {"batchSizes": [1]}
    document["spec"]["validation"].update(NO_SPEED_GATE)
    request = job_request_from_manifest(OptimizedModel.model_validate(document), base_dir=str(DIGITS))
    out = tmp_path_factory.mktemp("digits")
    report, result = run_job(request, out)
    assert result.passed, report.reason
    verify_artifact(out)
    return out


def _perturbed_logits(source: Path, target: Path) -> Path:
    """The same graph with a fixed random bias added to its output."""
    model = onnx.load(str(source))
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{output}_unperturbed" if name == output else name for name in node.output]
    bias = np.random.default_rng(0).normal(size=(1, 10)) * PERTURBATION_SCALE
    model.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), "perturbation"))
    model.graph.node.append(helper.make_node("Add", [f"{output}_unperturbed", "perturbation"], [output], name="perturb"))
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def wrong_output(digits_output: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wrong")
    perturbed = _perturbed_logits(digits_output / "model_repository/digits/1/model.onnx", work / "perturbed.onnx")
    settings = repository.PublishSettings(MODEL, TritonSpec(), [1], 128, text_inputs=False)
    repository.publish(work, perturbed, settings)
    return work


@pytest.fixture(scope="module")
def tritons(digits_output: Path, wrong_output: Path, triton_install: TritonInstall) -> Iterator[dict[str, TritonServer]]:
    repositories = {
        "baseline": digits_output / "model_repository_python",
        "same": digits_output / "model_repository_python",
        "wrong": wrong_output / "model_repository_python",
    }
    with contextlib.ExitStack() as stack:
        servers = {}
        for role, path in repositories.items():
            servers[role] = stack.enter_context(TritonServer(path, install=triton_install))
            servers[role].wait_model_ready(MODEL)
        yield servers


def _comparator(baseline: TritonServer, candidate_url: str, golden: Path, **extra: object) -> ComparatorProcess:
    args = ComparatorArgs(
        baseline_url=f"http://{baseline.http_url}",
        candidate_url=candidate_url,
        model=MODEL,
        golden=golden,
        interval="500ms",
        sample_size=16,
        **extra,  # type: ignore[arg-type]
    )
    return ComparatorProcess(args)


def _enough(counts: Counts | None) -> bool:
    return counts is not None and counts.total >= ENOUGH_SAMPLES


@pytest.fixture(scope="module")
def judged(digits_output: Path, tritons: dict[str, TritonServer]) -> dict[str, dict[str, Counts]]:
    """Agreement and accuracy counts, read back through Prometheus, for the same and the wrong candidate."""
    golden = digits_output / GOLDEN_FILE
    results: dict[str, dict[str, Counts]] = {}
    with contextlib.ExitStack() as stack:
        readers = {}
        for role in ("same", "wrong"):
            comparator = stack.enter_context(_comparator(tritons["baseline"], f"http://{tritons[role].http_url}", golden))
            prometheus = stack.enter_context(PrometheusServer({"comparator": comparator.address}, scrape_interval_s=1.0))
            prometheus.wait_scraped()
            readers[role] = PrometheusMetrics(prometheus.url, TritonSelector(MODEL), scrape_interval_s=1.0)
        for role, metrics in readers.items():
            results[role] = {}
            for metric in ("agreement", "accuracy"):
                counts = eventually(
                    lambda m=metric, r=metrics: r.comparator_counts(m, 600),  # type: ignore[misc]
                    timeout_s=90.0,
                    interval_s=0.5,
                    description=f"{role}: {metric} counts compared and scraped",
                    satisfied=_enough,
                )
                assert counts is not None and _enough(counts), f"{role}: {metric} counts never reached {ENOUGH_SAMPLES}"
                results[role][metric] = counts
    return results


def _ratio(counts: Counts) -> float:
    return counts.hits / counts.total


def test_golden_set_feeds_the_served_model(digits_output: Path, tritons: dict[str, TritonServer]) -> None:
    from tests.component.triton_helpers import infer_http

    samples = load_golden(digits_output / GOLDEN_FILE)
    assert len(samples) == 200 and all(s.label is not None for s in samples)
    logits = [infer_http(tritons["baseline"].http_url, MODEL, dict(s.inputs), "logits") for s in samples[:32]]
    assert all(out.shape == (1, 10) for out in logits)
    assert np.mean([out.argmax() == s.label for out, s in zip(logits, samples, strict=False)]) > 0.9


def test_the_same_model_agrees_and_a_perturbed_one_clearly_does_not(judged: dict[str, dict[str, Counts]]) -> None:
    same, wrong = _ratio(judged["same"]["agreement"]), _ratio(judged["wrong"]["agreement"])
    assert judged["same"]["agreement"].series_found and judged["wrong"]["agreement"].series_found
    assert same >= 0.99, f"the same model agreed on only {same:.3f}"
    assert wrong <= 0.85, f"the perturbed model agreed on {wrong:.3f}"
    assert same - wrong >= 0.15


def test_accuracy_against_labels_drops_with_the_perturbed_model(judged: dict[str, dict[str, Counts]]) -> None:
    same, wrong = _ratio(judged["same"]["accuracy"]), _ratio(judged["wrong"]["accuracy"])
    assert same > 0.9  # the digits model's real accuracy
    assert wrong < same - 0.1


def _scrape(comparator: ComparatorProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(comparator.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted({"model": MODEL, **labels}.items()))), 0.0)


@contextlib.contextmanager
def _silent_listener() -> Iterator[int]:
    """A port that accepts connections and never answers: every request to it times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_an_unreachable_candidate_counts_errors_never_agreement(
    failure: str, digits_output: Path, tritons: dict[str, TritonServer]
) -> None:
    with contextlib.ExitStack() as stack:
        port = free_port() if failure == "refused" else stack.enter_context(_silent_listener())
        comparator = stack.enter_context(
            _comparator(tritons["baseline"], f"http://127.0.0.1:{port}", digits_output / GOLDEN_FILE, timeout="300ms")
        )
        scrape = eventually(
            lambda: _scrape(comparator),
            timeout_s=90.0,
            interval_s=0.5,
            description="two comparator rounds in its metrics",
            satisfied=lambda s: _value(s, "optiserve_comparator_rounds_total") >= 2,
        )
    assert _value(scrape, "optiserve_comparator_rounds_total") >= 2
    assert _value(scrape, "optiserve_comparator_errors_total", variant="candidate") >= 32
    assert _value(scrape, "optiserve_comparator_errors_total", variant="baseline") == 0
    assert _value(scrape, "optiserve_comparator_compared_total", metric="agreement") == 0
    assert _value(scrape, "optiserve_comparator_agreeing_total", metric="agreement") == 0
